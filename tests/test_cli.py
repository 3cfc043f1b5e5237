"""The dscore CLI as users run it: real processes, real files."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from dscore import Vocabulary

DSCORE = [sys.executable, "-m", "dscore.cli"]
DASK = os.path.join(os.path.dirname(sys.executable), "dask")


def write_job(tmp_path, demo, **changes):
    job = {**demo["job"], "output": str(tmp_path / "out"), **changes}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return str(path)


def dscore(*args, timeout=300, **kw):
    return subprocess.run([*DSCORE, *args], capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture
def dask_cluster(tmp_path):
    """A real `dask scheduler` and two `dask worker` processes on 127.0.0.1, stopped by pid."""
    sched_file = tmp_path / "scheduler.json"
    env = {**os.environ, "DASK_LOGGING__DISTRIBUTED": "warning"}
    procs = [
        subprocess.Popen(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file", str(sched_file)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
    ]  # fmt: skip
    try:
        deadline = time.time() + 60
        while not sched_file.exists() and time.time() < deadline:
            time.sleep(0.2)
        address = json.loads(sched_file.read_text())["address"]
        for _ in range(2):
            procs.append(
                subprocess.Popen(
                    [DASK, "worker", address, "--host", "127.0.0.1", "--nthreads", "1", "--no-dashboard"],
                    env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
        from distributed import Client

        with Client(address, timeout=60) as c:
            c.wait_for_workers(2, timeout=90)
        yield address, procs
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()


@pytest.mark.cluster
def test_score_through_a_running_scheduler(demo, tmp_path, dask_cluster):
    address, procs = dask_cluster
    job = write_job(tmp_path, demo, cluster="local")  # --scheduler wins over the file
    r = dscore("score", job, "--scheduler", address, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "dscore complete: 6,000 rows in 6 partitions" in r.stdout
    files = sorted(glob.glob(str(tmp_path / "out" / "part-*.parquet")))
    out = pa.concat_tables(pq.read_table(f) for f in files)
    assert sorted(out.column("user_id").to_pylist()) == list(range(6000))
    report = json.load(open(tmp_path / "out" / "_report.json"))
    assert report["cluster"] == address and report["rows_scored"] == 6000
    assert all(p.poll() is None for p in procs)  # the cluster outlives the job


def test_vocab_command_fits_the_job_tables(demo, tmp_path):
    job = write_job(tmp_path, demo, vocab=str(tmp_path / "vocab"))
    r = dscore("vocab", job, "--min-count", "2", "--set", "workers=1")
    assert r.returncode == 0, r.stderr
    assert "wrote Vocabulary(" in r.stdout
    fitted = Vocabulary.load(str(tmp_path / "vocab"))
    assert fitted == demo["vocab"]  # same tables as Vocabulary.fit on the same input


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model": {"path": "m.pt", "batchsize": 4}}, "unknown key 'model.batchsize'; allowed keys: path, format"),
        ({"partition_rows": "many"}, "partition_rows: expected a positive integer, got 'many' (str)"),
        ({"fields": [{"name": "apps", "kind": "csv"}]}, "fields[0]: field 'apps': kind is 'csv'; expected one of"),
    ],
)
def test_bad_job_file_is_one_clear_line(demo, tmp_path, change, message):
    job = write_job(tmp_path, demo, **change)
    r = dscore("score", job)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dscore: error: ") and message in lines[0], r.stderr


def test_missing_key_and_missing_file(demo, tmp_path):
    data = {k: v for k, v in demo["job"].items() if k != "output"}
    (tmp_path / "j.yaml").write_text(yaml.safe_dump(data))
    r = dscore("score", str(tmp_path / "j.yaml"))
    assert r.returncode == 1 and "missing required key 'output'" in r.stderr
    r = dscore("score", str(tmp_path / "absent.yaml"))
    assert r.returncode == 1 and "job file" in r.stderr and "does not exist" in r.stderr


def test_dask_cli_entry_point():
    r = subprocess.run([DASK, "dscore", "score", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "--scheduler" in r.stdout and "JOB" in r.stdout


# ---------------------------------------------------------------- errors: one line, or a bug's traceback
def test_a_dscore_error_is_one_line_and_status_1(demo, tmp_path):
    job = write_job(tmp_path, demo)
    r = dscore("score", job, "--set", "dscore.tune.rowz=5")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip() == "dscore: error: --set dscore.tune.rowz: no such setting; the settings and their " \
                               "defaults are in dscore/dscore.yaml"  # fmt: skip


def test_a_bug_shows_its_traceback(demo, tmp_path):
    job = write_job(tmp_path, demo)
    code = (
        "import sys, dscore.pipeline as p\n"
        "def run(spec, **kw):\n"
        "    return {}['a key dscore forgot']\n"
        "p.run = run\n"
        "from dscore.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    r = subprocess.run([sys.executable, "-c", code, "score", job], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "Traceback (most recent call last)" in r.stderr and "in run" in r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        "dscore: bug: KeyError: 'a key dscore forgot'; please report it with the traceback above"
    )


def test_command_errors_are_one_line(tmp_path):
    r = dscore("report", str(tmp_path))
    assert r.returncode == 1 and r.stderr.strip() == f"dscore: error: no _report.json in {str(tmp_path)!r}: no job " \
                                                     "has finished a run there"  # fmt: skip
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"input": "in/", "output": "out/", "model": "m.pt",
                                   "fields": [{"name": "f", "buckets": 8}]}))  # fmt: skip
    r = dscore("vocab", str(job))
    assert r.returncode == 1
    assert r.stderr.strip() == f"dscore: error: {job}: set 'vocab' to the directory the tables should go to"


def test_verbose_shows_the_traceback_of_every_error(demo, tmp_path):
    job = write_job(tmp_path, demo, partition_rows="many")
    r = dscore("-v", "score", job)
    assert r.returncode == 1
    assert "Traceback (most recent call last)" in r.stderr and "SpecError" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("dscore: error: ")
    assert "partition_rows: expected a positive integer, got 'many' (str)" in r.stderr.strip().splitlines()[-1]


def test_ctrl_c_race_in_distributed_sync_is_not_shown_as_a_traceback():
    """distributed.utils.sync's cancel() can read its future before it is assigned when
    Ctrl-C comes first; the CLI drops that NameError from tornado's log (and only that)."""
    import logging
    import os

    from dscore.cli import _sync_cancel_race

    src = "def make():\n    future: object\n    def cancel():\n        return future\n    return cancel\n"

    def record(filename):
        scope = {}
        exec(compile(src, filename, "exec"), scope)
        try:
            scope["make"]()()
        except NameError as e:
            return logging.LogRecord(
                "tornado.application", logging.ERROR, filename, 1, "x", None, (NameError, e, e.__traceback__)
            )
        raise AssertionError("cancel() read an assigned future")

    assert not _sync_cancel_race(record(os.path.join("site-packages", "distributed", "utils.py")))
    assert _sync_cancel_race(record(os.path.join("dscore", "pipeline.py")))
    assert _sync_cancel_race(logging.LogRecord("tornado.application", logging.ERROR, "f", 1, "x", None, None))
