"""Benchmarks on the demo data: dscore end to end beside its ceilings and baselines.

Every figure comes from the same invocation on the same machine: rows/s of

* dscore end to end (``dscore.run`` on a LocalCluster), with the workers' peak RSS;
* (a) the model-only ceiling: the model's forward pass alone on pre-encoded rows,
  in every worker at once (the same processes and threads as the job);
* (b) the read-only ceiling: reading the needed columns of every partition;
* (c) plain Dask: ``dd.read_parquet`` + ``map_partitions`` with pandas tokenization
  and a per-worker cached model, written with ``to_parquet``;
* (d) a single-process pandas + torch loop.

The serial ceiling ``1 / (1/read + 1/model)`` is what a pipeline that overlaps
nothing could reach; dscore's ratio to it says what encoding, scheduling and
writing cost.
"""

from __future__ import annotations

import glob
import os
import platform
import shutil
import time
from dataclasses import dataclass

import numpy as np

from .demo import FIELDS


@dataclass
class Layout:
    workers: int
    threads: int
    torch_threads: int

    def __str__(self) -> str:
        return f"{self.workers}x{self.threads}x{self.torch_threads}"


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}"


def prepare(workdir: str, rows: int) -> str:
    """Demo data of ``rows`` rows, its vocabulary and a trained model in ``workdir``
    (reused when already there); returns the job file."""
    from .demo import build_example

    job = os.path.join(workdir, "job.yaml")
    marker = os.path.join(workdir, f".rows-{rows}")
    if not os.path.exists(marker):
        shutil.rmtree(workdir, ignore_errors=True)
        build_example(workdir, rows, log=lambda m: print("bench:", m, flush=True))
        open(marker, "w").close()
    return job


def _cluster(layout: Layout):
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=layout.workers, threads_per_worker=layout.threads, processes=True, dashboard_address=":0"
    )
    return cluster, Client(cluster)


def _peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_dscore(job: str, layout: Layout, **overrides) -> dict:
    from . import pipeline

    cluster, client = _cluster(layout)
    try:
        pipeline.register(client, layout.torch_threads)
        t = time.perf_counter()
        report = pipeline.run(job, client=client, overwrite=True, progress=False, **overrides)
        wall = time.perf_counter() - t
        peak = sum(client.run(_peak_rss).values())
    finally:
        client.close()
        cluster.close()
    return {"rows_per_s": report.rows_scored / wall, "peak_rss": peak, "report": report}


def _read_piece(piece, columns, storage_options):
    from . import io

    fs, _ = io.url_to_fs(piece.url, storage_options)
    return io.read_piece(fs, piece, columns).num_rows


def run_read_only(job: str, layout: Layout) -> dict:
    from . import io
    from .pipeline import TaskSpec
    from .spec import JobSpec

    spec = JobSpec.load(job)
    fs, paths = io.expand(list(spec.input))
    pieces = io.plan(fs, paths, spec.partition_rows)
    columns = TaskSpec(spec.fields, spec.model, "", None, None, spec.id_columns).columns
    cluster, client = _cluster(layout)
    try:
        t = time.perf_counter()
        rows = sum(client.gather(client.map(_read_piece, pieces, columns=columns, storage_options={}, pure=False)))
        wall = time.perf_counter() - t
    finally:
        client.close()
        cluster.close()
    return {"rows_per_s": rows / wall}


def _model_only(job: str, rows: int, batch_size: int, seconds: float, torch_threads: int) -> tuple[int, float]:
    """In one process: encode ``rows`` rows once, then time forward passes alone."""
    import pyarrow.parquet as pq

    from .encoding import encode
    from .model import Model, set_threads
    from .spec import JobSpec
    from .vocab import Vocabulary

    set_threads(torch_threads)
    spec = JobSpec.load(job)
    first = sorted(glob.glob(spec.input[0]))[0]
    table = pq.read_table(first).slice(0, rows)
    arrays = encode(table, spec.fields, Vocabulary.load(spec.vocab, fields=spec.fields))
    model = Model.load(spec.model, spec.fields, device="cpu")
    model.predict({k: v[:batch_size] for k, v in arrays.items()}, batch_size)  # warm up
    done, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        model.predict(arrays, batch_size)
        done += table.num_rows
    return done, time.perf_counter() - t


