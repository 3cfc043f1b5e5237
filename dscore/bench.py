"""Benchmarks on the demo data: dscore end to end beside its ceilings and baselines.

Every figure comes from the same invocation on the same machine: rows/s of

* dscore end to end (``dscore.run`` on a LocalCluster), with the workers' peak RSS;
* (a) the model-only ceiling: the model's forward pass alone on pre-encoded rows,
  in every worker at once (the same processes and threads as the job), beside the
  same threads running it in one plain process (this one): a model slower inside
  Dask's nanny-started workers than outside shows here;
* (b) the read-only ceiling: reading the needed columns of every partition;
* (c) plain Dask: ``dd.read_parquet`` + ``map_partitions`` with pandas tokenization
  and a per-worker cached model, written with ``to_parquet``;
* (d) a single-process pandas + torch loop.

The serial ceiling ``1 / (1/read + 1/model)`` is what a pipeline that overlaps
nothing could reach; dscore's ratio to it says what encoding, scheduling and
writing cost.

``models`` (``dscore bench --models``) runs the models of ``dscore.zoo``, each as
TorchScript and as an eager factory, on data shaped like a user's job: each model
alone in one process and in the workers, end to end, and against the serial
ceiling ``1 / (1/read + 1/encode + 1/model)``.

``multi_model`` (``dscore bench --multi-model``) runs two ``dscore.zoo`` models in one
job (``models:``) against a job for each, on the same data in the same run.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import platform
import shutil
import threading
import time
from dataclasses import dataclass

import numpy as np


@dataclass
class Layout:
    workers: int
    threads: int
    torch_threads: int

    def __str__(self) -> str:
        return f"{self.workers}x{self.threads}x{self.torch_threads}"

    @classmethod
    def parse(cls, text: str) -> Layout:
        """``"2x1x1"`` (workers x threads x torch threads)."""
        return cls(*(int(x) for x in text.split("x")))

    @property
    def cores(self) -> int:
        """Cores the layout keeps busy: a torch thread per core for each Dask thread."""
        return self.workers * self.threads * self.torch_threads


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}"


def _log(message: str) -> None:
    print("bench:", message, flush=True)


def _cached(workdir: str, rows: int, build) -> str:
    """``build(workdir)`` unless ``workdir`` already holds its output for ``rows`` rows;
    returns the job file."""
    marker = os.path.join(workdir, f".rows-{rows}")
    if not os.path.exists(marker):
        shutil.rmtree(workdir, ignore_errors=True)
        build(workdir)
        open(marker, "w").close()
    return os.path.join(workdir, "job.yaml")


def prepare(workdir: str, rows: int) -> str:
    """Demo data of ``rows`` rows, its vocabulary and a trained model in ``workdir``
    (reused when already there); returns the job file."""
    from .demo import build_example

    return _cached(workdir, rows, lambda w: build_example(w, rows, log=_log))


def _cluster(layout: Layout):
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=layout.workers, threads_per_worker=layout.threads, processes=True, dashboard_address=":0"
    )
    return cluster, Client(cluster)


def run_dscore(job, layout: Layout, **overrides) -> dict:
    """``dscore.run`` on a fresh LocalCluster of ``layout`` (``job``: a job file or its
    mapping); rows/s over the job's wall time."""
    from . import pipeline
    from .worker import peak_rss

    names = job["models"] if isinstance(job, dict) and job.get("models") else None
    threads = {f"models.{n}.threads" for n in names} if names else {"model.threads"}
    cluster, client = _cluster(layout)
    try:
        t = time.perf_counter()
        report = pipeline.run(
            job, client=client, overwrite=True, progress=False,
            **{**dict.fromkeys(threads, layout.torch_threads), **overrides},
        )  # fmt: skip
        wall = time.perf_counter() - t
        peak = sum(client.run(peak_rss).values())
    finally:
        client.close()
        cluster.close()
    return {"rows_per_s": report.rows_scored / wall, "wall": wall, "peak_rss": peak, "report": report}


def _read_piece(piece, columns, storage_options):
    from . import io

    fs, _ = io.url_to_fs(piece.url, storage_options)
    return io.read_piece(fs, piece, columns).num_rows


def _pieces(job: str) -> tuple:
    """The job's input pieces, as ``dscore.run`` plans them, and a task spec without fingerprints."""
    from . import io
    from .plan import plan_pieces, warm_task
    from .spec import JobSpec

    spec = JobSpec.load(job)
    fs, files = io.expand(list(spec.input))
    return plan_pieces(spec, fs, files), warm_task(spec)


