"""dscore's GPU path on one machine, in one run: correctness, then speed.

    python -m benchmarks.gpu_check [--rows 10000000] [--threads 4] [--json results.json]
    python -m benchmarks.gpu_check --cpu --rows 20000     # the same steps, CPU only (a dry run)

benchmarks/gpu_check.sh runs it after ``pytest tests/gpu``. Steps, each timed, each
reported as FAILED (with its traceback) without stopping the others:

1. **data**: the demo dataset (``dscore.demo``), ``--rows`` rows written by one
   process per core; mapping tables fitted on its first 100k rows; the demo model
   with random weights as TorchScript. Reused from ``--workdir`` when already there.
2. **diff**: a ``--sample`` of rows scored through ``pipeline.score_table`` twice, with
   ``model.device: cpu, encode_device: cpu`` and with ``cuda``/``cuda``; the
   element-wise |GPU - CPU| table (``dscore.verify.diff_table``) for fp32, tf32 and
   bf16, and whether the encoded arrays and their stats are identical (they must be).
3. **encode**: tokens/s of ``encode_table`` on the GPU and on the CPU on the same
   rows (``--encode-rows``), one delimited field as ``benchmarks/encode.py`` and all
   four fields, each call synchronised (``cuda.synchronize()``) before the clock stops;
   host-to-device bytes per call are the column's Arrow buffers.
4. **end to end**: ``dscore.run`` on all ``--rows`` rows on a ``LocalCUDACluster``
   (``cluster: local-cuda``: one worker per GPU, ``--threads`` each), rows/s over the
   run's wall time, the workers' devices and stage times; beside it the model-only
   ceiling: the forward pass alone, at the batch size and mode the workers chose, on
   pre-encoded int64 tensors already on the GPU.

``--cpu`` replaces the GPU by the CPU in every step (and LocalCUDACluster by a
one-worker LocalCluster): it exercises this script without a GPU. Under numba's
simulator (``NUMBA_ENABLE_CUDASIM=1``) the GPU steps run their numba.cuda code on the
CPU, with the model on the CPU since torch sees no GPU then.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import glob
import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB_SAMPLE_ROWS = 100_000
ROW_GROUP = 65_536


def say(msg: str = "") -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------- sections
class Run:
    """Results of the steps; a step that raises is reported and the next one runs."""

    def __init__(self):
        self.results: dict = {}
        self.failed: list[str] = []

    @contextlib.contextmanager
    def step(self, name: str):
        say(f"\n==== {name}")
        t = time.perf_counter()
        try:
            yield
        except Exception as e:  # noqa: BLE001 - report and go on with the next step
            traceback.print_exc(file=sys.stdout)
            say(f"FAILED: {name}: {type(e).__name__}: {e}")
            self.failed.append(name)
            self.results.setdefault("errors", {})[name] = f"{type(e).__name__}: {e}"
        say(f"---- {name}: {time.perf_counter() - t:.1f}s")


# ---------------------------------------------------------------- devices
@dataclasses.dataclass(frozen=True)
class Devices:
    """What stands for "the GPU" in this run: where the model goes, where encoding runs."""

    model: str  # cuda | auto (torch without CUDA: the simulator) | cpu
    encode: str  # cuda | cpu

    @property
    def gpu(self) -> bool:
        return self.encode == "cuda"


def choose_devices(cpu_only: bool) -> Devices:
    if cpu_only:
        return Devices("cpu", "cpu")
    import torch

    if not torch.cuda.is_available():
        say("WARNING: torch sees no CUDA device: the model runs on the CPU (numba's simulator?)")
        return Devices("auto", "cuda")
    return Devices("cuda", "cuda")


def sync(devices: Devices) -> None:
    """Wait for the GPU: numba's and torch's queued work (no-op on the CPU)."""
    if not devices.gpu:
        return
    from numba import cuda

    cuda.synchronize()
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def versions() -> dict:
    import importlib

    out = {"python": platform.python_version(), "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
    for name in ("numpy", "pyarrow", "pandas", "numba", "numba_cuda", "torch", "dask", "distributed", "dask_cuda",
                 "cupy", "hypothesis", "pytest"):  # fmt: skip
        try:
            out[name] = getattr(importlib.import_module(name), "__version__", "?")
        except Exception as e:  # noqa: BLE001 - a missing package is a finding, not an error
            out[name] = f"missing ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    try:
        import torch

        out["torch.cuda"] = (
            f"{torch.cuda.is_available()} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})"
        )
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            out["torch device 0"] = (
                f"{p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs"
            )
    except Exception as e:  # noqa: BLE001
        out["torch.cuda"] = f"error: {e}"
    try:
        from dscore import encoding_cuda as kc

        out["numba.cuda"] = "usable" if kc.cuda_available() else f"not usable: {kc.unavailable_reason()}"
        if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
            out["numba.cuda"] += " (SIMULATOR)"
    except Exception as e:  # noqa: BLE001
        out["numba.cuda"] = f"error: {type(e).__name__}: {e}"
    try:
        out["dscore commit"] = (
            subprocess.run(
                ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or "?"
        )
    except (OSError, subprocess.SubprocessError):
        out["dscore commit"] = "?"
    return out


# ---------------------------------------------------------------- data
def _write_part(path: str, rows: int, seed: int, first_id: int) -> str:
    import pyarrow.parquet as pq

    from dscore.demo import APPS, make_table, package_names

    pq.write_table(
        make_table(rows, seed=seed, first_id=first_id, apps=package_names(APPS)), path, row_group_size=ROW_GROUP
    )
    return path


def prepare(workdir: str, rows: int) -> dict:
    """The demo data, mapping tables and model in ``workdir`` (reused); returns the job."""
    import dask
    import pyarrow.parquet as pq
    import torch

    from dscore.demo import FIELDS, build_model, vocab_sizes
    from dscore.vocab import Vocabulary

    job_path = os.path.join(workdir, "job.json")
    marker = os.path.join(workdir, f".rows-{rows}")
    if os.path.exists(marker) and os.path.exists(job_path):
        say(f"reusing {rows:,} rows in {workdir}")
        with open(job_path) as f:
            return json.load(f)
    shutil.rmtree(workdir, ignore_errors=True)
    data = os.path.join(workdir, "data")
    os.makedirs(data)
    cores = os.cpu_count() or 1
    files = max(1, min(cores, -(-rows // 200_000)))
    per_file = -(-rows // files)
    t = time.perf_counter()
    jobs = []
    first = 0
    for i in range(files):
        n = min(per_file, rows - first)
        if n > 0:
            jobs.append((os.path.join(data, f"part-{i:03d}.parquet"), n, i, first))
        first += n
    # spawn: this process may hold torch's and numba's thread pools, which fork copies badly
    with ProcessPoolExecutor(min(len(jobs), cores), mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_write_part, *zip(*jobs)))
    size = sum(os.path.getsize(p) for p in glob.glob(os.path.join(data, "*.parquet")))
    say(
        f"generated {rows:,} rows in {len(jobs)} files ({size / 2**30:.2f} GiB parquet) in {time.perf_counter() - t:.1f}s"
    )
    t = time.perf_counter()
    sample = os.path.join(workdir, "vocab-sample.parquet")
    pq.write_table(pq.read_table(jobs[0][0]).slice(0, VOCAB_SAMPLE_ROWS), sample)
    with dask.config.set(scheduler="threads"):
        vocab = Vocabulary.fit(sample, FIELDS, min_count=2)
    vocab.save(os.path.join(workdir, "vocab"))
    torch.manual_seed(0)
    model = build_model(vocab_sizes(vocab))  # untrained: its speed and its numerics are what is checked
    torch.jit.save(torch.jit.script(model), os.path.join(workdir, "model.pt"))
    say(f"fitted the mapping tables on {min(rows, VOCAB_SAMPLE_ROWS):,} rows and built the model in "
        f"{time.perf_counter() - t:.1f}s: {vocab}")  # fmt: skip
    job = {
        "input": os.path.join(data, "*.parquet"),
        "output": os.path.join(workdir, "scores"),
        "id_columns": ["user_id"],
        "vocab": os.path.join(workdir, "vocab"),
        "fields": [f.to_dict(compact=True) for f in FIELDS],
        "model": {"path": os.path.join(workdir, "model.pt")},
    }
    with open(job_path, "w") as f:
        json.dump(job, f)
    open(marker, "w").close()
    return job


def read_rows(job: dict, rows: int, columns=None):
    """The first ``rows`` rows of the job's input (whole files, then a slice)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables, n = [], 0
    for path in sorted(glob.glob(job["input"])):
        t = pq.read_table(path, columns=columns)
        tables.append(t)
        n += t.num_rows
        if n >= rows:
            break
    return pa.concat_tables(tables).slice(0, rows).combine_chunks()


