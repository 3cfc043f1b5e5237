"""The worker layout rule: how many worker processes, Dask threads and torch threads.

One rule, used by every way dscore starts workers: the LocalCluster and
LocalCUDACluster that ``dscore.run`` starts, ``cluster/local.sh`` and ``gpu.sh``
(through ``python -m dscore.layout``), the batch and SSH launchers
(``cluster/_launch.py``), the worker plugin's torch threads (``dscore.cluster.register``),
and the Kubernetes manifests (checked against it by ``tests/test_cluster_scripts.py``).
For a host (or a batch job, or a pod) of C cores:

* **workers** W: one process per ``layout.cores-per-worker`` cores (default 4), at
  least one; on a GPU host, one per GPU.
* **threads** T per worker: the cores left to each worker, divided by
  ``layout.torch-threads`` (default 1); on a GPU worker, at least
  ``layout.gpu-min-threads`` (default 2).
* **torch threads** K per Dask thread: the cores left to each Dask thread, at least 1,
  so that W x T x K <= C wherever the cores allow.

A value given explicitly (``--workers``, a job's ``threads_per_worker``, ...) wins,
and the others follow from it by the same rule. Why these numbers, and how each
launcher applies them: cluster/README.md, "The worker layout".

This module imports nothing heavy: the shell scripts run it before any worker exists.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NamedTuple

from . import config


class Layout(NamedTuple):
    """Worker processes, Dask threads per process, torch threads per Dask thread."""

    workers: int
    threads: int
    torch_threads: int

    def __str__(self) -> str:
        return f"{self.workers}x{self.threads}x{self.torch_threads}"


def host_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def torch_threads(cores: int, dask_threads: int) -> int:
    """Torch threads per Dask thread: the cores of a host shared among its ``dask_threads``."""
    return max(1, cores // max(1, dask_threads))


def layout(
    cores: int, *, gpus: int = 0, workers: int | None = None, threads: int | None = None, torch: int | None = None
) -> Layout:
    """The layout of a host with ``cores`` cores (and ``gpus`` GPUs); see the module
    docstring. ``workers``, ``threads`` and ``torch`` (torch threads), when given, win."""
    cores = max(1, cores)
    k = torch or int(config.get("layout.torch-threads"))
    if gpus:
        w = workers or gpus
        t = threads or max(int(config.get("layout.gpu-min-threads")), cores // (w * k))
    else:
        w = workers or max(1, cores // int(config.get("layout.cores-per-worker")))
        t = threads or max(1, cores // (w * k))
    return Layout(w, t, torch or torch_threads(cores, w * t))


def main(argv: list[str] | None = None) -> int:
    """``python -m dscore.layout --cores N``: print ``WORKERS THREADS TORCH_THREADS``."""
    parser = argparse.ArgumentParser(
        prog="python -m dscore.layout",
        description="Print WORKERS THREADS TORCH_THREADS for a host by dscore's worker layout rule.",
    )
    parser.add_argument("--cores", type=int, default=None, help="cores of the host (default: this one's)")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs of the host, one worker each (default: 0)")
    for name in ("workers", "threads", "torch-threads"):
        parser.add_argument(f"--{name}", type=int, default=None, help=f"given {name} (default: the rule's)")
    args = parser.parse_args(argv)
    cores = args.cores or host_cores()
    print(*layout(cores, gpus=args.gpus, workers=args.workers, threads=args.threads, torch=args.torch_threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