def run_read_only(job: str, layout: Layout) -> dict:
    """Reading the needed columns of every partition, on the same layout."""
    pieces, task = _pieces(job)
    cluster, client = _cluster(layout)
    try:
        t = time.perf_counter()
        rows = sum(client.gather(client.map(_read_piece, pieces, columns=task.columns, storage_options={}, pure=False)))
        wall = time.perf_counter() - t
    finally:
        client.close()
        cluster.close()
    return {"rows_per_s": rows / wall}


def _encode_piece(piece, task) -> tuple:
    """``(rows, seconds)`` of encoding one partition as a worker does (its mapping
    tables and reused buffers), after an untimed one-row warm-up that loads the
    kernels."""
    from . import io
    from .encoding import encode_forms
    from .worker import runtime

    rt = runtime()
    fs, _ = io.url_to_fs(piece.url, task.storage_options)
    table = io.read_piece(fs, piece, task.columns)
    vocab = rt.vocab(task)
    encode_forms(table.slice(0, 1), task.forms, vocab)
    t = time.perf_counter()
    encode_forms(table, task.forms, vocab, buffers=rt.buffers)
    return table.num_rows, time.perf_counter() - t


def run_encode_only(job: str, layout: Layout) -> dict:
    """Encoding every partition, already read, on the same layout: rows over the
    encode time of all worker threads together."""
    from .cluster import register

    pieces, task = _pieces(job)
    cluster, client = _cluster(layout)
    try:
        register(client, layout.torch_threads)
        done = client.gather(client.map(_encode_piece, pieces, task=task, pure=False))
    finally:
        client.close()
        cluster.close()
    rows, seconds = (sum(x) for x in zip(*done))
    return {"rows_per_s": rows / (seconds / (layout.workers * layout.threads))}


def serial_ceiling(*rates: float) -> float:
    """rows/s of stages that run one after the other on the same threads."""
    return 1 / sum(1 / r for r in rates)


# ---------------------------------------------------------------- model only, by mode and batch size
def _variants(job: str) -> dict:
    """The demo model as trained (TorchScript), as eager code plus its state_dict, and
    exported to ONNX (``export_onnx``), as job keys over ``job``'s."""
    workdir = os.path.dirname(job)
    with open(os.path.join(workdir, "model.json")) as f:
        kwargs = json.load(f)
    return {
        "torchscript": {},
        "eager": {"model.path": os.path.join(workdir, "state.pt"), "model.factory": "dscore.demo:build_model",
                  "model.factory_kwargs": kwargs},
        "onnx": {"model.path": os.path.join(workdir, "model.onnx")},
    }  # fmt: skip


def _reference(variant: str) -> str:
    """A variant's reference: the TorchScript form of the same model."""
    return "torchscript" if variant == "onnx" else variant.replace("eager", "torchscript")


def export_onnx(job: str) -> str | None:
    """The demo model of ``job``'s directory as ``model.onnx`` beside it (exported
    once, from its eager form); None, with the reason logged, where the ONNX
    packages (``dscore[onnx]``) are missing or the export fails."""
    path = os.path.join(os.path.dirname(job), "model.onnx")
    if os.path.exists(path):
        return path
    try:
        import onnxruntime  # noqa: F401 - without it there is nothing to run the export in
        import torch

        from .model import load_module
        from .onnx_model import export
        from .spec import JobSpec

        spec = JobSpec.load(job, _variants(job)["eager"])
        module = load_module(spec.model, "cpu")
        with torch.no_grad():
            export(module, path + ".tmp", spec.fields)
        os.replace(path + ".tmp", path)
        return path
    except Exception as e:  # noqa: BLE001 - the benchmark goes on without ONNX Runtime
        _log(f"no ONNX Runtime figures: {type(e).__name__}: {e}")
        return None