# ---------------------------------------------------------------- 2. GPU against CPU
VARIANTS = {"fp32": {}, "tf32": {"tf32": True}, "bf16": {"precision": "bf16"}}


def diff_check(job: dict, devices: Devices, n: int, variants=("fp32", "tf32", "bf16")) -> dict:
    from dscore import pipeline, worker
    from dscore.encoding import encode_table
    from dscore.plan import plan_job
    from dscore.spec import JobSpec
    from dscore.verify import diff_table, format_table
    from dscore.vocab import Vocabulary

    spec = JobSpec.from_dict(job)
    plan = plan_job(spec)  # the client's planning: on the CPU
    table = read_rows(job, n, plan.task.columns)
    vocab = Vocabulary.load(spec.vocab, fields=spec.fields)
    out: dict = {"rows": table.num_rows}

    # The encoded arrays: identical, value for value, with identical counts.
    want, want_stats = encode_table(table, spec.fields, vocab)
    got, got_stats = encode_table(table, spec.fields, vocab, device=devices.encode)
    bad = {}
    for name, w in want.items():
        g = got[name] if isinstance(got[name], np.ndarray) else got[name].copy_to_host()
        bad[name] = int((g != w).any(axis=1).sum())
    out["encode_mismatched_rows"] = bad
    out["encode_stats_equal"] = got_stats == want_stats
    say(f"encoded on {devices.encode} vs cpu, {table.num_rows:,} rows: rows that differ per field {bad}; "
        f"stats equal: {got_stats == want_stats}")  # fmt: skip
    if any(bad.values()) or got_stats != want_stats:
        raise AssertionError("GPU encoding differs from CPU encoding")

    cpu_task = dataclasses.replace(plan.task.with_models(device="cpu"), encode_device="cpu")
    cpu = pipeline.score_table(table, cpu_task, worker.Runtime())
    reference, cpu_exec = cpu.table, cpu.execution
    names = [c for c in reference.column_names if c not in spec.id_columns]
    for variant in variants:
        task = dataclasses.replace(
            plan.task.with_models(device=devices.model, **VARIANTS[variant]), encode_device=devices.encode
        )
        rt = worker.Runtime()
        result = pipeline.score_table(table, task, rt)
        scored, execution = result.table, result.execution
        where = rt.model(task).device
        rt.close()
        same_ids = scored.column("user_id").equals(reference.column("user_id"))
        diff = np.stack([scored.column(c).to_numpy() - reference.column(c).to_numpy() for c in names], axis=1)
        tab = diff_table(diff, missing=0 if same_ids else table.num_rows)
        title = (
            f"{variant}: model on {where} ({execution['mode']}, batch {execution['batch_size']}), encode on "
            f"{devices.encode}  vs  model on cpu ({cpu_exec['mode']}), encode on cpu: |score difference|"
        )
        say(format_table(tab, title))
        out[variant] = {"table": tab, "model_device": str(where), "execution": execution}
    return out


