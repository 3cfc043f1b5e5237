"""The ``dscore`` command (also ``dask dscore``): a thin layer over the Python API.

Exit statuses: 0 success; 1 error (the message names the file, key, field or
column at fault); 2 bad command line; 3 the output is partial (partitions were
quarantined; ``_SUCCESS`` was not written); 4 ``verify`` found a difference above
its tolerance, or a missing or duplicated row; 130 interrupted (Ctrl-C).

Errors: a ``DscoreError`` (what the user can fix) and an ``OSError`` (the machine's:
a missing file, a full disk, permission denied; its message names the file) are one
line on stderr and exit status 1; any other exception is a bug in dscore and shows
its traceback. With ``-v`` every error shows its traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback

import click

from .errors import DscoreError, JobError, SpecError

EXIT_ERROR = 1
EXIT_PARTIAL = 3
EXIT_VERIFY = 4
EXIT_INTERRUPTED = 130  # as a shell reports SIGINT
QUIET_LOGGERS = (
    "botocore",
    "aiobotocore",
    "boto3",
    "s3transfer",
    "s3fs",
    "urllib3",
    "aiohttp",
    "gcsfs",
    "adlfs",
    "azure",
)


RESUMES = "rerun the same command to resume where this run stopped"
RESUMED = "rerun: the job resumes where it stopped"


class _Main(click.Group):
    """Runs a command and turns its errors into what the module docstring says."""

    def invoke(self, ctx):
        verbose = ctx.params.get("verbose", 0)
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            scoring = ctx.invoked_subcommand == "score"  # the command a rerun resumes
            if verbose:
                traceback.print_exc()
            click.echo(f"\ndscore: interrupted{'; ' + RESUMES if scoring else ''}", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except (DscoreError, OSError) as e:
            if verbose:
                traceback.print_exc()
            resume = (
                ctx.invoked_subcommand == "score" and isinstance(e, OSError) and not isinstance(e, FileNotFoundError)
            )
            click.echo(f"dscore: error: {e}{'; once that is fixed, ' + RESUMED if resume else ''}", err=True)
            sys.exit(EXIT_ERROR)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as e:
            traceback.print_exc()
            click.echo(f"dscore: bug: {type(e).__name__}: {e}; please report it with the traceback above", err=True)
            sys.exit(EXIT_ERROR)


def _load(job_path: str, sets, scheduler: str | None = None):
    """The job in ``job_path`` with the ``--set`` job keys and ``--scheduler`` applied;
    ``--set dscore.<key>=VALUE`` items set dask config keys for this process (and the
    jobs it starts) first, so that defaults read from them apply."""
    import dask.config

    from . import config  # noqa: F401 - dscore's defaults loaded, so keys can be checked
    from .spec import JobSpec, parse_set

    overrides = parse_set(sets)
    settings = {k: overrides.pop(k) for k in list(overrides) if k.startswith("dscore.")}
    missing = object()
    for key in settings:
        if dask.config.get(key, default=missing) is missing:
            raise SpecError(f"--set {key}: no such setting; the settings and their defaults are in dscore/dscore.yaml")
    dask.config.set(settings)
    if scheduler:
        overrides["cluster"] = scheduler
    return JobSpec.load(job_path, overrides)


@click.group(cls=_Main, name="dscore", context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dscore")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug); tracebacks for every error.")
def main(verbose: int) -> None:
    """Batch scoring of multi-field categorical PyTorch models on Dask."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # distributed logs at INFO by default, in this process and in the workers it
    # spawns (which read this variable through dask's config).
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", logging.getLevelName(level).lower())
    logging.getLogger("distributed").setLevel(level)
    if not verbose:
        import distributed.config  # noqa: F401 - its logging set-up first, or it overrides these levels

        # A failed task is dscore's to report, in one line naming the file (or with
        # the traceback of a bug); the worker's own "Compute Failed" record repeats it
        # with the worker's traceback, and a nanny closing a busy worker at the end of
        # a failed job is no news. -v shows them.
        for name in (
            "distributed.worker",
            "distributed.nanny",
            "distributed.worker.state_machine",
            "distributed.client",
        ):
            logging.getLogger(name).setLevel(logging.CRITICAL)  # and in local workers: cluster.connect
        logging.getLogger("tornado.application").addFilter(_sync_cancel_race)
    # The object-store clients' debug logs print request headers, access key ids
    # included: -vv is dscore's and distributed's debug output, not theirs.
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.INFO))