def run_model_only(job: str, layout: Layout, batch_size: int = 8192, seconds: float = 5.0) -> dict:
    """Forward passes in every worker at once, each on its share of the threads."""
    cluster, client = _cluster(layout)
    try:
        futures = [
            client.submit(_model_only, job, 65536, batch_size, seconds, layout.torch_threads, workers=[w], pure=False)
            for w in client.scheduler_info(n_workers=-1)["workers"]
            for _ in range(layout.threads)
        ]
        results = client.gather(futures)
    finally:
        client.close()
        cluster.close()
    return {"rows_per_s": sum(n / s for n, s in results)}


# ---------------------------------------------------------------- baselines
_CACHE: dict = {}


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

    if "model" not in _CACHE:  # per-worker cached model and mapping dicts
        import pyarrow.parquet as pq

        spec = JobSpec.load(job)
        _CACHE["spec"] = spec
        _CACHE["model"] = torch.jit.load(spec.model.path)
        _CACHE["maps"] = {
            f.name: dict(zip(*(pq.read_table(os.path.join(spec.vocab, f"{f.name}.parquet")).column(c).to_pylist()
                               for c in ("token", "index"))))
            for f in spec.fields
        }  # fmt: skip
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


def end_to_end(workdir: str, rows: int, layout: Layout, batch_size: int = 8192, baselines=True) -> dict:
    """The table of issue "end-to-end scoring": dscore, ceilings, baselines, ratios."""
    job = prepare(workdir, rows)
    res = {"machine": machine(), "rows": rows, "layout": str(layout), "batch_size": batch_size}
    res["dscore"] = run_dscore(job, layout, **{"model.batch_size": batch_size})
    res["read_only"] = run_read_only(job, layout)
    res["model_only"] = run_model_only(job, layout, batch_size)
    if baselines:
        res["plain_dask"] = run_plain_dask(job, layout, batch_size)
        res["single_process"] = run_single_process(job, batch_size)
    res["serial_ceiling"] = 1 / (1 / res["read_only"]["rows_per_s"] + 1 / res["model_only"]["rows_per_s"])
    return res


def format_end_to_end(res: dict) -> str:
    d = res["dscore"]["rows_per_s"]
    lines = [
        f"machine: {res['machine']}",
        f"rows: {res['rows']:,}; layout (workers x threads x torch threads): {res['layout']}; batch {res['batch_size']}",
        f"{'':<46}{'rows/s':>12}{'dscore / it':>13}",
        f"{'dscore end to end':<46}{d:>12,.0f}",
    ]
    rows = [
        ("(a) model-only ceiling (forward pass alone)", res["model_only"]["rows_per_s"]),
        ("(b) read-only ceiling (parquet, needed columns)", res["read_only"]["rows_per_s"]),
        ("serial ceiling 1/(1/read + 1/model)", res["serial_ceiling"]),
    ]
    if "plain_dask" in res:
        rows.append(("(c) plain Dask map_partitions + pandas", res["plain_dask"]["rows_per_s"]))
        rows.append(("(d) single process pandas + torch", res["single_process"]["rows_per_s"]))
    for name, v in rows:
        lines.append(f"{name:<46}{v:>12,.0f}{d / v:>12.2f}x")
    lines.append(f"dscore workers' peak RSS: {res['dscore']['peak_rss'] / 2**20:,.0f} MiB")
    stages = res["dscore"]["report"].stages
    total = sum(stages.values()) or 1
    lines.append("dscore task time: " + ", ".join(f"{k} {v / total:.0%}" for k, v in stages.items()))
    return "\n".join(lines)


__all__ = ["Layout", "end_to_end", "format_end_to_end", "machine", "prepare"]