# ---------------------------------------------------------------- 3. encode speed
def _median_time(fn, devices: Devices, repeat: int = 3):
    times, result = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        sync(devices)
        times.append(time.perf_counter() - t)
    return float(np.median(times)), result


def encode_speed(job: dict, devices: Devices, rows: int) -> dict:
    from dscore.demo import FIELDS
    from dscore.encoding import encode_table
    from dscore.vocab import Vocabulary

    table = read_rows(job, rows, [f.column for f in FIELDS])
    vocab = Vocabulary.load(job["vocab"], fields=FIELDS)
    apps = next(f for f in FIELDS if f.name == "apps")
    cases = {"apps (delimited, max_len 64)": [apps], "all four fields": list(FIELDS)}
    encoders = dict.fromkeys(["cpu", devices.encode])
    out: dict = {"rows": table.num_rows}
    say(f"{table.num_rows:,} rows; CPU kernels on {_numba_threads()} numba threads")
    say(f"{'fields':<32}{'device':<8}{'rows/s':>14}{'M tokens/s':>12}{'host->device MiB':>18}")
    for case, fields in cases.items():
        h2d = sum(table.column(f.column).nbytes for f in fields) / 2**20
        for dev in encoders:
            buffers: dict = {}
            sub = Devices("cpu", "cpu") if dev == "cpu" else devices
            # warm-up on all rows: kernels compiled, tables uploaded, buffers and pinned staging grown
            encode_table(table, fields, vocab, buffers=buffers, device=dev)
            sync(sub)
            secs, (_, stats) = _median_time(
                functools.partial(encode_table, table, fields, vocab, buffers=buffers, device=dev), sub
            )
            tokens = sum(s.tokens for s in stats.values())
            rate = table.num_rows / secs
            say(f"{case:<32}{dev:<8}{rate:>14,.0f}{tokens / secs / 1e6:>12.1f}"
                f"{h2d if dev != 'cpu' else 0:>18,.0f}")  # fmt: skip
            out[f"{case} | {dev}"] = {"rows_per_s": rate, "tokens_per_s": tokens / secs, "seconds": secs}
    return out


