"""The scoring job: read -> encode -> predict -> write, one task per input partition.

``score_table`` is the pure per-partition function (Arrow in, Arrow out). Two Dask
drivers use it:

* ``Scorer.score(ddf)``: a lazy ``map_partitions`` over a user's dask DataFrame.
* ``run(job)``: a whole job. Its unit of work is an input *piece* (a file, or a run
  of row groups of one; see ``io.plan``), submitted with ``client.map`` rather than
  built as a dask DataFrame, because exactly-once output needs to know which input
  each task covers: every piece has a deterministic output name and a durable
  record (``output.Output``), so retries overwrite and reruns resume.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import logging
import posixpath
import sys
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import psutil
import pyarrow as pa

from . import io
from .encoding import FieldStats, InvalidUTF8Error, check_field_type, check_fields, encode_table
from .lease import Lease
from .model import Model, ModelError
from .model import fingerprint as model_fingerprint
from .output import JOB, MANIFEST, QUARANTINE, REPORT, SUCCESS, TMP_FILE, JobError, Output, check_apart
from .spec import ENCODE_DEVICES, Field, JobSpec, ModelSpec, SpecError
from .worker import DscorePlugin, host_cores, peak_rss, relieve_memory, runtime, torch_threads_per_host

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
STAGES = ("read", "encode", "tune", "predict", "write")


@dataclass(frozen=True)
class TaskSpec:
    """What a task needs to score a partition: paths and fingerprints, never the
    model or the tables themselves (workers load those once; see ``worker``)."""

    fields: tuple
    model: ModelSpec
    model_fp: str | None  # None only in a warm-up spec (warm_task): the worker computes it
    vocab: str | None
    vocab_fp: str | None
    id_columns: tuple
    # Not in the repr: distributed logs a failed task's arguments, and these hold credentials.
    storage_options: dict = dataclasses.field(default_factory=dict, hash=False, compare=False, repr=False)
    rows_hint: int | None = None  # rows each worker thread should expect to score (optimize: auto)
    job_token: str = ""  # job_token(plan header): in every record and part file, checked before _SUCCESS
    encode_device: str = "auto"  # resolved in the worker (encoding.resolve_encode_device)
    partition_bytes: int | None = None  # a larger row group is scored in slices of this size (io.iter_piece)
    reading: io.Reading = dataclasses.field(default_factory=io.Reading)  # CSV options, partition types
    id_types: io.IdTypes | None = None  # every part must have these (the first file's)

    @property
    def columns(self) -> list[str]:
        """Input columns to read: ids first, then each field's column once."""
        return input_columns(self.fields, self.id_columns)


def input_columns(fields, id_columns) -> list[str]:
    """The input columns a job reads: ids first, then each field's column once."""
    return list(dict.fromkeys([*id_columns, *(f.column for f in fields)]))


# ---------------------------------------------------------------- per partition
def score_table(table: pa.Table, task: TaskSpec, rt=None):
    """Score one partition: ``(output table, {field: FieldStats}, {stage: seconds},
    {batch_size, mode})``.

    The output holds ``task.id_columns`` then one float32 column per model output,
    one row per input row, in input order.
    """
    rt = rt or runtime()
    vocab = rt.vocab(task)
    t0 = time.perf_counter()
    device = rt.encode_device(task)  # "auto" asks the model's device: may load it
    t1 = time.perf_counter()
    arrays, stats = encode_table(table, task.fields, vocab, buffers=rt.buffers_for(device), device=device)
    t2 = time.perf_counter()
    model = rt.ready_model(task, arrays)
    t3 = time.perf_counter()
    scores = model.predict(arrays)
    t4 = time.perf_counter()
    cols = {c: table.column(c) for c in task.id_columns}
    for i, name in enumerate(model.output_names):
        cols[name] = pa.array(np.ascontiguousarray(scores[:, i]), pa.float32())
    seconds = {"encode": t2 - t1, "predict": t4 - t3, "tune": (t1 - t0) + (t3 - t2)}
    info = getattr(model, "info", None) or {}
    execution = {"batch_size": model.batch_size, "mode": model.mode}
    execution.update({k: info[k] for k in ("batch_rates", "mode_rates") if k in info})  # what tuning measured
    return pa.table(cols), stats, seconds, execution


def score_piece(piece: io.Piece, task: TaskSpec, output_url: str, quarantine: bool) -> dict:
    """Read, score and commit one piece; return its record (or a quarantine entry).

    A piece is read, scored and written slice by slice when its row group is larger
    than ``task.partition_bytes`` (``io.iter_piece``); its part file is still one
    file, committed once complete.
    """
    t0 = time.perf_counter()
    fs, _ = io.url_to_fs(piece.url, task.storage_options)
    stats: dict = {f.name: FieldStats() for f in task.fields}
    seconds = dict.fromkeys(("read", "encode", "tune", "predict"), 0.0)
    execution: dict = {}
    rows = 0

    def scored_slices():
        nonlocal rows, execution
        slices = io.iter_piece(fs, piece, task.columns, task.partition_bytes, task.reading)
        start = time.perf_counter()
        for table in slices:
            if rows == 0:  # this file's own schema: inputs may differ from the first file's
                try:
                    check_schema(table.schema, task.fields, task.id_columns)
                except (SpecError, TypeError) as e:
                    raise io.InputError(piece.url, _rgs(piece), None, str(e)) from e
                if task.id_types is not None:  # planning saw the footer; this is what gets written
                    task.id_types.check(piece.url, {f.name: f.type for f in table.schema}, _rgs(piece))
            seconds["read"] += time.perf_counter() - start
            try:
                scored, slice_stats, slice_seconds, execution = score_table(table, task)
            except InvalidUTF8Error as e:
                row = f"row {rows + e.row}"
                if piece.format == "parquet":  # rows count from the piece's first row group
                    row += f" of row groups {piece.rg_start}-{piece.rg_stop - 1}"
                raise io.InputError(piece.url, None, None, e.reason(row)) from e
            for name, s in slice_stats.items():
                stats[name].add(s)
            for k, v in slice_seconds.items():
                seconds[k] += v
            rows += scored.num_rows
            del table
            yield scored
            relieve_memory()
            start = time.perf_counter()
        if piece.rows is not None and rows != piece.rows:  # before the part is committed
            raise RuntimeError(f"{piece.describe()}: read {rows} rows, its metadata says {piece.rows}")

    out = Output(output_url, task.storage_options)
    record = {
        "index": piece.index,
        "file": out.part_name(piece.index),
        "job": task.job_token,
        "input": piece.identity(),
    }
    try:
        out.write_part(
            piece.index, scored_slices(), lambda: _record(record, rows, stats, execution, seconds), job=task.job_token
        )
    except io.InputError as e:
        if not quarantine:
            raise
        return {"index": piece.index, "quarantined": True, "input": piece.identity(), "error": str(e)}
    seconds["write"] = time.perf_counter() - t0 - sum(seconds.values())
    return {**_record(record, rows, stats, execution, seconds), "seconds": seconds}


