"""The model alone inside Dask workers, with and without dscore's malloc thresholds,
beside the same threads in a plain process: one run, interleaved, medians.

    python benchmarks/malloc.py [--rows 1000000] [--model masked_mean] [--batch 256] [--repeats 3]

Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which freezes glibc's
mmap threshold (see dscore/worker.py, ``tune_malloc``); dscore's worker plugin
restores glibc's dynamic ceilings. Each repeat: a fresh LocalCluster (1 worker x 2
threads) without the plugin, one with it, then two threads in this process; each
runs the model alone on ``dscore.bench.MODEL_ONLY_ROWS`` pre-encoded rows per thread
(the `dscore bench --models` data, built in --workdir when missing).
"""

from __future__ import annotations

import argparse
import statistics

from distributed import Client, LocalCluster

from dscore import bench as b
from dscore.cluster import register


def in_workers(job, variants, plan, plugin: bool, seconds: float) -> float:
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=":0") as lc, Client(lc) as c:
        if plugin:
            register(c, 1)
        workers = list(c.scheduler_info()["workers"])
        futures = [
            c.submit(
                b._modes_in_process, job, plan, b.MODEL_ONLY_ROWS, seconds, 1, variants, workers=workers, pure=False
            )
            for _ in range(2)
        ]
        return sum(r[0]["rows_per_s"] for r in c.gather(futures))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--model", default="masked_mean")
    ap.add_argument("--form", default="torchscript")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args(argv)
    job, variants = b.prepare_models(args.workdir or f"/tmp/dscore-bench-models-{args.rows}", args.rows)
    name = f"{args.model} {args.form}"
    variants = {name: variants[name]}
    plan = [(name, "none", args.batch)]
    runs: dict = {"plain process": [], "workers, the nanny's malloc": [], "workers, dscore's malloc": []}
    for _ in range(args.repeats):
        runs["workers, the nanny's malloc"].append(in_workers(job, variants, plan, False, args.seconds))
        runs["workers, dscore's malloc"].append(in_workers(job, variants, plan, True, args.seconds))
        layout = b.Layout(1, 2, 1)
        runs["plain process"].append(
            b.run_model_modes(job, layout, plan, args.seconds, variants=variants, in_process=True)[0]["rows_per_s"]
        )
    print(f"machine: {b.machine()}; {name}, batch {args.batch}, 2 threads x 1 torch thread")
    base = statistics.median(runs["plain process"])
    for k, xs in runs.items():
        m = statistics.median(xs)
        print(
            f"{k:<30} {m / 2:>10,.0f} rows/s per core  ({m / base:.2f}x the plain process)   runs {[round(x / 2) for x in xs]}"
        )


if __name__ == "__main__":
    main()