def _numba_threads() -> int:
    import numba

    return numba.get_num_threads()


# ---------------------------------------------------------------- 4. end to end and the ceiling
def _worker_devices():
    from dscore import worker

    rt = worker._RUNTIME
    if rt is None:
        return None
    return {"model": sorted({str(m.device) for m in rt.models.values()}), "gpu_encode": rt.gpu_encode,
            "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}  # fmt: skip


def _start_cluster(devices: Devices, threads: int):
    """``(cluster, description)``: what ``cluster: local-cuda`` starts, else a one-worker LocalCluster."""
    from distributed import LocalCluster

    from dscore.cluster import local_cuda_cluster

    def local(why):
        cluster = LocalCluster(n_workers=1, threads_per_worker=threads, processes=True, dashboard_address=":0")
        return cluster, f"LocalCluster (1 worker; {why})"

    if not devices.gpu:
        return local("--cpu")
    try:
        return local_cuda_cluster(threads_per_worker=threads), "LocalCUDACluster (cluster: local-cuda)"
    except Exception as e:  # noqa: BLE001 - still measure, on what can be started
        traceback.print_exc(file=sys.stdout)
        say(f"WARNING: no LocalCUDACluster ({type(e).__name__}: {e}); falling back to a LocalCluster of 1 worker")
        return local("LocalCUDACluster failed")


def end_to_end(job: dict, devices: Devices, threads: int) -> dict:
    from dscore import pipeline

    run_job = {**job, "encode_device": devices.encode, "threads_per_worker": threads,
               "model": {**job["model"], "device": devices.model}}  # fmt: skip
    from distributed import Client

    cluster, kind = _start_cluster(devices, threads)
    with cluster, Client(cluster) as client:
        t = time.perf_counter()
        report = pipeline.run(run_job, client=client, overwrite=True, progress=False)
        wall = time.perf_counter() - t
        workers = client.run(_worker_devices)
    say(report.format())
    say(f"cluster: {kind}, {threads} threads per worker; workers: {workers}")
    return {"rows_per_s": report.rows_scored / wall, "wall_s": wall, "cluster": kind, "workers": workers,
            "execution": report.model["execution"], "stages": report.stages, "rows": report.rows_scored}  # fmt: skip


def model_only(job: dict, devices: Devices, rows: int, execution: str | None, seconds: float) -> dict:
    """The forward pass alone on pre-encoded rows already on the model's device."""
    import torch

    from dscore.encoding import encode_table
    from dscore.model import Model, as_tensor
    from dscore.optimize import BUILDERS
    from dscore.spec import JobSpec
    from dscore.vocab import Vocabulary

    spec = JobSpec.from_dict({**job, "model": {**job["model"], "device": devices.model}})
    model = Model.load(spec.model, spec.fields)
    batch, mode = 8192, "none"
    if execution:  # what the workers chose, e.g. "batch 1024, freeze"
        size, mode = execution.split(", ")
        batch = int(size.split()[1])
    if mode in BUILDERS:
        runner, why = BUILDERS[mode](model)
        if runner is None:
            say(f"mode {mode} unavailable ({why}): plain")
            mode = "none"
        else:
            model.use(runner, mode, pad=(mode == "compile"))
    table = read_rows(job, rows, [f.column for f in spec.fields])
    arrays, _ = encode_table(table, spec.fields, Vocabulary.load(spec.vocab, fields=spec.fields), device=devices.encode)
    tensors = [as_tensor(arrays[f.name], model.device).to(model.device, torch.int64) for f in spec.fields]
    n = table.num_rows - table.num_rows % batch or table.num_rows
    step = min(batch, n)
    model._forward_tensors([t[:step] for t in tensors], step)  # warm-up (a compiled mode compiles here)
    sync(devices)
    done, start = 0, time.perf_counter()
    while True:
        for s in range(0, n - step + 1, step):
            model._forward_tensors([t[s : s + step] for t in tensors], step)
            done += step
        sync(devices)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            break
    rate = done / elapsed
    say(f"model-only ceiling: {rate:,.0f} rows/s (model on {model.device}, batch {step}, mode {mode}, "
        f"{table.num_rows:,} distinct rows, {done:,} rows in {elapsed:.1f}s)")  # fmt: skip
    return {"rows_per_s": rate, "batch": step, "mode": mode, "device": str(model.device)}


def release_gpu(devices: Devices) -> None:
    """Hand this process's GPU memory back before the cluster's workers need it."""
    if not devices.gpu:
        return
    from dscore import encoding_cuda as kc

    kc.clear()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000, help="rows scored end to end (default 10M)")
    ap.add_argument("--sample", type=int, default=100_000, help="rows of the GPU-vs-CPU diff table")
    ap.add_argument("--encode-rows", type=int, default=1_000_000, help="rows of the encode timing")
    ap.add_argument("--model-rows", type=int, default=1_000_000, help="distinct rows of the model-only ceiling")
    ap.add_argument("--seconds", type=float, default=3.0, help="timing of the model-only ceiling")
    ap.add_argument("--threads", type=int, default=4, help="Dask threads per GPU worker end to end")
    ap.add_argument("--workdir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "dscore-gpu-check"))
    ap.add_argument("--cpu", action="store_true", help="the CPU in place of the GPU everywhere (a dry run)")
    ap.add_argument("--steps", default="diff,encode,e2e", help="which of diff, encode, e2e to run")
    ap.add_argument("--versions", action="store_true", help="print the versions and stop")
    ap.add_argument("--no-versions", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="write every figure here too")
    args = ap.parse_args(argv)
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        # the simulator runs the uint64 hash on numpy scalars, which warn when they wrap
        # (the device wraps silently); workers inherit the filter through the environment
        os.environ["PYTHONWARNINGS"] = "ignore:overflow encountered:RuntimeWarning"
        import warnings

        warnings.filterwarnings("ignore", "overflow encountered", RuntimeWarning)

    run = Run()
    if not args.no_versions:
        with run.step("versions"):
            v = run.results["versions"] = versions()
            for k, val in v.items():
                say(f"  {k:<16}{val}")
    if args.versions:
        return 1 if run.failed else 0
    devices = choose_devices(args.cpu)
    run.results["devices"] = dataclasses.asdict(devices)
    steps = {s.strip() for s in args.steps.split(",") if s.strip()}
    job = None
    with run.step(f"data: {args.rows:,} rows"):
        job = prepare(args.workdir, args.rows)
    if job is not None:
        if "diff" in steps:
            with run.step(f"diff: GPU against CPU scores on {args.sample:,} rows"):
                run.results["diff"] = diff_check(job, devices, args.sample)
        if "encode" in steps:
            with run.step(f"encode: tokens/s on {args.encode_rows:,} rows"):
                run.results["encode"] = encode_speed(job, devices, args.encode_rows)
        if "e2e" in steps:
            release_gpu(devices)
            with run.step(f"end to end: {args.rows:,} rows"):
                run.results["end_to_end"] = end_to_end(job, devices, args.threads)
            with run.step("model-only ceiling"):
                execution = (run.results.get("end_to_end") or {}).get("execution") or [None]
                run.results["model_only"] = model_only(job, devices, args.model_rows, execution[0], args.seconds)
            e2e, ceiling = run.results.get("end_to_end"), run.results.get("model_only")
            if e2e and ceiling:
                say(f"\nend to end {e2e['rows_per_s']:,.0f} rows/s on {e2e['cluster']}; model-only ceiling "
                    f"{ceiling['rows_per_s']:,.0f} rows/s; ratio {e2e['rows_per_s'] / ceiling['rows_per_s']:.2f}")  # fmt: skip
    run.results["failed"] = run.failed
    if args.json:
        with open(args.json, "w") as f:
            json.dump(run.results, f, indent=1, default=str)
    say(f"\ngpu_check: {'FAILED: ' + ', '.join(run.failed) if run.failed else 'all steps passed'}")
    return 1 if run.failed else 0


if __name__ == "__main__":
    sys.exit(main())