def _sync_cancel_race(record: logging.LogRecord) -> bool:
    """Drop the traceback a Ctrl-C can make distributed's event loop log: ``utils.sync``
    schedules ``cancel()``, which reads a ``future`` not yet assigned when the
    interrupt came first (NameError). The job was interrupted either way, and dscore
    says so in one line; ``-v`` shows it."""
    exc = record.exc_info[1] if record.exc_info else None
    if not isinstance(exc, NameError) or exc.__traceback__ is None:
        return True
    tb = exc.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    return not (code.co_name == "cancel" and code.co_filename.endswith(os.path.join("distributed", "utils.py")))


_SET = click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a job key, e.g. model.batch_size=4096, or with dscore.KEY a dscore setting of dask.config, "
    "e.g. dscore.tune.rows=4096 (defaults: dscore/dscore.yaml). VALUE is read as YAML. Repeatable.",
)
_SCHED = click.option(
    "--scheduler", metavar="ADDR", help="Scheduler address (tcp://host:8786); overrides the job's cluster."
)


@main.command()
@click.argument("job", type=click.Path(dir_okay=False))
@_SCHED
@_SET
@click.option(
    "--overwrite",
    is_flag=True,
    help="Discard an earlier run's output (only files dscore wrote) instead of resuming it.",
)
@click.option("--break-lock", is_flag=True, help="Take the output's lease from a run that is gone (see _lock.json).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def score(job, scheduler, sets, overwrite, break_lock, no_progress):
    """Score the job in JOB (a YAML job file)."""
    from .pipeline import run

    spec = _load(job, sets, scheduler)
    report = run(spec, overwrite=overwrite, break_lock=break_lock, progress=not no_progress)
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
    from .cluster import connect
    from .vocab import Vocabulary

    spec = _load(job, sets, scheduler)
    if not spec.vocab:
        raise SpecError(f"{job}: set 'vocab' to the directory the tables should go to")
    t = time.perf_counter()
    with connect(spec.cluster, workers=spec.workers, threads_per_worker=spec.threads_per_worker):
        fitted = Vocabulary.fit(
            list(spec.input), spec.fields, min_count=min_count, max_size=max_size,
            storage_options=spec.storage_options, partition_rows=spec.partition_rows,
            csv=spec.csv, partition_types=spec.partition_types,
        )  # fmt: skip
    fitted.save(spec.vocab, storage_options=spec.storage_options)
    click.echo(f"dscore: wrote {fitted} to {spec.vocab} in {time.perf_counter() - t:.1f}s")


@main.command()
@click.option(
    "--rows", type=click.IntRange(min=1000), default=200_000, show_default=True, help="Rows to generate and score."
)
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


@main.command()
@click.argument("job", type=click.Path(dir_okay=False))
@_SCHED
@_SET
@click.option("--sample", "n", type=click.IntRange(min=1), default=100_000, show_default=True, help="Rows to draw.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--tolerance", type=float, default=1e-5, show_default=True, help="Largest acceptable |difference|.")
@click.option("--against", type=click.Choice(["fp32"]), default=None, help="Compare the job's precision with fp32.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the table here.")
def verify(job, scheduler, sets, n, seed, tolerance, against, json_path):
    """Score a sample of JOB's rows on the cluster and by an eager reference; print the diff table.

    Exit status 4 when the largest difference exceeds the tolerance or a row is missing
    or duplicated (the table is also written to <output>-verify/verify.json).
    """
    from . import verify as v

    spec = _load(job, sets, scheduler)
    result = v.verify(spec, n=n, seed=seed, tolerance=tolerance, against=against)
    click.echo(v.format_result(result))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=1)
    if not result["passed"]:
        sys.exit(EXIT_VERIFY)


def _layouts(text: str):
    from .bench import Layout

    try:
        return [Layout.parse(item) for item in text.split(",") if item]
    except TypeError:
        raise click.BadParameter(f"{text!r}: expected WORKERSxTHREADSxTORCH_THREADS, e.g. 2x1x1,1x1x2") from None


