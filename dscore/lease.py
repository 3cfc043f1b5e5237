"""One writer per output: a lease, the object ``<output>/_lock.json``.

A run takes the lease before it writes anything to its output and removes it when
it ends, whether it succeeded or failed. The lease names its holder (host, pid,
user, start time) and is renewed every ``lock_timeout / 10`` seconds by a daemon
thread while the run lives. A second run finds it and is refused, naming the
holder, unless the lease is stale:

* its holder is provably gone: same host, and its pid is dead (or is now another
  process, told by its start time); or
* it has not been renewed for ``lock_timeout`` seconds (the larger of the taker's
  and the holder's; clocks of the hosts must agree to well within it);

or the user passes ``--break-lock``. A stale lease is taken over with a log line.

Creating the lease is atomic where the store allows it: locally (and on NFS) a
hard link of a complete temporary file, which fails if the name exists; on S3 a
conditional put (``If-None-Match: *``). Other fsspec stores get check-then-write,
which two runs starting in the same instant could both pass: a log line says so.
Renewal reads the lease before rewriting it, so a run whose lease was taken over
notices, and its finishing check refuses to write ``_SUCCESS``.
"""

from __future__ import annotations

import datetime
import getpass
import json
import logging
import os
import socket
import threading
import time
import uuid

import psutil

from . import config, io
from .errors import JobError
from .output import LOCK, Output

log = logging.getLogger(__name__)

# Stores on which fsspec's pipe_file(mode="create") is a conditional put.
CONDITIONAL_PUT = ("s3", "s3a")
KEYS = ("id", "host", "pid", "user", "since", "renewed")


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        return str(os.getuid())


