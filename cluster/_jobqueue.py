"""Common code of slurm.py and pbs.py: their options, the dask-jobqueue keywords the
options map to, --dry-run, and the run loop. Each script only names its cluster
class and its system's extra options.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass

from _launch import (
    DEFAULT_HOST,
    add_common_args,
    info,
    layout_env,
    positive_int,
    security,
    serve,
    stop_on_signals,
    worker_layout,
)


@dataclass(frozen=True)
class System:
    """What differs between batch systems."""

    name: str  # "SLURM"
    cluster_class: str  # name in dask_jobqueue
    prog: str  # "slurm.py"
    directive_example: str  # an extra job directive, for --help
    extra_options: tuple[tuple[str, str, str], ...] = ()  # (flag, keyword, help)


def build_parser(system: System) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=system.prog,
        description=(
            f"Start a Dask cluster whose workers run as {system.name} jobs "
            f"(dask-jobqueue {system.cluster_class}); the scheduler runs in this process. "
            "Prints the scheduler address (for `dscore score --scheduler ADDRESS`) once the "
            "workers are up and keeps the cluster until Ctrl-C, which cancels the jobs."
        ),
        epilog=(
            f"Example: {system.prog} --jobs 4 --cores 32 --memory 128GB --interface ib0 "
            "--walltime 04:00:00 --queue QUEUE --account ACCOUNT. "
            "Try it first with --dry-run."
        ),
    )
    job = parser.add_argument_group("jobs")
    job.add_argument("--jobs", type=positive_int, default=1, help="jobs to submit (default: 1)")
    job.add_argument("--cores", type=positive_int, required=True, help="cores per job")
    job.add_argument(
        "--memory",
        required=True,
        help="memory per job, e.g. 128GB; split evenly between its worker processes",
    )
    job.add_argument(
        "--processes",
        type=positive_int,
        help="worker processes per job, each with cores/processes Dask threads "
        "(default: dscore's layout rule, one per 4 cores)",
    )
    job.add_argument(
        "--walltime",
        help="time limit per job, e.g. 04:00:00 (default: dask-jobqueue's)",
    )
    job.add_argument("--queue", help="queue (partition) to submit to")
    job.add_argument("--account", help="account (project) to charge")
    job.add_argument("--job-name", default="dscore-worker", help="(default: dscore-worker)")
    job.add_argument(
        "--job-extra",
        action="append",
        default=[],
        metavar="DIRECTIVE",
        help=f"extra {system.name} directive, repeatable, e.g. '{system.directive_example}'",
    )
    for flag, _, help_text in system.extra_options:
        job.add_argument(flag, help=help_text)
    job.add_argument(
        "--prologue",
        action="append",
        default=[],
        metavar="COMMAND",
        help="shell line the job runs before the worker, repeatable, "
        "e.g. 'module load cuda' or 'conda activate dscore'",
    )
    job.add_argument(
        "--python",
        help=f"python on the compute nodes (default: this one, {sys.executable})",
    )
    job.add_argument("--local-directory", help="node-local scratch directory for the workers")
    job.add_argument("--log-directory", help="directory for the jobs' output files")

    net = parser.add_argument_group("network")
    net.add_argument(
        "--interface",
        help="network interface of the scheduler and the workers, e.g. ib0",
    )
    net.add_argument(
        "--host",
        help=f"address the scheduler binds to (default: {DEFAULT_HOST}, or --interface's)",
    )
    add_common_args(net)
    parser.add_argument(
        "--min-workers",
        type=positive_int,
        metavar="N",
        help="workers to wait for before printing the address (default: all, jobs x processes)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the job script that would be submitted, then exit; starts nothing",
    )
    return parser


def cluster_kwargs(system: System, args: argparse.Namespace) -> dict:
    """dask-jobqueue keyword arguments for ``args``."""
    # dask-jobqueue gives each process cores/processes threads: the layout rule's
    # threads when the processes are its own.
    processes = args.processes or worker_layout(args.cores).workers
    lay = worker_layout(
        args.cores, workers=processes, threads=max(1, args.cores // processes), torch_threads=args.torch_threads
    )
    scheduler_options = {"port": args.port, "dashboard_address": args.dashboard_address}
    if args.host:
        scheduler_options["host"] = args.host
    elif not args.interface:
        scheduler_options["host"] = DEFAULT_HOST
        info(
            f"note: the scheduler binds to {DEFAULT_HOST}, which workers on other nodes cannot "
            "reach; pass --interface (e.g. ib0) or --host to serve them"
        )
    if args.scheduler_file:
        scheduler_options["scheduler_file"] = str(args.scheduler_file.resolve())
    env = layout_env(lay.torch_threads)
    kwargs = {
        "cores": args.cores,
        "memory": args.memory,
        "processes": processes,
        "job_name": args.job_name,
        "job_extra_directives": args.job_extra,
        # The user's lines first (module load, conda activate), then the layout, so
        # that an activation script cannot undo it.
        "job_script_prologue": [
            *args.prologue,
            *(f"export {k}={v}" for k, v in env.items()),
        ],
        "scheduler_options": scheduler_options,
        "security": security(args.tls),
    }
    optional = {
        "walltime": args.walltime,
        "queue": args.queue,
        "account": args.account,
        "python": args.python,
        "interface": args.interface,
        "local_directory": args.local_directory,
        "log_directory": args.log_directory,
    }
    optional.update({kw: getattr(args, flag.lstrip("-").replace("-", "_")) for flag, kw, _ in system.extra_options})
    kwargs.update({k: v for k, v in optional.items() if v is not None})
    return kwargs


async def _job_script(cluster_class, kwargs: dict) -> str:
    # asynchronous=True leaves starting the scheduler to an `await` that never comes:
    # a dry run binds no port, and the script shows dask-jobqueue's placeholder address.
    return cluster_class(asynchronous=True, **kwargs).job_script()


def main(system: System, argv: list[str] | None = None) -> int:
    parser = build_parser(system)
    args = parser.parse_args(argv)
    processes = args.processes or worker_layout(args.cores).workers
    if processes > args.cores:
        parser.error(f"--processes {processes} is more than --cores {args.cores}: each process needs a core")
    if args.cores % processes:
        info(f"note: {args.cores} cores / {processes} processes leaves {args.cores % processes} core(s) idle per job")
    try:
        import dask_jobqueue
    except ImportError as e:
        raise SystemExit(
            f"{system.prog}: error: dask-jobqueue is missing: pip install 'dscore[cluster]' "
            "or conda install dask-jobqueue"
        ) from e
    cluster_class = getattr(dask_jobqueue, system.cluster_class)
    kwargs = cluster_kwargs(system, args)

    if args.dry_run:
        print(asyncio.run(_job_script(cluster_class, kwargs)), end="", flush=True)
        info(f"# --dry-run: {args.jobs} job(s) like this would be submitted, {processes} workers each")
        return 0

    stop_on_signals()
    cluster = None
    try:
        cluster = cluster_class(**kwargs)
        cluster.scale(jobs=args.jobs)
        info(f"submitted {args.jobs} {system.name} job(s); waiting for workers")
        return serve(cluster, args.min_workers or args.jobs * processes, args.timeout)
    except KeyboardInterrupt:
        info("interrupted while starting; stopping the cluster")
        return 130
    finally:
        if cluster is not None:
            cluster.close()
