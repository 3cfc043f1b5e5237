"""The examples run as documented."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dscore import JobSpec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_example(name, *args, cwd):
    r = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", name), *args],
        capture_output=True, text=True, timeout=600, cwd=cwd,
        env={**os.environ, "DASK_LOGGING__DISTRIBUTED": "warning"},
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


@pytest.mark.cluster
def test_quickstart_then_dataframe_example_then_job_file(tmp_path):
    out = run_example("quickstart.py", "--rows", "20000", "--workdir", "ex", cwd=tmp_path)
    assert "dscore complete: 20,000 rows" in out
    out = run_example("score_dask_dataframe.py", "--workdir", "ex", cwd=tmp_path)
    assert "wrote" in out and os.path.isdir(tmp_path / "ex" / "scores-from-dataframe")
    # examples/job.yaml names paths under dscore-example/: run it against the same files.
    os.symlink(tmp_path / "ex", tmp_path / "dscore-example")
    r = subprocess.run(
        [sys.executable, "-m", "dscore.cli", "score", os.path.join(ROOT, "examples", "job.yaml"), "--set", "workers=1"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "dscore complete: 20,000 rows" in r.stdout


def test_example_job_lists_every_option():
    job = JobSpec.load(os.path.join(ROOT, "examples", "job.yaml"))
    text = open(os.path.join(ROOT, "examples", "job.yaml")).read()
    for key in JobSpec.CHECKS:
        if key == "models":  # the alternative to model:, so commented out
            assert "\n# models:" in text
            continue
        assert f"\n{key}:" in text, key
    for key in job.model.CHECKS:
        assert f"  {key}:" in text, key
    for key in job.csv.CHECKS:
        assert f"  {key}:" in text, key
