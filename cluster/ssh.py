#!/usr/bin/env python3
"""Start a Dask cluster over SSH from a hosts file; print its address.

    python cluster/ssh.py HOSTS --cores 16 [--workers-per-host N] [--threads T] [--torch-threads K]

HOSTS lists one host per line (blank lines and # comments are skipped). The first
host runs the scheduler, the others run --workers-per-host worker processes each;
a file with a single host runs the scheduler and the workers there. The worker
layout of a host of --cores cores is dscore's rule (dscore/layout.py), as everywhere;
the options given win. Every host needs
passwordless SSH from here and the same Python environment (--remote-python) at the
same path. Uses distributed's SSHCluster, which needs the asyncssh package.

The scheduler binds to the first host's address as written in HOSTS (write
127.0.0.1 or localhost to keep it on loopback); workers listen on their hosts'
interfaces (--interface to pick one); the dashboards bind to 127.0.0.1 on their
hosts (reach them through an SSH tunnel).
This process holds the SSH connections: Ctrl-C stops the cluster.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _launch import (
    add_common_args,
    info,
    layout_env,
    positive_int,
    security,
    serve,
    stop_on_signals,
    worker_layout,
)


def read_hosts(path: Path) -> list[str]:
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise SystemExit(f"ssh.py: error: cannot read hosts file {path}: {e.strerror}") from e
    hosts = [line.split("#", 1)[0].strip() for line in lines]
    hosts = [h for h in hosts if h]
    if not hosts:
        raise SystemExit(f"ssh.py: error: hosts file {path} lists no host; expected one host per line")
    return hosts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssh.py",
        description=__doc__.split("\n\n")[0],
        epilog="See cluster/README.md.",
    )
    parser.add_argument(
        "hosts_file",
        type=Path,
        metavar="HOSTS",
        help="hosts file; the first host runs the scheduler",
    )
    parser.add_argument(
        "--cores",
        type=positive_int,
        metavar="C",
        help="cores of each worker host, which the layout rule divides among workers and threads "
        "(default: --workers-per-host x --threads x --torch-threads)",
    )
    parser.add_argument(
        "--workers-per-host",
        type=positive_int,
        metavar="N",
        help="worker processes per worker host (default: the layout rule's, one per 4 cores)",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        metavar="T",
        help="Dask threads per worker process (default: the layout rule's, the cores left to each worker; "
        "1 without --cores)",
    )
    parser.add_argument(
        "--memory-limit",
        default="auto",
        metavar="M",
        help="memory per worker process, e.g. 8GiB (default: auto)",
    )
    parser.add_argument(
        "--interface",
        help="network interface the workers listen on, e.g. ib0 (default: all of them; "
        "they advertise the address that reaches the scheduler)",
    )
    parser.add_argument(
        "--remote-python",
        default=sys.executable,
        metavar="PATH",
        help=f"python on every host (default: this one, {sys.executable})",
    )
    parser.add_argument("--username", help="SSH user (default: yours, or ~/.ssh/config's)")
    parser.add_argument("--ssh-port", type=int, help="SSH port (default: 22, or ~/.ssh/config's)")
    parser.add_argument(
        "--identity",
        action="append",
        default=[],
        metavar="FILE",
        help="SSH private key, repeatable (default: the SSH agent and ~/.ssh keys)",
    )
    parser.add_argument(
        "--known-hosts",
        metavar="FILE",
        help="known_hosts file to verify hosts with, or 'none' to skip verification (default: ~/.ssh/known_hosts)",
    )
    add_common_args(parser)
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the SSHCluster arguments as JSON, then exit; connects to nothing",
    )
    return parser


def cluster_spec(args: argparse.Namespace) -> dict:
    """Keyword arguments of ``distributed.SSHCluster`` (JSON-friendly, without TLS)."""
    hosts = read_hosts(args.hosts_file)
    if len(hosts) == 1:
        hosts = hosts * 2  # scheduler and workers on the one host
    connect_options: dict = {}
    if args.username:
        connect_options["username"] = args.username
    if args.ssh_port:
        connect_options["port"] = args.ssh_port
    if args.identity:
        connect_options["client_keys"] = [str(p) for p in args.identity]
    if args.known_hosts:
        connect_options["known_hosts"] = None if args.known_hosts == "none" else args.known_hosts
    lay = host_layout(args)
    worker_options = {
        "n_workers": lay.workers,
        "nthreads": lay.threads,
        "memory_limit": args.memory_limit,
        "dashboard_address": "127.0.0.1:0",
        # The nanny puts these into the worker process's environment: the layout
        # reaches remote workers without touching their shell setup.
        "env": layout_env(lay.torch_threads),
    }
    if args.interface:
        worker_options["interface"] = args.interface
    scheduler_options = {
        "host": hosts[0],
        "port": args.port,
        "dashboard_address": args.dashboard_address,
    }
    if args.scheduler_file:
        scheduler_options["scheduler_file"] = str(args.scheduler_file)
    return {
        "hosts": hosts,
        "connect_options": connect_options,
        "worker_options": worker_options,
        "scheduler_options": scheduler_options,
        "remote_python": args.remote_python,
    }


def host_layout(args: argparse.Namespace):
    """The layout of each worker host: the rule's for ``--cores``; without it, the host
    is taken to have the cores the given options use (one thread, one torch thread
    each by default)."""
    if args.cores is None and args.workers_per_host is None:
        raise SystemExit("ssh.py: error: pass --cores (cores of each worker host) or --workers-per-host")
    cores = args.cores or args.workers_per_host * (args.threads or 1) * (args.torch_threads or 1)
    return worker_layout(cores, workers=args.workers_per_host, threads=args.threads, torch_threads=args.torch_threads)


def tls_config(sec) -> dict:
    """Dask config that gives every role its TLS files.

    SSHCluster starts the remote scheduler and workers with this process's dask
    config (DASK_INTERNAL_INHERIT_CONFIG), so config rather than a Security object
    is what reaches them.
    """
    return {
        "distributed.comm.require-encryption": True,
        "distributed.comm.tls.ca-file": sec.tls_ca_file,
        "distributed.comm.tls.scheduler.cert": sec.tls_scheduler_cert,
        "distributed.comm.tls.scheduler.key": sec.tls_scheduler_key,
        "distributed.comm.tls.worker.cert": sec.tls_worker_cert,
        "distributed.comm.tls.worker.key": sec.tls_worker_key,
        "distributed.comm.tls.client.cert": sec.tls_client_cert,
        "distributed.comm.tls.client.key": sec.tls_client_key,
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    spec = cluster_spec(args)
    sec = security(args.tls)
    if sec is not None:
        spec["scheduler_options"]["protocol"] = "tls"
    n_workers = (len(spec["hosts"]) - 1) * spec["worker_options"]["n_workers"]

    if args.dry_run:
        print(json.dumps({**spec, "tls": str(args.tls.resolve()) if args.tls else None}, indent=2))
        info(f"# --dry-run: {n_workers} workers would start")
        return 0

    try:
        import asyncssh  # noqa: F401
    except ImportError as e:
        raise SystemExit(
            "ssh.py: error: the asyncssh package is missing: pip install 'dscore[cluster]' or conda install asyncssh"
        ) from e
    import dask
    from distributed import SSHCluster

    stop_on_signals()
    cluster = None
    with dask.config.set(tls_config(sec) if sec is not None else {}):
        info(f"starting the scheduler on {spec['hosts'][0]} and {n_workers} workers over SSH")
        try:
            cluster = SSHCluster(**spec, security=sec)
            return serve(cluster, n_workers, args.timeout)
        except KeyboardInterrupt:
            info("interrupted while starting; stopping the cluster")
            return 130
        finally:
            if cluster is not None:
                cluster.close()


if __name__ == "__main__":
    sys.exit(main())
