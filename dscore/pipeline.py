"""The scoring job: read -> encode -> predict -> write, one task per input piece.

``score_table`` is the pure per-partition function (Arrow in, Arrow out);
``score_piece`` is a job's task: it reads a piece, scores it slice by slice and
commits its part file. ``run(job)`` is the job itself: it plans (``dscore.plan``)
while the cluster starts (``dscore.cluster``), checks what an earlier run left,
submits the missing pieces with ``client.map`` rather than as a dask DataFrame,
because exactly-once output needs to know which input each task covers (every
piece has a deterministic output name and a durable record, ``output.Output``, so
retries overwrite and reruns resume), and finishes with the manifest, ``_SUCCESS``
and the ``Report`` (``dscore.report``). ``Scorer`` (``dscore.scorer``) runs
``score_table`` over a user's dask DataFrame instead.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import posixpath
import time
from typing import NamedTuple

import numpy as np
import psutil
import pyarrow as pa

from . import config, io
from .cluster import announce_cluster, check_resources, connect, register, warm
from .encoding import FieldStats, InvalidUTF8Error, NumericSizeError, encode_forms
from .errors import JobError
from .lease import Lease
from .output import JOB, MANIFEST, QUARANTINE, REPORT, SUCCESS, TMP_FILE, Output
from .plan import Inputs, Plan, TaskSpec, check_schema, plan_inputs, plan_job, torch_threads, warm_task
from .report import Progress, Report
from .spec import JobSpec, SpecError
from .worker import peak_rss, relieve_memory, runtime

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- per partition
class Scored(NamedTuple):
    """What ``score_table`` returns for one partition."""

    table: pa.Table  # task.id_columns, then one float32 column per model output; a row per input row, in order
    stats: dict  # {field name: FieldStats}
    seconds: dict  # {stage: seconds}: encode, tune, predict (every model's)
    # How the model ran: batch_size, mode (and what tuning measured: batch_rates,
    # mode_rates); with several models (``models``), that of each by name, with its
    # own predict seconds: {name: {batch_size, mode, ..., predict_seconds}}.
    execution: dict


def score_table(table: pa.Table, task: TaskSpec, rt=None) -> Scored:
    """Score one partition (in the worker's ``runtime()``, or ``rt``), under the job's
    settings (``task.settings``)."""
    with config.using(task.settings):
        return _score_table(table, task, rt or runtime())


def _score_table(table: pa.Table, task: TaskSpec, rt) -> Scored:
    vocab = rt.vocab(task)
    t0 = time.perf_counter()
    device = rt.encode_device(task)  # "auto" asks the model's device: may load it
    t1 = time.perf_counter()
    encoded, stats = encode_forms(table, task.forms, vocab, buffers=rt.buffers_for(device), device=device)
    t2 = time.perf_counter()
    seconds = {"encode": t2 - t1, "predict": 0.0, "tune": t1 - t0}
    cols = {c: table.column(c) for c in task.id_columns}
    execution = {}
    for entry in task.models:  # the fields encoded once (per form); each model fed its own, in its order
        own = {n: encoded[entry.spec.inputs][n] for n in entry.fields}
        t2 = time.perf_counter()
        model = rt.ready_model(task, own, entry)
        t3 = time.perf_counter()
        scores = model.predict(own)
        t4 = time.perf_counter()
        for i, name in enumerate(entry.columns or model.output_names):
            cols[name] = pa.array(np.ascontiguousarray(scores[:, i]), pa.float32())
        seconds["tune"] += t3 - t2
        seconds["predict"] += t4 - t3
        info = getattr(model, "info", None) or {}
        ran = {"batch_size": model.batch_size, "mode": model.mode}
        ran.update({k: info[k] for k in ("batch_rates", "mode_rates") if k in info})  # what tuning measured
        execution[entry.name] = {**ran, "predict_seconds": t4 - t3}
    if None in execution:  # a job's single model: the record's shape from before models existed
        execution = {k: v for k, v in execution[None].items() if k != "predict_seconds"}
    return Scored(pa.table(cols), stats, seconds, execution)


def score_piece(piece: io.Piece, task: TaskSpec, output_url: str, quarantine: bool) -> dict:
    """Read, score and commit one piece; return its record (or a quarantine entry).

    A piece is read, scored and written slice by slice when its row group is larger
    than ``task.partition_bytes`` (``io.iter_piece``); its part file is still one
    file, committed once complete. Runs under the job's settings (``task.settings``).
    """
    with config.using(task.settings):
        return _score_piece(piece, task, output_url, quarantine)


def _score_piece(piece: io.Piece, task: TaskSpec, output_url: str, quarantine: bool) -> dict:
    t0 = time.perf_counter()
    fs, _ = io.url_to_fs(piece.url, task.storage_options)
    stats: dict = {f.name: FieldStats() for f in task.fields}
    seconds = dict.fromkeys(("read", "encode", "tune", "predict"), 0.0)
    execution: dict = {}
    named = task.models[0].name is not None  # models: execution is per model
    rows = 0

    def scored_slices():
        nonlocal rows, execution
        slices = io.iter_piece(fs, piece, task.columns, task.partition_bytes, task.reading)
        start = time.perf_counter()
        for table in slices:
            if rows == 0:  # this file's own schema: inputs may differ from the first file's
                try:
                    check_schema(table.schema, task.fields, task.id_columns)
                except SpecError as e:
                    raise io.InputError(piece.url, _rgs(piece), None, str(e)) from e
                if task.id_types is not None:  # planning saw the footer; this is what gets written
                    task.id_types.check(piece.url, {f.name: f.type for f in table.schema}, _rgs(piece))
            seconds["read"] += time.perf_counter() - start
            try:
                scored = _score_table(table, task, runtime())
            except (InvalidUTF8Error, NumericSizeError) as e:  # a bad row: named in the file
                row = f"row {rows + e.row}"
                if piece.format == "parquet":  # rows count from the piece's first row group
                    row += f" of row groups {piece.rg_start}-{piece.rg_stop - 1}"
                raise io.InputError(piece.url, None, None, e.reason(row)) from e
            for name, s in scored.stats.items():
                stats[name].add(s)
            for k, v in scored.seconds.items():
                seconds[k] += v
            if named:  # each model's predict seconds, summed over the slices
                for name, ran in scored.execution.items():
                    ran["predict_seconds"] += execution.get(name, {}).get("predict_seconds", 0.0)
            execution = scored.execution
            rows += scored.table.num_rows
            del table
            yield scored.table
            relieve_memory()
            start = time.perf_counter()
        if piece.rows is not None and rows != piece.rows:  # before the part is committed
            raise io.InputError(piece.url, _rgs(piece), None, f"read {rows} rows, its metadata says {piece.rows}")

    out = Output(output_url, task.storage_options)
    record = {
        "index": piece.index,
        "file": out.part_name(piece.index),
        "job": task.job_token,
        "input": piece.identity(),
    }
    try:
        out.write_part(
            piece.index,
            scored_slices(),
            lambda: _record(record, rows, stats, execution, seconds, named),
            job=task.job_token,
        )
    except io.InputError as e:
        if not quarantine:
            raise
        return {"index": piece.index, "quarantined": True, "input": piece.identity(), "error": str(e)}
    seconds["write"] = time.perf_counter() - t0 - sum(seconds.values())
    return {**_record(record, rows, stats, execution, seconds, named), "seconds": seconds}


def _record(record: dict, rows: int, stats: dict, execution: dict, seconds: dict, named: bool = False) -> dict:
    return {
        **record,
        "rows": rows,
        "stats": {name: dataclasses.asdict(s) for name, s in stats.items()},
        # how the model ran; with several models (``models``), each by name
        ("models" if named else "model"): execution,
        # The worker's memory after each partition, so that a leak shows in the manifest.
        "worker_rss": psutil.Process().memory_info().rss,
        "worker_peak_rss": peak_rss(),
        "seconds": dict(seconds),
    }


def _rgs(piece):
    return (piece.rg_start, piece.rg_stop) if piece.format == "parquet" else None


# ---------------------------------------------------------------- the job (client side)
RESUME_KEYS = (
    ("model", "model"),
    ("models", "models"),  # a job with models: every model's path and fingerprint
    ("mapping tables", "vocab"),
    ("field spec / outputs", "fields"),
    ("input", "input"),
)


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
        f"{what} ({_differs(old.get(key), header.get(key), nested=key == 'models')})"
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


def _differs(old, new, nested: bool = False) -> str:
    """What changed, briefly: the fingerprints, paths or counts that differ (with
    ``nested``, inside each entry too: ``house fingerprint ... then, ... now``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k) and k != "digest"] or ["digest"]
        return ", ".join(
            f"{k} {_differs(old[k], new[k])}"
            if nested and isinstance(old.get(k), dict) and isinstance(new.get(k), dict)
            else f"{k} {_short(old.get(k))} then, {_short(new.get(k))} now"
            for k in keys
        )
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
    # The job's settings, taken once: its tasks carry them (TaskSpec.settings), and
    # this process reads them too, so that a job never sees a value change half-way.
    settings = config.snapshot()
    with config.using(settings):
        return _run(spec, settings, client, overwrite, break_lock, progress)


