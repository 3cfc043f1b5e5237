"""Worker-resident state: the model and mapping tables, loaded once per process.

Tasks carry paths and fingerprints (``plan.TaskSpec``), never the model or the
tables. ``runtime()`` is the one accessor tasks use. Inside a Dask worker the
runtime belongs to ``DscorePlugin`` (registered by ``dscore.run`` and
``Scorer.register``), which also sets the process's thread pools; elsewhere (a
threaded scheduler, a test) it is created on first use and leaves threads alone.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import functools
import json
import logging
import os
import threading
import time

from distributed import WorkerPlugin

from . import config, layout
from .errors import VocabError

log = logging.getLogger(__name__)


class Runtime:
    """Per-process caches keyed by fingerprint: a changed file is a new key, so it
    is reloaded; only the newest job's models (every one of them) and the newest
    tables are kept."""

    def __init__(self, torch_threads: int | None = None):
        self.torch_threads = torch_threads
        self.models: dict = {}
        self.vocabs: dict = {}
        self._local = threading.local()
        self._lock = threading.Lock()  # tasks on several threads must not load twice
        self.loads = collections.Counter()  # files actually read: "model", "vocab"
        self.gpu_encode = False  # kernels.cuda holds device tables and buffers to free

    @property
    def buffers(self) -> dict:
        """Encode outputs reused partition after partition; one set per thread, since a
        worker may run several tasks at once."""
        return self.buffers_for("cpu")

    def buffers_for(self, device: str) -> dict:
        """``buffers`` for encoding on ``device`` (host memory, or that GPU's memory)."""
        per_device = self._local.__dict__.setdefault("buffers_by_device", {})
        return per_device.setdefault(device, {})

    def encode_device(self, task) -> str:
        """Where this worker encodes ``task``'s rows (``encoding.resolve_encode_device``);
        ``auto`` needs the models' devices, so it loads them: the GPU of the first model
        on CUDA, else the first model's device (the fields are encoded once for all)."""
        from .encoding import resolve_encode_device

        requested = task.encode_device
        if requested == "cpu":
            return "cpu"
        devices = [str(self.model(task, m).device) for m in task.models]
        device = resolve_encode_device(requested, next((d for d in devices if d.startswith("cuda")), devices[0]))
        if device != "cpu":
            self.gpu_encode = True
        return device

    @staticmethod
    def _key(task, entry) -> tuple:
        return (entry.name, json.dumps(entry.spec.to_dict(), sort_keys=True), entry.fingerprint, entry.fields,
                tuple(entry.field_specs(task.fields)))  # fmt: skip

    def model(self, task, entry=None):
        """The loaded model of ``entry`` (one of ``task.models``; default the first).
        Loading a model that is not one of ``task``'s drops the models of other jobs."""
        from .model import Model

        entry = entry or task.models[0]
        key = self._key(task, entry)
        with self._lock:
            if key not in self.models:
                keep = {self._key(task, m) for m in task.models}
                for old in [k for k in self.models if k not in keep]:
                    del self.models[old]
                self.models[key] = Model.load(
                    entry.spec, entry.field_specs(task.fields), storage_options=task.storage_options,
                    expect=entry.fingerprint,
                )  # fmt: skip
                self.loads["model"] += 1
                log.info("loaded %s %s (%s) on %s", entry.where, entry.spec.path, entry.fingerprint,
                         self.models[key].device)  # fmt: skip
            return self.models[key]

    def ready_model(self, task, arrays, entry=None):
        """``model(task, entry)``, its batch size and execution mode chosen on these real
        rows the first time (``dscore.optimize.prepare``), on its own: each model of a
        job is tuned separately."""
        model = self.model(task, entry)
        if not model.prepared:
            with self._lock:
                if not model.prepared:
                    from .optimize import prepare

                    model.info = prepare(model, arrays, task.rows_hint)
                    model.prepared = True
        return model

    def vocab(self, task):
        """``task``'s mapping tables. With ``task.vocab_fp`` None (``warm``): those held
        for its path, else what the directory holds now, kept under its own
        fingerprint; a task whose fingerprint differs loads them again."""
        from .vocab import Vocabulary

        if task.vocab is None:
            return None
        key = (task.vocab, task.vocab_fp)
        with self._lock:
            if task.vocab_fp is None:  # warming up: the tables held for this path will do
                key = next((k for k in self.vocabs if k[0] == task.vocab), key)
            if key not in self.vocabs:
                vocab = Vocabulary.load(task.vocab, fields=task.fields, storage_options=task.storage_options)
                fp = vocab.fingerprint()
                if task.vocab_fp and fp != task.vocab_fp:
                    raise VocabError(
                        f"mapping tables in {task.vocab!r} changed while the job was running; "
                        "rerun with --overwrite to score everything with the new tables"
                    )
                self.vocabs.clear()
                key = (task.vocab, fp)
                self.vocabs[key] = vocab
                self.loads["vocab"] += 1
            return self.vocabs[key]

    def warm(self, task, piece) -> None:
        """Load ``task``'s tables and models, compile the encode kernels for its input's
        Arrow types and choose each model's batch size and mode on ``piece``'s first rows,
        before any task asks: run in a thread as soon as the worker exists, while the
        client still plans. Fingerprints missing from ``task`` are computed here; the
        job's tasks bring the client's, and find these loads when they agree.

        Best effort: a failure is logged, and the first task meets it again and fails
        with the job's own error.
        """
        import dataclasses

        from .encoding import encode_forms
        from .model import fingerprint

        t0 = time.perf_counter()
        try:
            models = tuple(
                m
                if m.fingerprint
                else dataclasses.replace(m, fingerprint=fingerprint(m.spec.path, task.storage_options))
                for m in task.models
            )
            task = dataclasses.replace(task, models=models)
            vocab = self.vocab(task)
            loaded = [self.model(task, m) for m in models]
            table = _head(task, piece, config.get("tune.rows"))
            if table is not None:
                encoded, _ = encode_forms(table, task.forms, vocab, device=self.encode_device(task))
                for m in models:
                    self.ready_model(task, {n: encoded[m.spec.inputs][n] for n in m.fields}, m)
            log.info("dscore worker warm in %.1fs: %s", time.perf_counter() - t0, "; ".join(
                f"{e.where} on {m.device}, batch {m.batch_size}, mode {m.mode}" for e, m in zip(models, loaded)
            ))  # fmt: skip
        except Exception as e:  # noqa: BLE001 - see the docstring
            log.info("dscore worker warm-up stopped (the first task will retry): %s: %s", type(e).__name__, e)

    def close(self) -> None:
        """Drop the model, tables and buffers; hand GPU memory back (torch's cache, and
        the GPU encoder's device tables and buffers when it was used)."""
        on_gpu = any(str(m.device).startswith("cuda") for m in self.models.values())
        self.models.clear()
        self.vocabs.clear()
        self._local = threading.local()
        if self.gpu_encode:
            from . import encoding_cuda as kc

            kc.clear()
            self.gpu_encode = False
        if on_gpu:
            import torch

            torch.cuda.empty_cache()


_RUNTIME: Runtime | None = None


def runtime() -> Runtime:
    """This process's ``Runtime``."""
    global _RUNTIME
    if _RUNTIME is None:
        _RUNTIME = Runtime()
        if _in_dask_worker():
            tune_malloc()
            log.warning(
                "dscore's worker plugin is not registered on this worker, so torch's threads are not "
                "set for it; call Scorer.register(client) (dscore.run does this) before computing"
            )
    return _RUNTIME


# glibc picks its mmap and trim thresholds dynamically (up to 32 MiB and 64 MiB on
# 64-bit) until any MALLOC_*_ variable is set. Dask's nanny spawns every worker with
# MALLOC_TRIM_THRESHOLD_=65536 (distributed.nanny.pre-spawn-environ), which freezes
# the mmap threshold at 128 KiB and trims heaps above 64 KiB free: every micro-batch's
# (batch, positions, dim) intermediate then comes from fresh zero-filled pages, mapped
# and unmapped on each call (~1000 page faults a call for a batch of 256 x 64 tokens),
# and models ran 3-4x slower in workers than in a plain process. dscore sets glibc's
# own dynamic ceilings instead (the memory.malloc-*-threshold settings), and trims
# explicitly near the memory limit (``relieve_memory``), which is what bounds a
# worker's memory.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h


@functools.lru_cache(maxsize=1)
def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _ = libc.mallopt, libc.malloc_trim  # glibc only (not musl, not macOS)
        return libc
    except (OSError, AttributeError):
        return None


_MALLOC_TUNED = False


def tune_malloc() -> bool:
    """Give this process glibc's default-like malloc thresholds; False where not glibc."""
    global _MALLOC_TUNED
    from dask.utils import parse_bytes

    libc = _libc()
    if libc is None:
        return False
    mmap, trim = (parse_bytes(config.get(f"memory.malloc-{k}-threshold")) for k in ("mmap", "trim"))
    ok = libc.mallopt(_M_MMAP_THRESHOLD, mmap) == 1
    _MALLOC_TUNED = libc.mallopt(_M_TRIM_THRESHOLD, trim) == 1 and ok
    return _MALLOC_TUNED


def malloc_tuned() -> bool:
    """Whether ``tune_malloc`` has set this process's thresholds."""
    return _MALLOC_TUNED


def peak_rss() -> int:
    """This process's peak resident memory in bytes since it started.

    Linux's VmHWM, not ``getrusage``'s ru_maxrss: a worker that Dask spawns keeps the
    ru_maxrss of the process that forked it (measured: 1.4 GB in a 290 MB worker).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    import sys

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def relieve_memory() -> None:
    """Near the worker's memory limit, hand freed memory back to the system.

    Arrow's allocator keeps freed memory for reuse, and glibc keeps up to
    ``memory.malloc-trim-threshold`` free at the top of each heap, so a worker's
    footprint drifts up to its largest partitions'. Releasing after every partition
    costs about 10% throughput (measured), so it is done only above the
    ``memory.release-at`` fraction of the limit.
    """
    import psutil
    import pyarrow as pa

    try:
        from distributed import get_worker

        limit = get_worker().memory_manager.memory_limit
    except (ValueError, AttributeError):
        return
    if limit and psutil.Process().memory_info().rss > config.get("memory.release-at") * limit:
        pa.default_memory_pool().release_unused()
        libc = _libc()
        if libc is not None:
            libc.malloc_trim(0)


def _head(task, piece, rows: int):
    """The first ``rows`` rows of ``piece`` (its first row group), or None for CSV."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from . import io

    if piece.format != "parquet":
        return None
    fs, path = io.url_to_fs(piece.url, task.storage_options)
    with fs.open(path, "rb") as f:  # not pre-buffered: that reads the whole row group (io.iter_piece)
        pf = pq.ParquetFile(f, buffer_size=io.stream_buffer(), pre_buffer=False)
        batches = pf.iter_batches(
            batch_size=rows, columns=io.in_file_columns(piece, task.columns), row_groups=[piece.rg_start]
        )
        batch = next(batches, None)
    return (
        None if batch is None else io.with_partitions(pa.Table.from_batches([batch]), piece, task.columns, task.reading)
    )


def _in_dask_worker() -> bool:
    try:
        from distributed import get_worker

        get_worker()
        return True
    except ValueError:
        return False


class DscorePlugin(WorkerPlugin):
    """Sets torch and numba threads once per worker process and owns its ``Runtime``.

    Parameters
    ----------
    torch_threads : int or mapping of host to int, optional
        Threads per worker process. Precedence: ``DSCORE_TORCH_THREADS`` in the
        worker's environment (the cluster scripts set it), then this argument,
        then the worker's share of its host's cores.

    The ``dscore`` settings of the process that makes the plugin (the client) are
    taken with it, and ``setup`` reads them (``dscore.config.using``), so a worker
    started elsewhere sets malloc as the client's settings say.
    """

    name = "dscore"

    def __init__(self, torch_threads=None):
        self.torch_threads = torch_threads
        self.settings = config.snapshot()

    def setup(self, worker):
        from .model import set_threads

        global _RUNTIME
        threads = os.environ.get("DSCORE_TORCH_THREADS")
        if threads:
            threads = int(threads)
        elif isinstance(self.torch_threads, dict):
            threads = self.torch_threads.get(worker.address.rsplit(":", 1)[0].split("//")[-1])
        else:
            threads = self.torch_threads
        if not threads:
            threads = layout.torch_threads(layout.host_cores(), worker.state.nthreads)
        set_threads(threads)
        with config.using(self.settings):
            tuned = tune_malloc()
        if not tuned:
            log.info("dscore worker %s: not glibc, malloc thresholds left as they are", worker.address)
        _RUNTIME = Runtime(threads)
        log.info("dscore worker %s: %d dask threads x %d torch threads", worker.address, worker.state.nthreads, threads)

    def teardown(self, worker):
        global _RUNTIME
        if _RUNTIME is not None:
            _RUNTIME.close()
            _RUNTIME = None