def _when(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat(timespec="seconds")


def describe(holder: dict) -> str:
    """``alice@host1 (pid 4242) since 2026-12-02T05:10:00+00:00``."""
    return f"{holder['user']}@{holder['host']} (pid {holder['pid']}) since {_when(holder['since'])}"


def stale_reason(holder: dict, timeout: float) -> str | None:
    """Why ``holder``'s lease may be taken over, or ``None`` while it is live."""
    if holder["host"] == socket.gethostname():
        try:
            started = psutil.Process(holder["pid"]).create_time()
        except psutil.NoSuchProcess:
            return f"its process (pid {holder['pid']} on this host) is gone"
        if holder.get("pid_started") is not None and abs(started - holder["pid_started"]) > 1:
            return f"its process (pid {holder['pid']} on this host) is gone; the pid is now another process's"
    limit = max(timeout, holder.get("timeout") or 0)
    age = time.time() - holder["renewed"]
    if age > limit:
        return f"it has not been renewed for {age:.0f}s (lock_timeout {limit:.0f}s)"
    return None


class Lease:
    """The lease of one run on one output; see the module docstring.

    Use ``Lease.acquire(out, timeout)`` as a context manager: leaving it stops the
    renewals and removes the lease (if it is still this run's). ``timeout`` None is
    ``config.get("lease.timeout")``; it is renewed ``lease.renewals-per-timeout``
    times per timeout.
    """

    def __init__(self, out: Output, timeout: float | None):
        self.out = out
        self.timeout = float(config.get("lease.timeout") if timeout is None else timeout)
        self.renew_every = self.timeout / float(config.get("lease.renewals-per-timeout"))
        self.path = out.path(LOCK)
        now = time.time()
        self.holder = {
            "id": uuid.uuid4().hex,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pid_started": psutil.Process().create_time(),
            "user": _user(),
            "since": now,
            "renewed": now,
            "timeout": self.timeout,
        }
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------- taking it
    @classmethod
    def acquire(cls, out: Output, timeout: float | None = None, *, break_lock: bool = False) -> Lease:
        """Take the lease on ``out``, or raise ``JobError`` naming its holder."""
        lease = cls(out, timeout)
        broken = None
        for _ in range(5):
            if lease._create():
                lease._start()
                return lease
            current = lease.read()
            if current is None:  # released since: try again
                continue
            if break_lock and broken is None:
                reason = "--break-lock"
                broken = current["id"]
            else:
                reason = stale_reason(current, lease.timeout)
            if reason is None:
                raise JobError(
                    f"output {out.url!r} is being written by {describe(current)}: one run per output. "
                    f"Wait for that run to finish, or pass --break-lock if it is gone"
                )
            log.warning("taking over the lease on %s from %s: %s", out.url, describe(current), reason)
            lease._remove(current["id"])
        raise JobError(f"output {out.url!r}: other runs are taking its lease at the same time; try again later")

    def _data(self) -> bytes:
        return json.dumps({**self.holder, "output": self.out.url}, indent=1, sort_keys=True).encode()

    def _create(self) -> bool:
        """Create the lease object if there is none; ``False`` if there is one."""
        fs = self.out.fs
        if io.is_local(fs):
            return self._create_local()
        protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
        if not set(protocols) & set(CONDITIONAL_PUT):
            log.warning(
                "%s: dscore knows no atomic create on %s; the lease is checked, then written, so two runs "
                "starting at the same moment could both take it", self.out.url, protocols[0],
            )  # fmt: skip
        try:
            fs.pipe_file(self.path, self._data(), mode="create")
        except FileExistsError:
            return False
        current = self.read()
        return current is not None and current["id"] == self.holder["id"]

    def _create_local(self) -> bool:
        # A hard link of a complete file: atomic and exclusive, on NFS too, and a
        # reader never sees a half-written lease (as it could after O_EXCL + write).
        path = self.out.fs._strip_protocol(self.path)
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".{LOCK}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(self._data())
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            except PermissionError:  # a filesystem without hard links
                try:
                    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    return False
                with os.fdopen(fd, "wb") as f:
                    f.write(self._data())
            return True
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def read(self) -> dict | None:
        """The lease in the output now, or ``None``; ``JobError`` if the object is not a lease."""
        fs = self.out.fs
        fs.invalidate_cache(self.path)
        try:
            raw = fs.cat_file(self.path)
        except FileNotFoundError:
            return None
        try:
            holder = json.loads(raw)
            if not isinstance(holder, dict) or any(k not in holder for k in KEYS):
                raise ValueError(f"a lease names {', '.join(KEYS)}")
        except ValueError as e:
            raise JobError(
                f"output {self.out.url!r} holds {LOCK!r}, which is not a dscore lease ({e}); dscore will not remove "
                "it. Move it away or choose another output"
            ) from e
        return holder

    def _remove(self, stale_id: str) -> None:
        """Remove the stale lease ``stale_id``, and nobody else's."""
        fs = self.out.fs
        if not io.is_local(fs):  # no conditional delete: a race with another taker shows at its next renewal
            try:
                fs.rm(self.path)
            except FileNotFoundError:
                pass
            return
        path = fs._strip_protocol(self.path)
        aside = os.path.join(os.path.dirname(path), f".{LOCK}.{uuid.uuid4().hex}.tmp")
        try:
            os.rename(path, aside)  # atomic: of several takers, one moves it
        except FileNotFoundError:
            return
        with open(aside, "rb") as f:
            moved = json.loads(f.read())
        if moved.get("id") != stale_id:  # another taker's fresh lease: put it back
            try:
                os.link(aside, path)
            except FileExistsError:
                pass
        os.remove(aside)

    # -------------------------------------------------------------- holding it
    def _start(self) -> None:
        self._thread = threading.Thread(target=self._renew, name="dscore-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.renew_every):
            try:
                current = self.read()
                if current is None or current["id"] != self.holder["id"]:
                    self.lost = describe(current) if current else "nobody (the lease was removed)"
                    log.error("the lease on %s was taken over by %s", self.out.url, self.lost)
                    return
                self.holder["renewed"] = time.time()
                io.write_atomic(self.out.fs, self.path, lambda f: f.write(self._data()))
            except Exception as e:  # noqa: BLE001 - a store's hiccup: the next renewal may pass
                log.warning("could not renew the lease on %s: %s", self.out.url, e)

    def check(self) -> None:
        """Raise ``JobError`` if another run took the lease over while this one ran."""
        if self.lost is None:
            current = self.read()
            if current is None or current["id"] != self.holder["id"]:
                self.lost = describe(current) if current else "nobody (the lease was removed)"
        if self.lost is not None:
            raise JobError(
                f"output {self.out.url!r}: this run lost its lease to {self.lost} while it ran, so its output "
                "cannot be trusted and _SUCCESS was not written. Rerun the job when no other run writes there"
            )

    def release(self) -> None:
        """Stop renewing; remove the lease if it is still this run's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            current = self.read()
            if current is not None and current["id"] == self.holder["id"]:
                self.out.fs.rm(self.path)
        except (OSError, JobError) as e:  # the run's own outcome matters more than a leftover lease
            log.warning("could not remove the lease %s: %s", self.path, e)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