def _first_rows(spec, rows: int):
    """The first ``rows`` rows of the job's input, across as many files as that takes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables, n = [], 0
    for path in sorted(glob.glob(spec.input[0])):
        tables.append(pq.read_table(path, columns=[f.column for f in spec.fields]))
        n += tables[-1].num_rows
        if n >= rows:
            break
    return pa.concat_tables(tables).slice(0, rows)


def _modes_in_process(job: str, plan: list, rows: int, seconds: float, torch_threads: int, variants=None) -> list:
    """For each ``(variant, mode, batch)``: rows/s of the forward pass alone on ``rows``
    pre-encoded rows, and the max |diff| against the variant's reference (``_reference``)
    at batch 8192. ``variants`` maps a name to job keys (default: ``_variants(job)``)."""
    from . import optimize
    from .encoding import encode_table
    from .model import Model, ModelError, set_threads
    from .spec import JobSpec
    from .vocab import Vocabulary
    from .worker import malloc_tuned

    set_threads(torch_threads)
    variants = variants if variants is not None else _variants(job)
    spec = JobSpec.load(job)
    table, vocab = _first_rows(spec, rows), Vocabulary.load(spec.vocab, fields=spec.fields)
    models = {v: JobSpec.load(job, keys).model for v, keys in variants.items()}
    kinds = {m.inputs for m in models.values()}  # model.inputs: the encodings the models take
    encoded = {inputs: encode_table(table, spec.fields, vocab, inputs=inputs)[0] for inputs in sorted(kinds)}
    references: dict = {}
    here = {"pid": os.getpid(), "malloc_tuned": malloc_tuned()}
    out = []
    for variant, mode, batch in plan:
        ref = _reference(variant)
        if ref not in references:
            references[ref] = Model.load(models[ref], spec.fields, device="cpu").predict(
                encoded[models[ref].inputs], 8192
            )
        entry = {"variant": variant, "mode": mode, "batch": batch, **here}
        arrays = encoded[models[variant].inputs]  # model.inputs: padded or jagged
        try:
            model = Model.load(models[variant], spec.fields, device="cpu")
        except ModelError as e:  # an ONNX model without ONNX Runtime installed, say
            out.append({**entry, "error": str(e)})
            continue
        model.batch_size = batch
        t = time.perf_counter()
        if mode != "none":
            runner, why = optimize.BUILDERS[mode](model)
            if runner is None:
                out.append({**entry, "error": why})
                continue
            model.use(runner, mode, pad=(mode == "compile"))
        got = model.predict(arrays, batch)  # a compiled model compiles here
        entry["setup_s"] = time.perf_counter() - t
        entry["rows_per_s"] = optimize.rows_per_second(model, arrays, batch, seconds)
        entry["max_diff"] = float(np.abs(got.astype(np.float64) - references[ref]).max())
        out.append(entry)
    return out


@contextlib.contextmanager
def _threads_restored():
    """Put back this process's torch threads and ``DSCORE_TORCH_THREADS`` (which
    ``set_threads`` sets, and clusters started from here would inherit)."""
    import torch

    threads, env = torch.get_num_threads(), os.environ.get("DSCORE_TORCH_THREADS")
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if env is None:
            os.environ.pop("DSCORE_TORCH_THREADS", None)
        else:
            os.environ["DSCORE_TORCH_THREADS"] = env


MODEL_ONLY_ROWS = 131_072  # per worker thread: enough distinct tokens that embeddings are as cold as in a job


def run_model_modes(job: str, layout: Layout, plan: list, seconds: float = 3.0, *, variants=None,
                    in_process: bool = False) -> list:  # fmt: skip
    """``_modes_in_process`` in every worker thread at once; rows/s summed over them.

    Each thread runs over ``MODEL_ONLY_ROWS`` rows: a few thousand rows repeated
    would keep their embedding rows in cache and flatter the ceiling.

    ``in_process``: the same number of threads run in this process instead, a plain
    process that no nanny started, so the two figures differ only in where the model
    runs (Python threads of one process: the GIL is shared, which eager models with
    small batches can feel). Each entry lists the ``pids`` it ran in.
    """
    skipped = []
    if variants is None and any(v == "onnx" for v, _, _ in plan) and export_onnx(job) is None:
        skipped = [p for p in plan if p[0] == "onnx"]
        plan = [p for p in plan if p[0] != "onnx"]
    args = (job, plan, MODEL_ONLY_ROWS, seconds, layout.torch_threads, variants)
    if in_process:
        from concurrent.futures import ThreadPoolExecutor

        with _threads_restored(), ThreadPoolExecutor(layout.workers * layout.threads) as pool:
            per_thread = list(pool.map(lambda _: _modes_in_process(*args), range(layout.workers * layout.threads)))
    else:
        from .cluster import register

        cluster, client = _cluster(layout)
        try:
            # As dscore.run sets its workers up (threads, and whatever else the plugin
            # does to a worker process), so that this is the rate its workers can reach.
            register(client, layout.torch_threads)
            workers = list(client.scheduler_info(n_workers=-1)["workers"])
            futures = [
                client.submit(_modes_in_process, *args, workers=[w], pure=False)
                for w in workers
                for _ in range(layout.threads)
            ]
            per_thread = client.gather(futures)
        finally:
            client.close()
            cluster.close()
    rows = []
    for i, item in enumerate(per_thread[0]):
        entry = {k: v for k, v in item.items() if k != "pid"}
        entry["pids"] = sorted({t[i]["pid"] for t in per_thread})
        if "rows_per_s" in entry:
            entry["rows_per_s"] = sum(t[i]["rows_per_s"] for t in per_thread)
            entry["max_diff"] = max(t[i]["max_diff"] for t in per_thread)
        rows.append(entry)
    why = "ONNX Runtime or the ONNX export is not available (pip install 'dscore[onnx]')"
    return rows + [{"variant": v, "mode": m, "batch": b, "error": why} for v, m, b in skipped]


def run_model_only(job: str, layout: Layout, batch_size: int = 8192, mode: str = "none", seconds: float = 5.0,
                   in_process: bool = False) -> dict:  # fmt: skip
    """The forward pass alone, on pre-encoded rows, in every worker at once (or in
    as many threads of this process)."""
    variant = "eager" if mode == "compile" else "torchscript"
    return run_model_modes(job, layout, [(variant, mode, batch_size)], seconds, in_process=in_process)[0]


def mode_plan(batches=(256, 512, 1024, 2048, 4096, 8192, 16384), compile_batches=(1024, 8192, 16384),
              onnx_batches=(1024, 8192, 16384)) -> list:  # fmt: skip
    """``(variant, mode, batch)`` rows of ``dscore bench --model-only``; ``onnx`` is
    ONNX Runtime on the same model (exported by ``run_model_modes`` when missing)."""
    plan = [("torchscript", "none", b) for b in batches]
    plan += [("torchscript", "freeze", b) for b in batches]
    plan += [("eager", "none", b) for b in compile_batches]
    plan += [("eager", "compile", b) for b in compile_batches]
    plan += [("onnx", "none", b) for b in onnx_batches]
    return plan


def format_modes(rows: list) -> str:
    base = next(r["rows_per_s"] for r in rows if (r["variant"], r["mode"], r["batch"]) == ("torchscript", "none", 8192))
    lines = [
        f"{'model':<12}{'mode':<8}{'batch':>7}{'rows/s':>11}{'vs TorchScript 8192':>21}{'max |diff|':>12}{'setup s':>9}"
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['variant']:<12}{r['mode']:<8}{r['batch']:>7}  n/a: {r['error']}")
            continue
        lines.append(
            f"{r['variant']:<12}{r['mode']:<8}{r['batch']:>7}{r['rows_per_s']:>11,.0f}{r['rows_per_s'] / base:>20.2f}x"
            f"{r['max_diff']:>12.1e}{r['setup_s']:>9.1f}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- baselines
_CACHE: dict = {}
_LOCK = threading.Lock()


def _pandas_encode(series, field, mapping: dict) -> np.ndarray:
    """The usual pandas way: split, explode, strip/lower, map, then scatter into a matrix."""
    import pandas as pd

    s = series.astype(object)
    if field.kind == "delimited":
        s = s.str.split(field.sep)
    elif field.kind == "scalar":
        s = s.map(lambda x: None if x is None or x is pd.NA else [x])
    tokens = s.explode()
    tokens = tokens.dropna().astype(str).str.strip().str.lower()
    tokens = tokens[tokens != ""]
    idx = tokens.map(mapping).fillna(1).astype(np.int32)
    pos = idx.groupby(level=0).cumcount().to_numpy()
    keep = pos < field.max_len
    out = np.zeros((len(series), field.max_len), dtype=np.int32)
    rows = pd.Index(series.index).get_indexer(idx.index[keep])
    out[rows, pos[keep]] = idx.to_numpy()[keep]
    return out


def _plain_partition(df, job: str, batch_size: int):
    import pandas as pd
    import torch

    from .spec import JobSpec

    with _LOCK:  # per-worker cached model and mapping dicts, loaded once per process
        if "maps" not in _CACHE:
            import pyarrow.parquet as pq

            spec = JobSpec.load(job)
            maps = {
                f.name: dict(zip(*(pq.read_table(os.path.join(spec.vocab, f"{f.name}.parquet")).column(c).to_pylist()
                                   for c in ("token", "index"))))
                for f in spec.fields
            }  # fmt: skip
            _CACHE.update(spec=spec, model=torch.jit.load(spec.model.path), maps=maps)
    spec, model, maps = _CACHE["spec"], _CACHE["model"], _CACHE["maps"]
    df = df.reset_index(drop=True)
    x = [torch.from_numpy(_pandas_encode(df[f.column], f, maps[f.name])).long() for f in spec.fields]
    scores = []
    with torch.inference_mode():
        for i in range(0, len(df), batch_size):
            scores.append(model(*(t[i : i + batch_size] for t in x)).numpy())
    return pd.DataFrame({"user_id": df["user_id"], "score": np.concatenate(scores) if scores else []})


def run_plain_dask(job: str, layout: Layout, batch_size: int = 8192) -> dict:
    import dask.dataframe as dd
    import pandas as pd

    from .spec import JobSpec

    spec = JobSpec.load(job)
    out = os.path.join(os.path.dirname(job), "scores-plain-dask")
    shutil.rmtree(out, ignore_errors=True)
    cluster, client = _cluster(layout)
    try:
        client.run(_set_torch_threads, layout.torch_threads)
        columns = ["user_id", *(f.column for f in spec.fields)]
        ddf = dd.read_parquet(spec.input[0], columns=columns, split_row_groups=True)
        meta = pd.DataFrame({"user_id": pd.Series([], dtype="int64"), "score": pd.Series([], dtype="float32")})
        t = time.perf_counter()
        ddf.map_partitions(_plain_partition, job, batch_size, meta=meta).to_parquet(out, write_index=False)
        wall = time.perf_counter() - t
        rows = len(dd.read_parquet(out))
    finally:
        client.close()
        cluster.close()
    return {"rows_per_s": rows / wall}


def _set_torch_threads(n):
    import torch

    torch.set_num_threads(n)


def run_single_process(job: str, batch_size: int = 8192, max_rows: int | None = 200_000) -> dict:
    """One process, pandas + torch, partition by partition."""
    import pyarrow.parquet as pq

    from .spec import JobSpec

    spec = JobSpec.load(job)
    _CACHE.clear()
    rows, t = 0, time.perf_counter()
    for path in sorted(glob.glob(spec.input[0])):
        pf = pq.ParquetFile(path)
        for rg in range(pf.num_row_groups):
            df = pf.read_row_group(rg, columns=["user_id", *(f.column for f in spec.fields)]).to_pandas()
            rows += len(_plain_partition(df, job, batch_size))
            if max_rows and rows >= max_rows:
                return {"rows_per_s": rows / (time.perf_counter() - t), "rows": rows}
    return {"rows_per_s": rows / (time.perf_counter() - t), "rows": rows}


def end_to_end(workdir: str, rows: int, layout: Layout, baselines: bool = True, **overrides) -> dict:
    """dscore end to end beside the ceilings and baselines, all from this run.

    The model-only ceiling uses the batch size and mode dscore's workers chose (its
    fastest exact execution); the baselines use the batch size that is fastest for
    plain TorchScript.
    """
    job = prepare(workdir, rows)
    res = {"machine": machine(), "rows": rows, "layout": str(layout)}
    # Before dscore.optimize: TorchScript as given, batch 8192, no execution mode.
    res["dscore_plain"] = run_dscore(job, layout, **{"model.batch_size": 8192, "model.optimize": "none", **overrides})
    res["dscore"] = run_dscore(job, layout, **overrides)
    execution = res["dscore"]["report"].model["execution"][0]  # e.g. "batch 1024, freeze"
    size, mode = execution.split(", ")
    res["execution"] = execution
    res["model_only"] = run_model_only(job, layout, int(size.split()[1]), mode)
    res["model_in_process"] = run_model_only(job, layout, int(size.split()[1]), mode, in_process=True)
    res["read_only"] = run_read_only(job, layout)
    if baselines:
        plain = run_model_modes(job, layout, [("torchscript", "none", b) for b in (512, 1024, 2048, 4096, 8192)], 2.0)
        res["baseline_batch"] = max(plain, key=lambda r: r["rows_per_s"])["batch"]
        res["plain_dask"] = run_plain_dask(job, layout, res["baseline_batch"])
        res["single_process"] = run_single_process(job, res["baseline_batch"])
    res["serial_ceiling"] = serial_ceiling(res["read_only"]["rows_per_s"], res["model_only"]["rows_per_s"])
    return res


def format_end_to_end(res: dict) -> str:
    d = res["dscore"]["rows_per_s"]
    lines = [
        f"machine: {res['machine']}",
        f"rows: {res['rows']:,}; layout (workers x threads x torch threads): {res['layout']}; "
        f"dscore's workers chose {res['execution']}",
        f"{'':<60}{'rows/s':>11}{'dscore / it':>13}",
        f"{'dscore end to end':<60}{d:>11,.0f}",
    ]
    rows = [
        (f"(a) model-only ceiling ({res['execution']}), in the workers", res["model_only"]["rows_per_s"]),
        ("    the same threads in one plain process", res["model_in_process"]["rows_per_s"]),
        ("(b) read-only ceiling (parquet, needed columns)", res["read_only"]["rows_per_s"]),
        ("serial ceiling 1/(1/read + 1/model)", res["serial_ceiling"]),
    ]
    if "plain_dask" in res:
        b = res["baseline_batch"]
        rows.append((f"(c) plain Dask map_partitions + pandas (batch {b})", res["plain_dask"]["rows_per_s"]))
        rows.append((f"(d) single process pandas + torch (batch {b})", res["single_process"]["rows_per_s"]))
    for name, v in rows:
        lines.append(f"{name:<60}{v:>11,.0f}{d / v:>12.2f}x")
    cores = Layout.parse(res["layout"]).cores
    alone, workers = res["model_in_process"]["rows_per_s"], res["model_only"]["rows_per_s"]
    lines.append(
        f"model alone ({res['execution']}), rows/s per core: {alone / cores:,.0f} in one plain process, "
        f"{workers / cores:,.0f} in the workers (workers / process {workers / alone:.2f}x)"
    )
    lines.append(f"dscore workers' peak RSS: {res['dscore']['peak_rss'] / 2**20:,.0f} MiB")
    lines.append("task time per stage, seconds summed over workers (share):")
    for name, run in (
        ("before: batch 8192, optimize none", res["dscore_plain"]),
        (f"after: {res['execution']}", res["dscore"]),
    ):
        report = run["report"] if isinstance(run["report"], dict) else run["report"].to_dict()
        stages = report["stages"]
        total = sum(stages.values()) or 1
        lines.append(
            f"  {name:<38}{run['rows_per_s']:>9,.0f} rows/s  "
            + ", ".join(f"{k} {v:.1f} ({v / total:.0%})" for k, v in stages.items())
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- models users bring (dscore.zoo)
# Shaped like a user's job: 24 files, ~40 apps a row from 200k package names of
# ~19 bytes, 5k device models, 20k campaigns, 50 device names; mapping tables of
# every token.
ZOO_FILES = 24
ZOO_SIZES = {"campaigns": 20_000, "devices": 50, "app_words": 3}
MODEL_BATCHES = (256, 512, 1024, 2048, 4096, 8192)


def _build_zoo(workdir: str, rows: int) -> None:
    import yaml

    from . import zoo
    from .demo import full_vocabulary, generate, job_dict, vocab_sizes

    t = time.perf_counter()
    generate(os.path.join(workdir, "data"), rows, files=ZOO_FILES, **ZOO_SIZES)
    vocab = full_vocabulary(**ZOO_SIZES)
    vocab.save(os.path.join(workdir, "vocab"))
    models = zoo.export(os.path.join(workdir, "models"), vocab_sizes(vocab))
    with open(os.path.join(workdir, "models.json"), "w") as f:
        json.dump(models, f, indent=1)
    with open(os.path.join(workdir, "job.yaml"), "w") as f:
        yaml.safe_dump(job_dict(workdir, models["masked_mean"]["torchscript"]["path"]), f, sort_keys=False)
    _log(f"{rows:,} rows in {ZOO_FILES} files, {vocab}, {len(models)} models in {time.perf_counter() - t:.1f}s")


def prepare_models(workdir: str, rows: int) -> tuple[str, dict]:
    """Data, mapping tables and the ``dscore.zoo`` models in ``workdir`` (reused when
    already there); returns the job file and the variants: ``"<model> <form>"`` to the
    job keys that load it (forms: ``torchscript``, ``eager``)."""
    job = _cached(workdir, rows, lambda w: _build_zoo(w, rows))
    with open(os.path.join(workdir, "models.json")) as f:
        models = json.load(f)
    return job, {
        f"{name} {form}": {f"model.{k}": v for k, v in keys.items()}
        for name, forms in models.items()
        for form, keys in forms.items()
    }


def models(workdir: str, rows: int, layout: Layout, seconds: float = 1.0, names=(), baselines: bool = True) -> dict:
    """Each ``dscore.zoo`` model in each form (or those of ``names``), all in this run:
    the model alone at its fastest batch and mode (searched over ``MODEL_BATCHES`` in
    one plain process, the layout's threads at once), the same in one plain process
    and in the workers, dscore end to end (its defaults), and the serial ceiling
    ``1/(1/read + 1/encode + 1/model in the workers)``. With ``baselines``, the
    masked-mean TorchScript model also runs as plain Dask + pandas (``run_plain_dask``).

    ``seconds`` per search candidate; the two model-alone figures run three times as long.
    """
    job, variants = prepare_models(workdir, rows)
    if names:
        variants = {v: keys for v, keys in variants.items() if v.split()[0] in names}
        if not variants:
            raise ValueError(f"--only {','.join(names)}: no such dscore.zoo model")
    res = {"machine": machine(), "rows": rows, "files": ZOO_FILES, "layout": str(layout)}
    res["read_only"] = run_read_only(job, layout)
    res["encode_only"] = run_encode_only(job, layout)
    plan = [
        (v, mode, b)
        for v in variants
        for mode in (("none", "freeze") if v.endswith("torchscript") else ("none",))
        for b in MODEL_BATCHES
    ]
    res["search"] = run_model_modes(job, layout, plan, seconds, variants=variants, in_process=True)
    best: dict = {}
    for r in res["search"]:
        if r.get("rows_per_s", 0) > best.get(r["variant"], {}).get("rows_per_s", 0):
            best[r["variant"]] = r
    alone = [(v, best[v]["mode"], best[v]["batch"]) for v in variants]
    in_process = run_model_modes(job, layout, alone, 3 * seconds, variants=variants, in_process=True)
    in_workers = run_model_modes(job, layout, alone, 3 * seconds, variants=variants)
    res["models"] = []
    for (variant, mode, batch), here, there in zip(alone, in_process, in_workers):
        run = run_dscore(job, layout, **variants[variant])
        report = run["report"].to_dict()
        res["models"].append({
            "variant": variant,
            "fastest": f"batch {batch}, {mode}",
            "in_process": here,
            "in_workers": there,
            "dscore": {"rows_per_s": run["rows_per_s"], "peak_rss": run["peak_rss"], "report": report},
            "execution": "; ".join(dict.fromkeys(report["model"]["execution"])),
            "serial_ceiling": serial_ceiling(
                res["read_only"]["rows_per_s"], res["encode_only"]["rows_per_s"], there["rows_per_s"]
            ),
        })  # fmt: skip
    if baselines and "masked_mean torchscript" in variants:  # the job file's own model
        res["plain_dask"] = run_plain_dask(job, layout, best["masked_mean torchscript"]["batch"])
    return res


def format_models(res: dict) -> str:
    cores = Layout.parse(res["layout"]).cores
    tuned = next((m["in_workers"]["malloc_tuned"] for m in res["models"]), False)
    lines = [
        f"machine: {res['machine']}",
        f"rows: {res['rows']:,} in {res['files']} files; layout (workers x threads x torch threads): "
        f"{res['layout']}, {cores} cores",
        f"read-only ceiling {res['read_only']['rows_per_s']:,.0f} rows/s, encode-only ceiling "
        f"{res['encode_only']['rows_per_s']:,.0f} rows/s",
        f"model alone: {MODEL_ONLY_ROWS:,} pre-encoded rows per thread, at the batch and mode fastest in one plain "
        f"process; dscore's malloc thresholds in the workers: {'set' if tuned else 'NOT set'}",
        "serial ceiling: 1/(1/read + 1/encode + 1/model in the workers)",
        f"{'':<44}{'model alone, rows/s per core':>28}{'':<12}{'end to end, rows/s':>28}",
        f"{'model, form':<26}{'fastest':<18}{'process':>10}{'workers':>10}{'w / p':>8}{'max |diff|':>12}"
        f"{'dscore':>10}{'ceiling':>10}{'d / c':>8}{'':<2}{'dscore chose'}",
    ]
    for m in res["models"]:
        p, w = m["in_process"]["rows_per_s"], m["in_workers"]["rows_per_s"]
        d = m["dscore"]["rows_per_s"]
        lines.append(
            f"{m['variant']:<26}{m['fastest']:<18}{p / cores:>10,.0f}{w / cores:>10,.0f}{w / p:>7.2f}x"
            f"{m['in_process']['max_diff']:>12.1e}{d:>10,.0f}{m['serial_ceiling']:>10,.0f}"
            f"{d / m['serial_ceiling']:>7.2f}x  {m['execution']}"
        )
    if "plain_dask" in res:
        d = next(m["dscore"]["rows_per_s"] for m in res["models"] if m["variant"] == "masked_mean torchscript")
        p = res["plain_dask"]["rows_per_s"]
        lines.append(
            f"plain Dask map_partitions + pandas, masked_mean torchscript: {p:,.0f} rows/s; dscore {d / p:.2f}x it"
        )
    return "\n".join(lines)


MULTI_MODELS = ("masked_mean", "two_output")


def multi_model(workdir: str, rows: int, layout: Layout, names=MULTI_MODELS) -> dict:
    """Several models in one job (``models:``) against one job per model, in this run,
    on the same data (the ``dscore.zoo`` data of ``--models``; the models as
    TorchScript): rows/s of the job with every model, of each job alone, of the
    separate jobs one after the other (rows over the sum of their wall times), and
    the ratio of the first to the last. The read-only ceiling runs first, so that
    every job finds the input in the page cache."""
    import yaml

    job, variants = prepare_models(workdir, rows)
    missing = [n for n in names if f"{n} torchscript" not in variants]
    if missing or len(names) < 2:
        raise ValueError(f"--only {','.join(names)}: name two or more dscore.zoo models")
    with open(job) as f:
        base = yaml.safe_load(f)
    del base["model"]
    specs = {n: {k.split(".", 1)[1]: v for k, v in variants[f"{n} torchscript"].items()} for n in names}
    res = {"machine": machine(), "rows": rows, "files": ZOO_FILES, "layout": str(layout), "models": list(names)}
    res["read_only"] = run_read_only(job, layout)
    out = base["output"].rstrip("/")
    run = run_dscore({**base, "output": f"{out}-multi", "models": specs}, layout)
    report = run["report"]
    res["together"] = {
        "rows_per_s": run["rows_per_s"], "wall": run["wall"], "peak_rss": run["peak_rss"],
        "execution": {n: "; ".join(report.models[n]["execution"]) for n in names},
    }  # fmt: skip
    res["separate"] = []
    for n in names:
        run = run_dscore({**base, "output": f"{out}-{n}", "model": specs[n]}, layout)
        res["separate"].append({
            "model": n, "rows_per_s": run["rows_per_s"], "wall": run["wall"], "peak_rss": run["peak_rss"],
            "execution": "; ".join(run["report"].model["execution"]),
        })  # fmt: skip
    rows_scored = report.rows_scored
    res["separate_total"] = {"rows_per_s": rows_scored / sum(r["wall"] for r in res["separate"])}
    res["ratio"] = res["together"]["rows_per_s"] / res["separate_total"]["rows_per_s"]
    return res


def format_multi_model(res: dict) -> str:
    t = res["together"]
    lines = [
        f"machine: {res['machine']}",
        f"rows: {res['rows']:,} in {res['files']} files; layout (workers x threads x torch threads): {res['layout']}; "
        f"read-only ceiling {res['read_only']['rows_per_s']:,.0f} rows/s",
        f"{'job':<40}{'rows/s':>10}{'wall s':>9}{'peak RSS MiB':>14}  workers chose",
        f"{'one job, models: ' + ', '.join(res['models']):<40}{t['rows_per_s']:>10,.0f}{t['wall']:>9.1f}"
        f"{t['peak_rss'] / 2**20:>14,.0f}  " + "; ".join(f"{n}: {e}" for n, e in t["execution"].items()),
    ]
    for r in res["separate"]:
        lines.append(
            f"{'  alone: ' + r['model']:<40}{r['rows_per_s']:>10,.0f}{r['wall']:>9.1f}{r['peak_rss'] / 2**20:>14,.0f}"
            f"  {r['execution']}"
        )
    lines.append(
        f"{'separate jobs, one after the other':<40}{res['separate_total']['rows_per_s']:>10,.0f}"
        f"{sum(r['wall'] for r in res['separate']):>9.1f}"
    )
    lines.append(f"one job with {len(res['models'])} models: {res['ratio']:.2f}x the separate jobs")
    return "\n".join(lines)


def sweep(workdir: str, rows: int, layouts, batches=(), **overrides) -> list:
    """dscore end to end for each layout, then for each fixed batch size on the first layout."""
    job = prepare(workdir, rows)
    runs = [(layout, {}) for layout in layouts] + [(layouts[0], {"model.batch_size": b}) for b in batches]
    out = []
    for layout, extra in runs:
        r = run_dscore(job, layout, **overrides, **extra)
        out.append({
            "layout": str(layout),
            "batch": extra.get("model.batch_size", "auto"),
            "rows_per_s": r["rows_per_s"],
            "peak_rss": r["peak_rss"],
            "execution": r["report"].model["execution"],
        })  # fmt: skip
    return out


def format_sweep(rows: list) -> str:
    best = max(rows, key=lambda r: r["rows_per_s"])
    lines = [f"{'layout':<10}{'batch':>7}{'rows/s':>11}{'peak RSS MiB':>14}  workers chose"]
    for r in rows:
        lines.append(
            f"{r['layout']:<10}{str(r['batch']):>7}{r['rows_per_s']:>11,.0f}{r['peak_rss'] / 2**20:>14,.0f}  "
            f"{'; '.join(r['execution'])}{'  <- fastest' if r is best else ''}"
        )
    return "\n".join(lines)
