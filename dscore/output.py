"""The output commit protocol: atomic partition files, per-partition records, _SUCCESS.

Layout of an output directory::

    part-000000.parquet ...      one file per input partition (id columns, scores)
    _parts/part-000000.json      its record, written after the file is in place
    _job.json                    what this output is: fingerprints of model, tables, fields,
                                 input, and the job token they hash to
    _lock.json                   the lease of the run writing here (``dscore.lease``):
                                 one writer per output
    _manifest.json, _SUCCESS     written last, only when every partition is recorded, the
                                 row counts match the input, and a fresh listing of the
                                 output shows every part file as its record describes it
    .<name>.<hex>.tmp            a write in progress (removed when a run starts)

A partition's file is written under a temporary name and renamed (on object
stores it is written as one object, which is atomic there); a retried task writes
the same final name, so it replaces rather than duplicates. A record exists only
for a complete file, so ``records()`` is always the set of finished partitions.
Records and part files (in their parquet key-value metadata) carry the job token,
so that a part another job wrote is told apart from this job's.

dscore deletes only what it wrote: ``clear()`` (``--overwrite``) checks every entry
first and removes nothing when one of them is not provably dscore's.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import posixpath
import re

import pyarrow as pa
import pyarrow.parquet as pq

from . import io
from .errors import JobError

SUCCESS = "_SUCCESS"
JOB = "_job.json"
MANIFEST = "_manifest.json"
QUARANTINE = "_quarantine.json"
REPORT = "_report.json"
PARTS = "_parts"
LOCK = "_lock.json"
OWN_FILES = (SUCCESS, JOB, MANIFEST, QUARANTINE, REPORT)
PART_FILE = re.compile(r"part-(\d{6,})\.parquet")
RECORD_FILE = re.compile(r"part-(\d{6,})\.json")
TMP_FILE = re.compile(r"\..+\.[0-9a-f]+\.tmp")  # io.write_atomic's temporary names
JOB_KEY = b"dscore.job"  # part files' key-value metadata: the token of the job that wrote them


def is_lease_file(name: str) -> bool:
    """The lease, or a temporary file of a run taking it (which may be another run's)."""
    return name == LOCK or name.startswith(f".{LOCK}.")


class Output:
    """An output directory on any fsspec filesystem."""

    def __init__(self, url: str, storage_options: dict | None = None):
        self.url = url
        self.fs, self.root = io.url_to_fs(url, storage_options)
        self.root = self.root.rstrip("/")

    # -------------------------------------------------------------- names
    def path(self, name: str) -> str:
        return posixpath.join(self.root, name)

    @staticmethod
    def part_name(index: int) -> str:
        return f"part-{index:06d}.parquet"

    # -------------------------------------------------------------- writes
    def _put(self, name: str, write) -> None:
        io.write_atomic(self.fs, self.path(name), write)

    def write_json(self, name: str, obj) -> None:
        data = json.dumps(obj, indent=1, sort_keys=True, default=str).encode()
        self._put(name, lambda f: f.write(data))

    def read_json(self, name: str):
        self._fresh()
        try:
            with self.fs.open(self.path(name), "rb") as f:
                return json.loads(f.read())
        except FileNotFoundError:
            return None

    def write_part(self, index: int, tables, record, job: str = "") -> None:
        """The partition's file, then its record: a record implies a complete file.

        ``tables``: a table, or an iterable of tables with one schema, written as they
        come (a partition scored slice by slice); ``record``: a dict, or a function
        called for it once the file is complete. The file's parquet metadata carries
        the job token ``job`` (as the record does).
        """

        def write(f):
            writer = None
            for table in [tables] if isinstance(tables, pa.Table) else tables:
                if writer is None:
                    schema = table.schema.with_metadata({**(table.schema.metadata or {}), JOB_KEY: job.encode()})
                    writer = pq.ParquetWriter(f, schema)
                writer.write_table(table.replace_schema_metadata(schema.metadata))
            if writer is None:
                raise ValueError(f"partition {index}: nothing to write")
            writer.close()

        self._put(self.part_name(index), write)
        self.write_json(f"{PARTS}/part-{index:06d}.json", record() if callable(record) else record)

    # -------------------------------------------------------------- reads
    def _fresh(self) -> None:
        # Workers (other processes) write here; object stores' filesystems cache
        # listings per instance, and fsspec shares instances within a process, so a
        # listing from before the workers wrote would hide their partitions.
        self.fs.invalidate_cache(self.path(PARTS))  # also drops the root and its parents

    def ls(self, name: str = "") -> list[str]:
        """Paths in the output directory (or its subdirectory ``name``), as they are now."""
        path = self.path(name) if name else self.root
        self._fresh()
        self.fs.invalidate_cache(path)
        return self.fs.ls(path, detail=False)

    def records(self) -> dict[int, dict]:
        """Finished partitions by index."""
        self._fresh()
        base = self.path(PARTS)
        if not self.fs.exists(base):
            return {}
        out = {}
        paths = [p for p in self.ls(PARTS) if RECORD_FILE.fullmatch(posixpath.basename(p))]
        for p in paths:
            with self.fs.open(p, "rb") as f:
                rec = json.loads(f.read())
            out[rec["index"]] = rec
        return out

    def complete(self) -> bool:
        self._fresh()
        return self.fs.exists(self.path(SUCCESS))

    def _part_tokens(self, names) -> dict[str, tuple]:
        """``{name: (job token or None, rows)}`` from the part files' parquet footers;
        ``(None, None)`` for a file that is not parquet.

        Footers are read in a thread pool: on object stores each is a round trip.
        """

        def one(name):
            try:
                with self.fs.open(self.path(name), "rb") as f:
                    meta = pq.read_metadata(f)
            except Exception:  # noqa: BLE001 - not a parquet file: not one dscore wrote
                return name, (None, None)
            token = (meta.metadata or {}).get(JOB_KEY)
            return name, (token.decode() if token else None, meta.num_rows)

        names = list(names)
        if not names:
            return {}
        with concurrent.futures.ThreadPoolExecutor(max(1, min(16, len(names)))) as pool:
            return dict(pool.map(one, names))

    def entries(self) -> tuple[list[str], list[str]]:
        """``(own, foreign)``: paths in the output that dscore provably wrote, in the
        order to remove them, and names of everything else.

        dscore's are: its ``_*`` files, ``_parts/`` records, temporary files of its
        writes, and part files that a record or the manifest lists or whose footer
        carries a job token (a run stopped between a file and its record). The lease
        is not in either list: it is the lease's to remove.
        """
        self._fresh()
        if not self.fs.exists(self.root):
            return [], []
        first, parts, records, last, foreign, unlisted = [], [], [], [], [], []
        listed = {r.get("file") for r in self.records().values()}
        listed |= {r.get("file") for r in (self.read_json(MANIFEST) or {}).get("partitions", [])}
        for p in self.ls():
            base = posixpath.basename(p.rstrip("/"))
            if is_lease_file(base):
                continue
            if base in (SUCCESS, MANIFEST):  # first: a half-cleared output must not look complete
                first.append(p)
            elif base in OWN_FILES or TMP_FILE.fullmatch(base):
                last.append(p)
            elif base == PARTS:
                for r in self.ls(PARTS):
                    name = posixpath.basename(r)
                    (records if RECORD_FILE.fullmatch(name) or TMP_FILE.fullmatch(name) else foreign).append(r)
            elif PART_FILE.fullmatch(base):
                (parts if base in listed else unlisted).append(p)
            else:
                foreign.append(p)
        if unlisted and not foreign:
            tokens = self._part_tokens(posixpath.basename(p) for p in unlisted)
            for p in unlisted:
                (parts if tokens[posixpath.basename(p)][0] else foreign).append(p)
        else:
            foreign.extend(unlisted)
        last.sort(key=lambda p: posixpath.basename(p) == JOB)  # _job.json last: it says what the rest is
        own = first + records + parts + last
        if any(posixpath.basename(p) == PARTS for p in self.ls()):
            own.append(self.path(PARTS))
        return own, [posixpath.relpath(p, self.root) for p in foreign]

    def clear(self) -> None:
        """Remove what dscore wrote here (``--overwrite``), and nothing else.

        Raises ``JobError`` naming the first entry dscore did not write, before
        removing anything.
        """
        own, foreign = self.entries()
        if foreign:
            raise JobError(
                f"output {self.url!r} holds {foreign[0]!r}, which dscore did not write; --overwrite removes only "
                "dscore's own files. Move it away or choose another output"
            )
        for p in own:
            self.fs.rm(p, recursive=posixpath.basename(p) == PARTS)

    def check_parts(self, token: str, indices=None) -> tuple[dict, dict]:
        """``(good, problems)`` for the partitions ``indices`` (default: all recorded)
        as the output is now (re-listed, not from memory): ``good`` their records when
        the record and the part file both carry ``token`` and agree on the row count,
        ``problems`` what is wrong with each of the others, e.g.
        ``{3: "part-000003.parquet is recorded but missing"}``.
        """
        records = self.records()
        indices = sorted(records) if indices is None else indices
        present = {posixpath.basename(p) for p in self.ls()}
        good, problems = {}, {}
        for i in indices:
            rec, name = records.get(i), self.part_name(i)
            if rec is None:
                problems[i] = f"{name} has no record in {PARTS}/"
            elif rec.get("job") != token:
                problems[i] = f"{name} is recorded by another job (token {rec.get('job')!r}, this job's is {token!r})"
            elif name not in present:
                problems[i] = f"{name} is recorded but missing"
            else:
                good[i] = rec
        for name, (found, rows) in self._part_tokens(self.part_name(i) for i in good).items():
            i = int(PART_FILE.fullmatch(name).group(1))
            if rows is None:
                problems[i] = f"{name} cannot be read as parquet"
            elif found != token:
                problems[i] = f"{name} was written by another job (token {found!r}, this job's is {token!r})"
            elif rows != good[i]["rows"]:
                problems[i] = f"{name} holds {rows} rows, its record says {good[i]['rows']}"
        return {i: r for i, r in good.items() if i not in problems}, problems

    def start_run(self) -> None:
        """Before a run: the output is not complete any more, and temporary files of
        writes that a crash interrupted are removed."""
        self._fresh()
        for name in (SUCCESS, MANIFEST, QUARANTINE):
            if self.fs.exists(self.path(name)):
                self.fs.rm(self.path(name))
        for name in ("", PARTS):
            if self.fs.exists(self.path(name) if name else self.root):
                for p in self.ls(name):
                    base = posixpath.basename(p)
                    if TMP_FILE.fullmatch(base) and not is_lease_file(base):
                        self.fs.rm(p)


# ---------------------------------------------------------------- output and input apart
def _norm(fs, path: str) -> str:
    path = fs._strip_protocol(path).rstrip("/")
    return os.path.realpath(path) if io.is_local(fs) else posixpath.normpath(path)


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def check_apart(out: Output, inputs, fs, paths) -> None:
    """Refuse an output that is, contains or lies inside an input location.

    Input locations are each input URL (a file or a directory read recursively), the
    files it expanded to (``paths`` on ``fs``), and, for a glob, whatever the glob
    matches: an output matched by it (or inside a folder matched by it, or whose
    part files it matches, as ``data/**/*.parquet`` would) would be read as input
    by the next run. An output beside the files a glob names, in the
    same folder but not matched, is neither read nor touched, so it is allowed.
    Paths are compared after resolving ``..`` and symbolic links, on the same
    filesystem only. Raises ``JobError`` naming the output and the input.
    """
    from fsspec.utils import glob_translate

    if type(out.fs) is not type(fs):
        return
    where = _norm(out.fs, out.root)

    def refuse(what: str, url: str):
        raise JobError(
            f"output {out.url!r} {what} input {url!r}; dscore would read its own output or remove its input. "
            "Choose an output outside the input"
        )

    for p in paths:
        if _within(_norm(fs, p), where):
            refuse("is" if _norm(fs, p) == where else "contains", p if io.is_local(fs) else fs.unstrip_protocol(p))
    for url in [inputs] if isinstance(inputs, str) else inputs:
        path = fs._strip_protocol(url).rstrip("/")
        if any(c in path for c in "*?["):
            # Resolve the folders above the pattern, as the output's path is resolved.
            head = path.split("/")
            fixed = next(i for i, part in enumerate(head) if any(c in part for c in "*?["))
            base = _norm(fs, "/".join(head[:fixed]) or "/").rstrip("/")
            pattern = re.compile(glob_translate("/".join([base, *head[fixed:]])))
            if pattern.fullmatch(posixpath.join(where, Output.part_name(0))):
                refuse("would have its part files matched by", url)
            folder = where
            while True:
                if pattern.fullmatch(folder):
                    refuse("is matched by", url)
                parent = posixpath.dirname(folder)
                if parent == folder:
                    break
                folder = parent
        else:
            loc = _norm(fs, path)
            if _within(where, loc):
                refuse("is or lies inside", url)
            if _within(loc, where):
                refuse("contains", url)