def _run(spec: JobSpec, settings: dict, client, overwrite: bool, break_lock: bool, progress: bool) -> Report:
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
                cluster = _start_cluster(stack, spec, client, inputs, settings)
            try:
                plan = plan_job(spec, inputs, settings)
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
                    c, ready = _start_cluster(stack, spec, client, inputs, settings).result()
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


def _start_cluster(stack, spec: JobSpec, client, inputs: Inputs, settings: dict):
    """A future of ``(client, when it was ready)``: the job's cluster started in a thread
    (``connect``, entered on ``stack``), dscore's plugin registered, and every worker
    warming up for this job (``warm``)."""

    def start():
        with config.using(settings):  # a thread of its own: the job's settings, as in run's
            c = stack.enter_context(
                connect(spec.cluster, client, workers=spec.workers, threads_per_worker=spec.threads_per_worker,
                        memory_limit=spec.memory_limit, resources=spec.resources, announce=False)
            )  # fmt: skip
            check_resources(c, spec.resources)
            rows = sum(p.rows or 0 for p in inputs.pieces) // (sum(c.nthreads().values()) or 1)
            register(c, torch_threads(spec))
            if inputs.pieces:
                warm(c, warm_task(spec, rows, settings), inputs.pieces[0])
        return c, time.perf_counter()

    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dscore-connect")
    future = pool.submit(start)
    pool.shutdown(wait=False)
    return future


