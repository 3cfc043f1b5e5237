"""Shared by the Python launchers (slurm.py, pbs.py, ssh.py): the worker layout (by
dscore's rule, ``dscore.layout``), the options every launcher has, TLS from
cluster/tls.py files, and serving a started cluster until Ctrl-C.

A launcher keeps the scheduler (or the SSH connections) in its own process, so it
runs in the foreground: it prints the scheduler address as the last line of stdout
once the workers are up, and closes the cluster (cancelling batch jobs) on Ctrl-C
or SIGTERM. Diagnostics go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from pathlib import Path

# ---- Defaults. The worker layout is dscore's rule (dscore/layout.py; cluster/README.md,
# "The worker layout"), the same as cluster/local.sh's and dscore's LocalCluster's.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8786
DEFAULT_DASHBOARD_ADDRESS = "127.0.0.1:8787"
# ----

# Every variable that sizes a thread pool in a worker; dscore's worker plugin reads
# DSCORE_TORCH_THREADS for torch.set_num_threads. Keep in step with _common.sh.
LAYOUT_VARS = (
    "DSCORE_TORCH_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMBA_NUM_THREADS",
)


def layout_env(torch_threads: int) -> dict[str, str]:
    """The environment every worker gets for ``torch_threads`` threads per Dask thread."""
    return dict.fromkeys(LAYOUT_VARS, str(torch_threads))


def worker_layout(cores: int, *, workers=None, threads=None, torch_threads=None):
    """``(workers, threads, torch threads)`` for a host or job of ``cores`` cores by
    dscore's worker layout rule (``dscore.layout.layout``); given values win."""
    try:
        from dscore.layout import layout
    except ImportError as e:
        raise SystemExit(
            f"error: cannot import dscore ({e}), whose worker layout rule the launchers use: "
            "run them from the dscore environment (pip install -e .)"
        ) from e
    return layout(cores, workers=workers, threads=threads, torch=torch_threads)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Options shared by every launcher: layout, binding, TLS, waiting."""
    parser.add_argument(
        "--torch-threads",
        type=positive_int,
        metavar="K",
        help="torch threads per Dask thread, exported to workers as DSCORE_TORCH_THREADS "
        "and OMP/MKL/OPENBLAS/NUMBA_NUM_THREADS (default: the cores left to each Dask thread, "
        "by dscore's layout rule)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"scheduler port, 0 for a free one (default: {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--dashboard-address",
        default=DEFAULT_DASHBOARD_ADDRESS,
        metavar="HOST:PORT",
        help=f"scheduler dashboard (default: {DEFAULT_DASHBOARD_ADDRESS}; reach it through an SSH tunnel)",
    )
    parser.add_argument(
        "--scheduler-file",
        type=Path,
        metavar="FILE",
        help="also write the scheduler's address to FILE (dask --scheduler-file format)",
    )
    parser.add_argument(
        "--tls",
        type=Path,
        metavar="DIR",
        help="encrypt and authenticate with the certificates cluster/tls.py wrote to DIR; "
        "DIR must be readable at the same path on every worker machine",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help="seconds to wait for the workers before giving up (default: wait forever)",
    )


def security(tls_dir: Path | None):
    """A ``distributed.Security`` for every role from cluster/tls.py's files, or None."""
    if tls_dir is None:
        return None
    from distributed.security import Security

    tls_dir = tls_dir.resolve()
    missing = [
        name
        for name in (
            "ca.pem",
            *(f"{r}{s}" for r in ("scheduler", "worker", "client") for s in (".pem", "-key.pem")),
        )
        if not (tls_dir / name).is_file()
    ]
    if missing:
        raise SystemExit(
            f"error: --tls {tls_dir}: missing {', '.join(missing)}; create them with: python cluster/tls.py {tls_dir}"
        )
    return Security(
        tls_ca_file=str(tls_dir / "ca.pem"),
        tls_scheduler_cert=str(tls_dir / "scheduler.pem"),
        tls_scheduler_key=str(tls_dir / "scheduler-key.pem"),
        tls_worker_cert=str(tls_dir / "worker.pem"),
        tls_worker_key=str(tls_dir / "worker-key.pem"),
        tls_client_cert=str(tls_dir / "client.pem"),
        tls_client_key=str(tls_dir / "client-key.pem"),
        require_encryption=True,
    )


def info(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def stop_on_signals() -> None:
    """Turn SIGINT and SIGTERM into KeyboardInterrupt, so that the launcher always
    closes its cluster (cancelling batch jobs, closing SSH processes) on the way out.

    Also undoes the SIG_IGN that a non-interactive shell gives SIGINT in background
    commands (`launcher &`), so that `kill -INT` works there too.
    """
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupt)


def serve(cluster, n_workers: int, timeout: float | None) -> int:
    """Wait for ``n_workers``, print the address, block until interrupted.

    Returns the exit status; the caller closes the cluster. Call stop_on_signals first.
    """
    from distributed import Client
    from distributed.core import Status

    try:
        with Client(cluster) as client:
            try:
                client.wait_for_workers(n_workers, timeout=timeout)
            except (TimeoutError, asyncio.TimeoutError):
                have = len(client.nthreads())
                info(
                    f"error: {have} of {n_workers} workers after {timeout} s; the queue may "
                    "be busy or the workers cannot reach the scheduler (see --interface and "
                    "--host): raise --timeout or lower --min-workers"
                )
                return 1
        info(f"{n_workers} workers up; dashboard: {cluster.dashboard_link}; Ctrl-C stops the cluster")
        print(cluster.scheduler_address, flush=True)
        while cluster.status not in (Status.closing, Status.closed, Status.failed):
            time.sleep(1.0)
        info("error: the cluster closed")
        return 1
    except KeyboardInterrupt:
        info("stopping the cluster")
        return 0
