"""The ``dscore`` command (also ``dask dscore``): a thin layer over the Python API.

Exit statuses: 0 success; 1 error (the message names the file, key, field or
column at fault); 2 bad command line; 3 the output is partial (partitions were
quarantined; ``_SUCCESS`` was not written).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

import click

EXIT_ERROR = 1
EXIT_PARTIAL = 3


def _fail(e: BaseException) -> None:
    click.echo(f"dscore: error: {e}", err=True)
    sys.exit(EXIT_ERROR)


def _errors():
    """Errors that are the user's to fix, reported as one line rather than a traceback."""
    from .io import InputError
    from .model import ModelError
    from .pipeline import JobError
    from .spec import SpecError

    return (SpecError, ModelError, JobError, InputError, FileNotFoundError, ValueError, TypeError)


def _load(job_path: str, sets) -> object:
    from .spec import JobSpec, parse_set

    return JobSpec.load(job_path, parse_set(sets))


@click.group(name="dscore", context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dscore")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Batch scoring of multi-field categorical PyTorch models on Dask."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # distributed logs at INFO by default, in this process and in the workers it
    # spawns (which read this variable through dask's config).
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", logging.getLevelName(level).lower())
    logging.getLogger("distributed").setLevel(level)


_SET = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a job key, e.g. model.batch_size=4096.")
_SCHED = click.option("--scheduler", metavar="ADDR", help="Scheduler address (tcp://host:8786); overrides the job's cluster.")


@main.command()
@click.argument("job", type=click.Path(dir_okay=False))
@_SCHED
@_SET
@click.option("--overwrite", is_flag=True, help="Discard an earlier run's output instead of resuming it.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def score(job, scheduler, sets, overwrite, no_progress):
    """Score the job in JOB (a YAML job file)."""
    from .pipeline import run

    try:
        spec = _load(job, sets)
        if scheduler:
            spec = type(spec).load(spec, {"cluster": scheduler})
        report = run(spec, overwrite=overwrite, progress=not no_progress)
    except _errors() as e:
        _fail(e)
    click.echo(report.format())
    if report.status != "complete":
        sys.exit(EXIT_PARTIAL)


@main.command()
@click.argument("job", type=click.Path(dir_okay=False))
@_SCHED
@_SET
@click.option("--min-count", type=click.IntRange(min=1), default=1, show_default=True, help="Drop rarer tokens.")
@click.option("--max-size", type=click.IntRange(min=1), default=None, help="Keep at most this many tokens per field.")
def vocab(job, scheduler, sets, min_count, max_size):
    """Fit the mapping tables of JOB's fields on its input and write them to its vocab directory."""
    from .pipeline import connect
    from .vocab import Vocabulary

    try:
        spec = _load(job, sets)
        if not spec.vocab:
            raise click.UsageError(f"{job}: set 'vocab' to the directory the tables should go to")
        t = time.perf_counter()
        with connect(scheduler or spec.cluster, workers=spec.workers, threads_per_worker=spec.threads_per_worker):
            fitted = Vocabulary.fit(
                list(spec.input), spec.fields, min_count=min_count, max_size=max_size,
                storage_options=spec.storage_options, partition_rows=spec.partition_rows,
            )  # fmt: skip
        fitted.save(spec.vocab, storage_options=spec.storage_options)
    except _errors() as e:
        _fail(e)
    click.echo(f"dscore: wrote {fitted} to {spec.vocab} in {time.perf_counter() - t:.1f}s")


@main.command()
@click.option("--rows", type=click.IntRange(min=1000), default=200_000, show_default=True, help="Rows to generate and score.")
@click.option("--workdir", type=click.Path(file_okay=False), default="dscore-example", show_default=True)
def example(rows, workdir):
    """The whole path on synthetic data: generate, fit the vocabulary, train, score."""
    from .demo import build_example
    from .pipeline import run

    t = time.perf_counter()
    job = build_example(os.path.abspath(workdir), rows, log=lambda m: click.echo(f"dscore example: {m}"))
    click.echo(f"dscore example: job file {job}; scoring it (dscore score {job})")
    report = run(job, overwrite=True)
    click.echo(report.format())
    click.echo(f"dscore example: done in {time.perf_counter() - t:.1f}s; report at {report.output}/_report.json")


@main.command(name="report")
@click.argument("output")
def show_report(output):
    """Print the report a job left in OUTPUT."""
    from .output import REPORT, Output

    rep = Output(output).read_json(REPORT)
    if rep is None:
        _fail(FileNotFoundError(f"no {REPORT} in {output!r}"))
    click.echo(json.dumps(rep, indent=1))


if __name__ == "__main__":  # pragma: no cover
    main()