def _submit(client, pieces, task, spec, run_key):
    """Yield each piece's record as it completes; on a failure cancel the rest and raise.

    Worker loss is the scheduler's to handle: it reruns lost tasks elsewhere. But a
    cluster with no workers at all (all died and none came back) would leave the
    job waiting forever, so that is an error after ``config.get("no-workers-timeout")`` seconds.
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
    no_workers_timeout = float(config.get("no-workers-timeout"))
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
            elif time.monotonic() - alone_since > no_workers_timeout:
                raise JobError(
                    f"the cluster has had no workers for {no_workers_timeout:.0f}s; {len(pending)} partitions "
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


def _finish(spec, plan, out, records, this_run, quarantined, wall, label, lease, timeline) -> Report:
    """Commit the job if every partition is done (``_check_output``, the manifest,
    ``_SUCCESS``), or record what was quarantined; write and return the report.
    Raises ``JobError`` when partitions are missing and none was quarantined."""
    rows_in = plan.header["input"]["rows"]
    missing = [p.index for p in plan.pieces if p.index not in records]
    rows_out = sum(r["rows"] for r in records.values())
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
    report = Report.build(
        spec, plan, records, this_run, quarantined, complete=complete, wall=wall, cluster=label, timeline=timeline
    )
    out.write_json(REPORT, report.to_dict())
    return report


def _check_output(out: Output, plan: Plan, lease: Lease | None) -> dict:
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