def _record(record: dict, rows: int, stats: dict, execution: dict, seconds: dict) -> dict:
    return {
        **record,
        "rows": rows,
        "stats": {name: dataclasses.asdict(s) for name, s in stats.items()},
        "model": execution,
        # The worker's memory after each partition, so that a leak shows in the manifest.
        "worker_rss": psutil.Process().memory_info().rss,
        "worker_peak_rss": peak_rss(),
        "seconds": dict(seconds),
    }


def _rgs(piece):
    return (piece.rg_start, piece.rg_stop) if piece.format == "parquet" else None


# ---------------------------------------------------------------- planning (client side)
def _fields_digest(fields, id_columns, outputs) -> str:
    payload = json.dumps(
        {"fields": [f.to_dict() for f in fields], "id_columns": list(id_columns), "outputs": list(outputs)},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class Plan:
    job: JobSpec
    task: TaskSpec
    pieces: list
    outputs: list
    header: dict
    unreadable: list  # files quarantined at planning: their footer could not be read


def check_schema(schema: pa.Schema, fields: Sequence[Field], id_columns, where: str = "") -> None:
    """Every field's column exists with a usable type, and every id column exists.

    Raises ``SpecError`` (missing column) or ``TypeError`` naming the field, the
    column, the expected and the found type, prefixed by ``where``.
    """
    prefix = f"{where}: " if where else ""
    for f in fields:
        if f.column not in schema.names:
            raise SpecError(
                f"{prefix}field {f.name!r} reads column {f.column!r}, which is not in the input; "
                f"columns are {schema.names}"
            )
        check_field_type(f, schema.field(f.column).type, where=prefix)
    for c in id_columns:
        if c not in schema.names:
            raise SpecError(f"{prefix}id column {c!r} is not in the input; columns are {schema.names}")


@dataclass
class Inputs:
    """The job's input, planned from file metadata alone."""

    pieces: list
    unreadable: list  # (piece, identity, error) of files quarantined at planning
    files: list  # URLs of every input file
    id_types: io.IdTypes  # the id columns' types, which every part must have


def plan_inputs(job: JobSpec) -> Inputs:
    """Expand the input, check the first file's schema and plan the pieces: metadata
    only, so that this fails fast (naming the file, field or column) and the cluster
    can start while the rest of ``plan_job`` loads the model."""
    fs, files = io.expand(list(job.input), job.storage_options)
    check_apart(Output(job.output, job.storage_options), job.input, fs, [f.path for f in files])
    reading = reading_of(job)
    unknown = sorted(set(job.partition_types) - {k for f in files for k, _ in f.partitions})
    if unknown:
        raise SpecError(
            f"partition_types.{unknown[0]}: no input directory is named {unknown[0]}=...; "
            "remove the key or fix the input"
        )
    columns = input_columns(job.fields, job.id_columns)
    first_file, schema = _first_schema(fs, files, columns, reading, job.on_bad_input == "quarantine")
    first = io.full_url(fs, first_file.path)
    check_schema(schema, job.fields, job.id_columns, first)
    id_types = io.IdTypes.of(schema, job.id_columns, first)
    bad: list | None = [] if job.on_bad_input == "quarantine" else None
    pieces = plan_pieces(job, fs, files, bad, id_types)
    return Inputs(pieces, bad or [], [io.full_url(fs, f.path) for f in files], id_types)


def plan_job(job: JobSpec, inputs: Inputs | None = None) -> Plan:
    """Everything that can fail before the cluster job starts fails here, naming the
    file, field or column: inputs, schema, mapping tables, model (one-row probe)."""
    from .vocab import Vocabulary

    so = job.storage_options
    inputs = inputs or plan_inputs(job)
    vocab = Vocabulary.load(job.vocab, fields=job.fields, storage_options=so) if job.vocab else None
    model_fp = model_fingerprint(job.model.path, so)
    # On the CPU, also for a CUDA job: CUDA is initialised in workers, never in the
    # client (it may have no GPU; and a forked worker cannot use its parent's context).
    model = Model.load(job.model, job.fields, device="cpu", storage_options=so)
    model.probe(largest_indices(job.fields, vocab))
    task = dataclasses.replace(
        warm_task(job),
        model_fp=model_fp,
        vocab_fp=vocab.fingerprint() if vocab is not None else None,
        id_types=inputs.id_types,
    )
    pieces = inputs.pieces
    header = {
        "format_version": FORMAT_VERSION,
        "model": {"path": job.model.path, "fingerprint": model_fp},
        "vocab": {"path": job.vocab, "fingerprint": task.vocab_fp},
        "fields": _fields_digest(job.fields, job.id_columns, model.output_names),
        "outputs": model.output_names,
        "id_columns": list(job.id_columns),
        "input": {
            "partitions": len(pieces),
            "rows": sum(p.rows or 0 for p in pieces),
            "digest": hashlib.sha256(json.dumps([p.identity() for p in pieces]).encode()).hexdigest(),
            "files": inputs.files,  # every file read, or quarantined
            **({"csv": job.csv.to_dict()} if job.csv else {}),
            **({"partition_types": dict(job.partition_types)} if job.partition_types else {}),
        },
    }
    unreadable = [{"index": None, "input": ident, "error": err} for _, ident, err in inputs.unreadable]
    task = dataclasses.replace(task, job_token=job_token(header))
    return Plan(job, task, pieces, model.output_names, header, unreadable)


def job_token(header: dict) -> str:
    """What identifies a job's scores: a hash of its fingerprints (the plan header)."""
    return hashlib.sha256(json.dumps(header, sort_keys=True).encode()).hexdigest()[:16]


def warm_task(job: JobSpec, rows_hint: int | None = None) -> TaskSpec:
    """``job``'s TaskSpec before the client has fingerprinted the model and tables:
    what workers warm up with (``worker.Runtime.warm``) while the client plans."""
    return TaskSpec(
        fields=tuple(job.fields),
        model=job.model,
        model_fp=None,
        vocab=job.vocab,
        vocab_fp=None,
        id_columns=tuple(job.id_columns),
        storage_options=job.storage_options,
        rows_hint=rows_hint,
        encode_device=job.encode_device,
        partition_bytes=_partition_bytes(job),
        reading=reading_of(job),
    )


def plan_pieces(job: JobSpec, fs, files, bad=None, id_types=None) -> list:
    """The job's input pieces, sized by its ``partition_rows`` and ``partition_bytes``."""
    return io.plan(
        fs, files, job.partition_rows, bad=bad, partition_bytes=_partition_bytes(job), reading=reading_of(job),
        id_types=id_types,
    )  # fmt: skip


def _partition_bytes(job: JobSpec) -> int:
    from dask.utils import parse_bytes

    return parse_bytes(job.partition_bytes) if isinstance(job.partition_bytes, str) else job.partition_bytes


def reading_of(job: JobSpec) -> io.Reading:
    """How the job's input files are read (its ``csv`` and ``partition_types`` keys)."""
    return io.Reading(job.csv, dict(job.partition_types))


def _first_schema(fs, files, columns, reading, quarantine: bool):
    """``(file, schema)`` of the first input file, the one the job is checked against.
    With ``quarantine``, an unreadable file is left for the plan to quarantine and the
    next one is used."""
    for file in files:
        try:
            return file, io.read_schema(fs, file, columns, reading)
        except io.InputError:
            if not quarantine or file is files[-1]:
                raise


def largest_indices(fields, vocab) -> dict:
    """Per field, the largest index its encoding can produce."""
    import pyarrow.compute as pc

    out = {}
    for f in fields:
        if f.buckets is not None:
            out[f.name] = f.buckets + 1
        elif vocab is not None and vocab[f.name].num_rows:
            out[f.name] = int(pc.max(vocab[f.name].column("index")).as_py())
    return out


# ---------------------------------------------------------------- cluster
CLUSTERS = "'local', 'local-cuda' or a scheduler address like tcp://host:8786"


@contextmanager
def connect(
    cluster: str = "local",
    client=None,
    *,
    workers=None,
    threads_per_worker=None,
    memory_limit="auto",
    resources=None,
    announce=True,
):
    """A ``distributed.Client``: the given one, a new LocalCluster, a LocalCUDACluster
    (``local-cuda``: one worker per visible GPU), or a running scheduler. Workers of a
    cluster started here offer ``resources`` (the job's), so that its tasks can run."""
    from distributed import Client, LocalCluster

    if client is not None:
        yield client
        return
    if cluster == "local-cuda":
        with local_cuda_cluster(workers, threads_per_worker, memory_limit, resources) as lc, _closing(Client(lc)) as c:
            if announce:
                announce_cluster(c)
            yield c
        return
    if cluster == "local":
        n = workers or DEFAULT_LAYOUT["workers"](host_cores())
        t = threads_per_worker or (DEFAULT_LAYOUT["threads_per_worker"](host_cores()) if not workers else 1)
        with (
            LocalCluster(
                n_workers=n,
                threads_per_worker=t,
                processes=True,
                memory_limit=memory_limit,
                dashboard_address=":0",
                resources=resources,
            ) as lc,
            _closing(Client(lc)) as c,
        ):
            c.run(_set_log_levels, _log_levels(), on_error="ignore")
            if announce:
                announce_cluster(c)
            yield c
    elif "://" in cluster:
        try:
            client = Client(cluster)
        except (OSError, TimeoutError, TypeError) as e:  # TypeError: tls:// without certificates
            hint = (
                "; a tls:// scheduler admits only clients with its cluster's certificates: "
                "source the client.env that cluster/tls.py wrote (DASK_DISTRIBUTED__COMM__TLS__* variables)"
                if cluster.startswith("tls://")
                else ""
            )
            raise JobError(f"cannot connect to the scheduler at {cluster}: {e}{hint}") from e
        with _closing(client) as c:
            yield c
    else:
        raise SpecError(f"cluster: expected {CLUSTERS}, got {cluster!r}")


def announce_cluster(c) -> None:
    """One line on stderr: the local cluster's workers and its dashboard."""
    threads = sorted(set(c.nthreads().values())) or [0]
    print(
        f"dscore: local cluster of {len(c.nthreads())} workers x {'/'.join(map(str, threads))} threads; "
        f"dashboard {c.dashboard_link}",
        file=sys.stderr,
    )


# Workers of a local cluster write to this process's terminal: they log as it does
# (the CLI quietens distributed's task-failure records, which dscore reports itself).
_LOCAL_WORKER_LOGGERS = ("distributed.worker", "distributed.worker.state_machine")


def _log_levels() -> dict:
    return {n: logging.getLogger(n).level for n in _LOCAL_WORKER_LOGGERS}


def _set_log_levels(levels: dict) -> None:
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@contextmanager
def _closing(client):
    """Close ``client`` on exit, without ``with client``: that sets a context variable,
    which cannot be reset from another thread, and ``run`` connects in one
    (``_start_cluster``) and closes in the main thread."""
    try:
        yield client
    finally:
        client.close()


def gpu_threads_per_worker(gpus: int, cores: int) -> int:
    """Dask threads per GPU worker: the host's cores shared among its GPUs, at least 2.

    Parquet is read and decoded on the host (1.8 µs a row per core on the demo data),
    so feeding one GPU millions of rows a second takes many threads; two is the least
    that overlaps one partition's host work with another's encode and predict on the
    GPU (each thread queues on its own CUDA stream: ``dscore.model.thread_stream``).
    """
    return max(2, cores // max(1, gpus))


def local_cuda_cluster(workers=None, threads_per_worker=None, memory_limit="auto", resources=None):
    """A ``dask_cuda.LocalCUDACluster``: one worker process per visible GPU (or the first
    ``workers``), each pinned to its GPU by ``CUDA_VISIBLE_DEVICES``, with
    ``gpu_threads_per_worker`` threads unless told otherwise. CUDA is initialised in
    those workers only, never here (dask-cuda counts GPUs through NVML)."""
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError as e:
        raise SpecError(
            f"cluster: local-cuda needs dask-cuda, which cannot be imported here ({e}); "
            "pip install 'dscore[gpu]' (or conda install dask-cuda), or use cluster: local"
        ) from e
    if not threads_per_worker:
        from dask_cuda.utils import get_n_gpus

        threads_per_worker = gpu_threads_per_worker(workers or get_n_gpus(), host_cores())
    kwargs = {"threads_per_worker": threads_per_worker, "memory_limit": memory_limit, "dashboard_address": ":0"}
    if workers:
        kwargs["n_workers"] = workers
    if resources:
        kwargs["resources"] = dict(resources)
    return LocalCUDACluster(**kwargs)


def check_resources(client, resources) -> None:
    """Raise ``JobError`` unless a worker offers ``resources``: tasks that ask for what
    no worker has would wait forever. (No workers yet is ``_submit``'s to handle.)"""
    if not resources:
        return
    workers = client.scheduler_info(n_workers=-1)["workers"]
    offered = [w.get("resources") or {} for w in workers.values()]
    if not offered or any(all(have.get(k, 0) >= n for k, n in resources.items()) for have in offered):
        return
    names = sorted({k for have in offered for k in have})
    raise JobError(
        f"resources: every task asks for {dict(resources)}, but none of the {len(offered)} workers offers that "
        f"(resources offered: {names or 'none'}); start workers with e.g. `dask worker --resources GPU=1`, "
        "or drop the job's resources"
    )


# One process per 4 cores, a Dask thread per core, one torch thread each. Measured on
# 2 cores (docs/benchmarks.md, "worker layout"): 1 process x 2 threads scored as fast
# as 2 x 1 in half the memory (one model, one runtime); more processes per host
# beyond that trade memory for less GIL contention and smaller failure domains.
DEFAULT_LAYOUT = {
    "workers": lambda cores: max(1, cores // 4),
    "threads_per_worker": lambda cores: max(1, cores // max(1, cores // 4)),
}


def register(client, torch_threads=None) -> None:
    """Register dscore's worker plugin (threads, model cache) on every worker, unless
    it is there already with the same settings: registering again would tear down
    the workers' loaded models."""
    threads = torch_threads or torch_threads_per_host(client)
    current = client.run(_plugin_threads, on_error="ignore")  # a worker dying meanwhile is the job's to survive
    if current and all(v == ("set", threads) for v in current.values()):
        return
    client.register_plugin(DscorePlugin(threads), name="dscore")


def warm(client, task: TaskSpec, piece) -> None:
    """Have every worker get ready for ``task`` now, in a thread of its own
    (``worker.Runtime.warm``), while the client plans; does not wait.

    Sent as tasks, like the job's own: ``task`` may hold credentials, and distributed
    logs plugin registrations and ``Client.run`` calls whole at debug level.
    """
    for address in client.scheduler_info(n_workers=-1)["workers"]:
        client.submit(_warm_now, task, piece, workers=[address], allow_other_workers=False, pure=False)


def _plugin_threads(dask_worker):
    plugin = dask_worker.plugins.get("dscore")
    return ("set", plugin.torch_threads) if plugin is not None else None


def _warm_now(task, piece):
    import threading

    threading.Thread(target=runtime().warm, args=(task, piece), name="dscore-warm", daemon=True).start()


# ---------------------------------------------------------------- the job
@dataclass
class Report:
    """What a job did. ``status``: complete, partial (partitions quarantined) or failed."""

    job: str
    output: str
    status: str
    partitions: int
    rows: int
    scored_partitions: int
    resumed_partitions: int
    quarantined: list
    wall_seconds: float
    rows_scored: int
    rows_per_second: float
    stages: dict
    fields: dict
    model: dict
    cluster: str
    peak_worker_rss: int
    # Seconds from the start of ``run``: plan (the client's planning done), cluster
    # (cluster up, plugin registered), start (the first partition done, less its own
    # time: the job's fixed start); finish: from the last partition to the end.
    timeline: dict = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def format(self) -> str:
        lines = [
            f"dscore {self.status}: {self.rows:,} rows in {self.partitions} partitions -> {self.output}",
            f"  this run: {self.rows_scored:,} rows in {self.scored_partitions} partitions, "
            f"{self.wall_seconds:.1f}s, {self.rows_per_second:,.0f} rows/s"
            + (f" ({self.resumed_partitions} partitions were already done)" if self.resumed_partitions else ""),
        ]
        total = sum(self.stages.values()) or 1.0
        lines.append(
            "  task time: "
            + ", ".join(f"{k} {v:.1f}s ({v / total:.0%})" for k, v in self.stages.items())
            + f"; peak worker RSS {self.peak_worker_rss / 2**20:,.0f} MiB"
        )
        if self.timeline.get("start") is not None:
            t = self.timeline
            lines.append(
                f"  fixed time: start {t['start']:.1f}s (client planned in {t['plan']:.1f}s, cluster ready at "
                f"{t.get('cluster', 0):.1f}s), finish {t.get('finish', 0):.1f}s"
            )
        if self.model.get("execution"):
            lines.append(f"  model: {'; '.join(self.model['execution'])}")
        for tuning in self.model.get("tuning", []):
            rates = json.loads(tuning)
            lines.append(
                "    tuned on a worker, rows/s: "
                + ", ".join(
                    f"batch {b} {r:,}"
                    for b, r in sorted(rates.get("batch_rates", {}).items(), key=lambda kv: int(kv[0]))
                )
                + "".join(f"; {m} {r:,}" for m, r in rates.get("mode_rates", {}).items())
            )
        lines.append(f"  {'field':<16}{'OOV rate':>10}{'truncated':>11}{'tokens/row':>12}")
        for name, s in self.fields.items():
            lines.append(f"  {name:<16}{s['oov_rate']:>10.2%}{s['truncation_rate']:>11.2%}{s['mean_tokens']:>12.1f}")
        if self.quarantined:
            lines.append(f"  QUARANTINED {len(self.quarantined)} partitions (see _quarantine.json); output is partial:")
            lines.extend(f"    {q['error']}" for q in self.quarantined[:5])
        return "\n".join(lines)


RESUME_KEYS = (("model", "model"), ("mapping tables", "vocab"), ("field spec / outputs", "fields"), ("input", "input"))


def _check_resume(out: Output, header: dict, token: str, overwrite: bool) -> dict:
    """Records of partitions already done, after refusing to mix old and new scores.

    Only records that a fresh look at the output confirms (``Output.check_parts``)
    count as done: a part that is missing, or that another job wrote, is scored again.
    """
    if overwrite:
        out.clear()
        return {}
    old = out.read_json(JOB)
    if old is None:
        own, foreign = out.entries()
        if foreign:
            raise JobError(
                f"output {out.url!r} is not empty and holds no dscore job (it holds {foreign[0]!r}); "
                "choose another output"
            )
        if any(not TMP_FILE.fullmatch(posixpath.basename(p)) for p in own):
            raise JobError(
                f"output {out.url!r} holds dscore files but no {JOB} (an --overwrite that was interrupted); "
                "pass --overwrite to start over"
            )
        return {}
    changed = [
        f"{what} ({_differs(old.get(key), header.get(key))})"
        for what, key in RESUME_KEYS
        if old.get(key) != header.get(key)
    ]
    if changed:
        raise JobError(
            f"output {out.url!r} holds scores from a job with a different {'; '.join(changed)}; "
            "refusing to mix old and new scores. Pass --overwrite (overwrite=True) to start over"
        )
    done, redo = out.check_parts(token)
    if redo:
        first = "; ".join(redo[i] for i in sorted(redo)[:3])
        log.warning("%s: %d recorded partitions are scored again: %s%s", out.url, len(redo), first,
                    " ..." if len(redo) > 3 else "")  # fmt: skip
    return done


def _differs(old, new) -> str:
    """What changed, briefly: the fingerprints, paths or counts that differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k) and k != "digest"] or ["digest"]
        return ", ".join(f"{k} {_short(old.get(k))} then, {_short(new.get(k))} now" for k in keys)
    return f"{_short(old)} then, {_short(new)} now"


def _short(v) -> str:
    hexdigest = isinstance(v, str) and len(v) > 16 and all(c in "0123456789abcdef" for c in v)
    return f"{v[:12]}..." if hexdigest else repr(v)


def run(
    job, *, client=None, overwrite: bool = False, break_lock: bool = False, progress: bool = True, **overrides
) -> Report:
    """Run a whole scoring job and return its ``Report``.

    Parameters
    ----------
    job : JobSpec, dict or str
        The job, or the path of its YAML file.
    client : distributed.Client, optional
        Run on this client's cluster instead of the job's ``cluster`` setting.
    overwrite : bool
        Discard what an earlier run left in the output (only files dscore wrote:
        anything else there stops it). By default a rerun scores only the missing
        partitions, and refuses if the model, mapping tables, fields or input changed.
    break_lock : bool
        Take the output's lease from the run that holds it (``dscore.lease``),
        when that run is known to be gone.
    **overrides
        Dotted job keys, e.g. ``**{"model.batch_size": 4096}``; they win over the file.

    Raises
    ------
    JobError
        The output overlaps the input, another run holds the output, the output
        holds another job's scores or files dscore did not write, or the job did
        not finish; the message says which and what to do.
    """
    spec = JobSpec.load(job, overrides)
    start = time.perf_counter()
    inputs = plan_inputs(spec)
    out = Output(spec.output, spec.storage_options)
    with Lease.acquire(out, spec.lock_timeout, break_lock=break_lock) as lease:
        with contextlib.ExitStack() as stack:
            # The cluster starts, and its workers load the model and tables, while this
            # process loads and probes the model (``plan_job``): the two used to run one
            # after the other, most of a short job's time. Not for a finished output,
            # which a rerun leaves alone without needing a cluster.
            cluster = None
            if overwrite or not out.complete():
                cluster = _start_cluster(stack, spec, client, inputs)
            try:
                plan = plan_job(spec, inputs)
            except BaseException:
                if cluster is not None:  # let it finish starting, so that the stack closes it
                    concurrent.futures.wait([cluster])
                raise
            c, ready = cluster.result() if cluster is not None else (None, None)
            token = plan.task.job_token
            done = _check_resume(out, plan.header, token, overwrite)
            out.start_run()
            out.write_json(JOB, {**plan.header, "token": token, "job": spec.to_dict(redact=True)})
            todo = [p for p in plan.pieces if p.index not in done]
            records, quarantined = dict(done), list(plan.unreadable)
            this_run = []
            timeline = {"plan": time.perf_counter() - start}
            if todo:
                if c is None:
                    c, ready = _start_cluster(stack, spec, client, inputs).result()
                timeline["cluster"] = ready - start
                if client is None and spec.cluster.startswith("local"):  # said only once it is used
                    announce_cluster(c)
                threads = sum(c.nthreads().values()) or 1
                task = dataclasses.replace(plan.task, rows_hint=sum(p.rows or 0 for p in todo) // threads)
                bar = Progress(len(plan.pieces), len(done), enabled=progress)
                # Keys unique to this run: a scheduler that still holds an earlier run's
                # results under the same keys (the same job, to another output, or before
                # --overwrite) would hand them back without writing anything.
                for rec in _submit(c, todo, task, spec, f"{token}-{lease.holder['id'][:8]}"):
                    if "start" not in timeline:  # to the first partition, less its own time
                        timeline["start"] = time.perf_counter() - start - sum(rec.get("seconds", {}).values())
                    if rec.get("quarantined"):
                        quarantined.append(rec)
                    else:
                        records[rec["index"]] = rec
                        this_run.append(rec)
                    bar.update(rec.get("rows", 0))
                bar.close()
                last = time.perf_counter()
        label = spec.cluster if client is None else "client"
        wall = time.perf_counter() - start
        report = _finish(spec, plan, out, records, this_run, quarantined, wall, label, lease, timeline)
        if todo:  # the cluster's close included: the job is over when this returns
            report.timeline["finish"] = time.perf_counter() - last
            out.write_json(REPORT, report.to_dict())
        return report


def _start_cluster(stack, spec: JobSpec, client, inputs: Inputs):
    """A future of ``(client, when it was ready)``: the job's cluster started in a thread
    (``connect``, entered on ``stack``), dscore's plugin registered, and every worker
    warming up for this job (``warm``)."""

    def start():
        c = stack.enter_context(
            connect(spec.cluster, client, workers=spec.workers, threads_per_worker=spec.threads_per_worker,
                    memory_limit=spec.memory_limit, resources=spec.resources, announce=False)
        )  # fmt: skip
        check_resources(c, spec.resources)
        rows = sum(p.rows or 0 for p in inputs.pieces) // (sum(c.nthreads().values()) or 1)
        register(c, spec.model.threads)
        if inputs.pieces:
            warm(c, warm_task(spec, rows), inputs.pieces[0])
        return c, time.perf_counter()

    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dscore-connect")
    future = pool.submit(start)
    pool.shutdown(wait=False)
    return future


NO_WORKERS_TIMEOUT = 300.0  # seconds without any worker before a job gives up


def _submit(client, pieces, task, spec, run_key):
    """Yield each piece's record as it completes; on a failure cancel the rest and raise.

    Worker loss is the scheduler's to handle: it reruns lost tasks elsewhere. But a
    cluster with no workers at all (all died and none came back) would leave the
    job waiting forever, so that is an error after ``NO_WORKERS_TIMEOUT``.
    """
    from distributed import wait

    by_key = {f"dscore-score-{run_key}-{p.index}": p for p in pieces}
    futures = client.map(
        score_piece,
        pieces,
        task=task,
        output_url=spec.output,
        quarantine=spec.on_bad_input == "quarantine",
        key=list(by_key),
        retries=spec.retries,
        # Here, at submit time: with dask-expr, resources annotated while building a
        # graph (dask.annotate) are silently dropped.
        resources=dict(spec.resources) if spec.resources else None,
        pure=False,
    )
    # Now, while the workers live: a KilledWorker error is raised once they have died.
    limits = {w.get("memory_limit") for w in client.scheduler_info(n_workers=-1)["workers"].values()}
    pending, alone_since, scored = set(futures), None, 0
    try:
        while pending:
            try:
                done, pending = wait(pending, timeout=5, return_when="FIRST_COMPLETED")
            except TimeoutError:  # nothing finished in 5s: look at the workers
                done = ()
            for fut in done:
                yield _result(fut, by_key[fut.key], spec, limits)
                scored += 1
            if _has_workers(client):
                alone_since = None
            elif alone_since is None:
                alone_since = time.monotonic()
            elif time.monotonic() - alone_since > NO_WORKERS_TIMEOUT:
                raise JobError(
                    f"the cluster has had no workers for {NO_WORKERS_TIMEOUT:.0f}s; {len(pending)} partitions "
                    "are not scored. Start workers and rerun: the job resumes where it stopped"
                )
    except BaseException as e:
        with contextlib.suppress(Exception):  # a lost scheduler cannot cancel anything
            client.cancel(futures)
        if isinstance(e, (concurrent.futures.CancelledError, _SchedulerLost)):  # not cancelled by this job
            cause = e.__cause__ or e
            reason = getattr(cause, "reason", None) or next(
                (g.reason for g in getattr(cause, "error_groups", ())), f"{type(cause).__name__}: {cause}"
            )
            raise JobError(
                f"lost the scheduler at {client.scheduler.address} ({reason}) with "
                f"{len(futures) - scored} partitions not scored; restart the cluster and "
                "rerun: the job resumes where it stopped"
            ) from e
        raise


class _SchedulerLost(Exception):
    """The connection to the scheduler broke while a result was fetched."""


def _result(future, piece, spec, limits):
    """``future.result()``; a piece whose workers kept dying becomes a ``JobError`` that
    names its file and row groups, the workers' memory ``limits`` and the knobs, not a
    task key."""
    import dask
    from distributed.scheduler import KilledWorker

    try:
        return future.result()
    except OSError as e:
        if future.status != "error":  # not the task's error: fetching it failed
            raise _SchedulerLost() from e
        # The task's: the output's file system (reading errors are InputError)
        raise JobError(f"{piece.describe()}: {_os_error(e, spec.output)}") from e
    except KilledWorker as e:
        limit = ", ".join(f"{m / 2**30:.2f} GiB" for m in sorted(x for x in limits if x)) or "none"
        deaths = int(dask.config.get("distributed.scheduler.allowed-failures")) + 1
        raise JobError(
            f"{piece.describe()}: the workers scoring it died {deaths} times, most likely out of memory "
            f"(worker memory limit: {limit}). Lower partition_bytes (now {spec.partition_bytes}) or "
            "partition_rows, or give workers more memory (memory_limit); a rerun resumes where this one stopped"
        ) from e


def _os_error(e: OSError, output: str) -> str:
    """One line for an output that cannot be written, with what to do."""
    import errno

    what = f"{e.strerror or e} ({e.filename or output})"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"cannot write the output: {what}; free space there, then rerun: the job resumes where it stopped"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write the output: {what}; fix its permissions or choose another output, then rerun"
    return f"cannot write the output: {what}; a rerun resumes where this run stopped"


def _has_workers(client) -> bool:
    try:
        return bool(client.scheduler_info(n_workers=-1)["workers"])
    except (TimeoutError, OSError):  # a busy or reconnecting scheduler: do not count it as empty
        return True


def _finish(spec, plan, out, records, this_run, quarantined, wall, label, lease=None, timeline=None) -> Report:
    rows_in = plan.header["input"]["rows"]
    missing = [p.index for p in plan.pieces if p.index not in records]
    rows_out = sum(r["rows"] for r in records.values())
    stats = {f.name: FieldStats() for f in spec.fields}
    stages = dict.fromkeys(STAGES, 0.0)
    for rec in this_run:
        for name, s in rec["stats"].items():
            stats[name].add(FieldStats(**s))
        for k, v in rec["seconds"].items():
            stages[k] += v
    complete = not quarantined and not missing and (rows_out == rows_in or any(p.rows is None for p in plan.pieces))
    if quarantined:
        out.write_json(
            QUARANTINE, [{"partition": q["index"], "input": q["input"], "error": q["error"]} for q in quarantined]
        )
    if complete:
        records = _check_output(out, plan, lease)
        out.write_json(MANIFEST, {**plan.header, "partitions": [records[i] for i in sorted(records)]})
        out.write_json(SUCCESS, {"rows": rows_out, "partitions": len(records)})
    elif not quarantined:
        raise JobError(
            f"output {spec.output!r} is incomplete: partitions {missing[:10]} are missing or rows do not match "
            f"({rows_out} of {rows_in}); rerun the job to finish it"
        )
    rows_scored = sum(r["rows"] for r in this_run)
    report = Report(
        job=spec.source,
        output=spec.output,
        status="complete" if complete else "partial",
        partitions=len(plan.pieces),
        rows=rows_out,
        scored_partitions=len(this_run),
        resumed_partitions=len(records) - len(this_run),
        quarantined=[{"partition": q["index"], "error": q["error"]} for q in quarantined],
        wall_seconds=wall,
        rows_scored=rows_scored,
        rows_per_second=rows_scored / wall if wall > 0 else 0.0,
        stages=stages,
        fields={n: s.summary() for n, s in stats.items()},
        model={
            "path": spec.model.path,
            "fingerprint": plan.task.model_fp,
            "outputs": plan.outputs,
            # what the workers chose (dscore.optimize): "batch 1024, freeze"
            "execution": sorted({f"batch {r['model']['batch_size']}, {r['model']['mode']}" for r in this_run}),
            # per worker process, what autotuning measured (rows/s by batch size and mode)
            "tuning": sorted(
                {
                    json.dumps(
                        {k: r["model"][k] for k in ("batch_rates", "mode_rates") if k in r["model"]}, sort_keys=True
                    )
                    for r in this_run
                }
                - {"{}"}
            ),  # fmt: skip
        },
        cluster=label,
        peak_worker_rss=max((r.get("worker_peak_rss", 0) for r in this_run), default=0),
        timeline=dict(timeline or {}),
    )
    out.write_json(REPORT, report.to_dict())
    return report


def _check_output(out: Output, plan: Plan, lease) -> dict:
    """The output's records, after checking that the output, listed afresh, holds
    this job's part file for every partition: the records in memory say what this
    run wrote, not what another run may have removed or replaced since."""
    token = plan.task.job_token
    if lease is not None:
        lease.check()
    on_disk = out.read_json(JOB) or {}
    if on_disk.get("token") != token:
        raise JobError(
            f"output {out.url!r}: {JOB} now describes another job (token {on_disk.get('token')!r}, this job's is "
            f"{token!r}); another run wrote here, and _SUCCESS was not written. Rerun the job"
        )
    good, problems = out.check_parts(token, [p.index for p in plan.pieces])
    if problems:
        first = [problems[i] for i in sorted(problems)[:3]]
        raise JobError(
            f"output {out.url!r} is not complete, so _SUCCESS was not written: {'; '.join(first)}"
            + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
            + ". Rerun the job: it scores those partitions again"
        )
    return good


class Progress:
    """A progress bar over partitions on stderr (a line every 10% when not a terminal)."""

    def __init__(self, total: int, done: int = 0, enabled: bool = True):
        self.total, self.done, self.rows = total, done, 0
        self.enabled = enabled and total > 0
        self.tty = sys.stderr.isatty()
        self.start = time.perf_counter()
        self._last_decile = -1

    def update(self, rows: int) -> None:
        self.done += 1
        self.rows += rows
        if not self.enabled:
            return
        frac = self.done / self.total
        rate = self.rows / max(time.perf_counter() - self.start, 1e-9)
        line = (
            f"[{'#' * int(30 * frac):<30}] {self.done}/{self.total} partitions, {self.rows:,} rows, {rate:,.0f} rows/s"
        )
        if self.tty:
            print("\r" + line, end="", file=sys.stderr, flush=True)
        elif int(frac * 10) > self._last_decile:
            self._last_decile = int(frac * 10)
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled and self.tty:
            print(file=sys.stderr)


# ---------------------------------------------------------------- Python API over a dask DataFrame
class Scorer:
    """Score dask DataFrames with a worker-resident model.

    Parameters
    ----------
    model : str or ModelSpec
        Model file (see ``ModelSpec``); keyword options such as ``batch_size``,
        ``device``, ``call``, ``outputs``, ``factory`` build the spec from a path.
    fields : sequence of Field
    vocab : str or Vocabulary, optional
        Directory of mapping tables (a loaded ``Vocabulary`` must come from one:
        workers load tables themselves; they are never shipped in the graph).
    id_columns : sequence of str
        Columns copied to the output before the scores.
    encode_device : {"auto", "cpu", "cuda"}
        Where workers encode (``JobSpec``'s key of that name): ``auto`` on the GPU
        when the model is on CUDA and numba.cuda can run kernels, else on the CPU.

    Examples
    --------
    >>> scorer = Scorer("model.pt", fields, "vocab/", id_columns=["user_id"])  # doctest: +SKIP
    >>> scorer.register(client)                                                # doctest: +SKIP
    >>> scores = scorer.score(ddf)          # lazy: id columns + score columns  # doctest: +SKIP
    """

    def __init__(
        self, model, fields, vocab=None, *, id_columns=(), storage_options=None, encode_device="auto", **model_options
    ):
        from .vocab import Vocabulary

        fields = tuple(fields)
        check_fields(fields)
        if encode_device not in ENCODE_DEVICES:
            raise ValueError(f"encode_device is {encode_device!r}; expected one of {', '.join(ENCODE_DEVICES)}")
        so = dict(storage_options or {})
        spec = model if isinstance(model, ModelSpec) else ModelSpec(path=str(model), **model_options)
        if isinstance(model, ModelSpec) and model_options:
            spec = dataclasses.replace(spec, **model_options)
        if isinstance(vocab, Vocabulary):
            if vocab.source.startswith(("<", "fit(")):
                raise TypeError("Scorer needs the vocabulary's directory: save it (vocab.save(path)) and pass the path")
            vocab = vocab.source
        needs_tables = any(f.buckets is None for f in fields)
        loaded = Vocabulary.load(vocab, fields=fields, storage_options=so) if (vocab and needs_tables) else None
        if needs_tables and loaded is None:
            raise ValueError("fields without buckets need a vocab directory of mapping tables")
        self.task = TaskSpec(
            fields=fields,
            model=spec,
            model_fp=model_fingerprint(spec.path, so),
            vocab=vocab if loaded is not None else None,
            vocab_fp=loaded.fingerprint() if loaded is not None else None,
            id_columns=tuple(id_columns),
            storage_options=so,
            encode_device=encode_device,
        )
        try:
            self.outputs = Model.load(spec, fields, device="cpu", storage_options=so).output_names
        except ModelError:
            raise

    def register(self, client, torch_threads=None) -> None:
        """Set up dscore's worker plugin on ``client``'s workers (threads and model cache)."""
        register(client, torch_threads)

    def score_table(self, table) -> pa.Table:
        """Score an Arrow table (or pandas frame) in this process."""
        if not isinstance(table, pa.Table):
            table = pa.Table.from_pandas(table, preserve_index=False)
        return score_table(table, self.task)[0]

    def score(self, ddf):
        """A lazy dask DataFrame: ``id_columns`` then the score columns, partition for partition."""
        import pandas as pd

        missing = [c for c in self.task.columns if c not in ddf.columns]
        if missing:
            raise ValueError(f"column {missing[0]!r} is not in the dask DataFrame; columns are {list(ddf.columns)}")
        meta = pd.DataFrame(
            {
                **{c: ddf._meta[c] for c in self.task.id_columns},
                **{n: pd.Series([], dtype="float32") for n in self.outputs},
            }
        )
        return ddf[self.task.columns].map_partitions(_score_frame, self.task, meta=meta)


def _score_frame(df, task: TaskSpec):
    table = pa.Table.from_pandas(df, preserve_index=False)
    scored = score_table(table, task)[0]
    result = scored.to_pandas()
    result.index = df.index
    for c in task.id_columns:  # keep the caller's dtypes for the id columns
        result[c] = df[c]
    return result