@main.command()
@click.option("--rows", type=click.IntRange(min=10_000), default=1_000_000, show_default=True)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where the demo data goes (default: a temp dir per row count; reused).",
)
@click.option(
    "--layout", default="", help="WORKERSxTHREADSxTORCH_THREADS of the main run (default: the LocalCluster default)."
)
@click.option("--model-only", is_flag=True, help="Only the model: rows/s per execution mode and batch size.")
@click.option(
    "--models",
    "zoo",
    is_flag=True,
    help="The model shapes users bring (dscore.zoo), each as TorchScript and eager: alone in one process and in the workers, end to end, against the serial ceiling.",
)
@click.option(
    "--multi-model",
    is_flag=True,
    help="Two dscore.zoo models in one job (models:) against a job for each, same data, same run "
    "(--only picks the models; default masked_mean,two_output).",
)
@click.option(
    "--seconds",
    type=click.FloatRange(min=0.01),
    default=1.0,
    show_default=True,
    help="With --models: seconds per batch-size candidate (the model-alone figures run 3x as long).",
)
@click.option(
    "--only",
    default="",
    metavar="NAMES",
    help="With --models or --multi-model: only these dscore.zoo models (comma-separated, e.g. masked_mean).",
)
@click.option(
    "--sweep-layouts",
    default="2x1x1,1x2x1,1x1x2",
    show_default=True,
    help="Layouts to compare end to end ('' for none).",
)
@click.option(
    "--sweep-batches",
    default="1024,4096,8192",
    show_default=True,
    help="Fixed batch sizes to compare with auto ('' for none).",
)
@click.option("--no-baselines", is_flag=True, help="Skip the plain-Dask and single-process baselines.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the figures as JSON.")
def bench(
    rows, workdir, layout, model_only, zoo, multi_model, seconds, only, sweep_layouts, sweep_batches, no_baselines,
    json_path,
):  # fmt: skip
    """Benchmark dscore on the demo data against its ceilings and baselines (with --models:
    on the model shapes users bring)."""
    import tempfile

    from . import bench as b
    from .layout import host_cores
    from .layout import layout as layout_rule  # `layout` is the --layout option here

    zoo_data = zoo or multi_model  # the same data and models
    workdir = workdir or os.path.join(tempfile.gettempdir(), f"dscore-bench-{'models-' if zoo_data else ''}{rows}")
    cores = host_cores()
    default = b.Layout(*layout_rule(cores))  # the LocalCluster default (dscore.layout)
    main_layout = _layouts(layout)[0] if layout else default
    out: dict = {"rows": rows, "machine": b.machine()}
    from .zoo import MODELS

    names = [n for n in only.split(",") if n]
    if any(n not in MODELS for n in names):
        raise click.BadParameter(f"{only!r}: expected names among {', '.join(MODELS)}", param_hint="--only")
    if multi_model:
        if names and len(names) < 2:
            raise click.BadParameter(f"{only!r}: --multi-model needs two or more models", param_hint="--only")
        out["multi_model"] = b.multi_model(workdir, rows, main_layout, names or b.MULTI_MODELS)
        click.echo(b.format_multi_model(out["multi_model"]))
    elif zoo:
        out["models"] = b.models(workdir, rows, main_layout, seconds, names, baselines=not no_baselines)
        click.echo(b.format_models(out["models"]))
    elif model_only:
        job = b.prepare(workdir, rows)
        click.echo(f"machine: {out['machine']}")
        out["modes"] = b.run_model_modes(job, main_layout, b.mode_plan())
        click.echo(f"model only, layout {main_layout}, {b.MODEL_ONLY_ROWS:,} pre-encoded rows per worker thread:")
        click.echo(b.format_modes(out["modes"]))
    else:
        res = b.end_to_end(workdir, rows, main_layout, baselines=not no_baselines)
        click.echo(b.format_end_to_end(res))
        for key in ("dscore", "dscore_plain"):
            res[key]["report"] = res[key]["report"].to_dict()
        out["end_to_end"] = res
        layouts = _layouts(sweep_layouts)
        batches = [int(x) for x in sweep_batches.split(",") if x]
        if layouts or batches:
            out["sweep"] = b.sweep(workdir, rows, layouts or [main_layout], batches)
            click.echo("\nend to end by layout (workers x threads x torch threads) and batch size:")
            click.echo(b.format_sweep(out["sweep"]))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(out, f, indent=1, default=str)


@main.command(name="report")
@click.argument("output")
def show_report(output):
    """Print the report a job left in OUTPUT."""
    from .output import REPORT, Output

    rep = Output(output).read_json(REPORT)
    if rep is None:
        raise JobError(f"no {REPORT} in {output!r}: no job has finished a run there")
    click.echo(json.dumps(rep, indent=1))


if __name__ == "__main__":  # pragma: no cover
    main()
