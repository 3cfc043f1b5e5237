"""dscore verify: the diff table against the eager reference."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from dscore import JobSpec
from dscore.verify import diff_table, sample, verify


def test_diff_table_statistics():
    d = np.array([[0.0, -1e-7], [2e-7, 3e-7]])
    t = diff_table(d, missing=1, duplicated=2)
    assert t["count"] == 4 and t["max"] == pytest.approx(3e-7) and t["mean"] == pytest.approx(1.5e-7)
    assert t["p50"] == pytest.approx(1.5e-7) and t["rows_missing"] == 1 and t["rows_duplicated"] == 2


def test_sample_is_reproducible(demo):
    job = JobSpec.from_dict(demo["job"])
    a, b, c = sample(job, 500, seed=1), sample(job, 500, seed=1), sample(job, 500, seed=2)
    assert a.num_rows == 500 and a.equals(b) and not a.equals(c)
    assert len(set(a.column("__dscore_row").to_pylist())) == 500
    assert sample(job, 10**9).num_rows == 6000  # the whole input at most


@pytest.mark.cluster
def test_verify_passes_on_the_demo_job(demo, client, tmp_path):
    job = {**demo["job"], "output": str(tmp_path / "out")}
    result = verify(job, n=3000, seed=7, client=client)
    t = result["table"]
    assert result["passed"] and t["count"] == 3000 and t["rows_missing"] == 0 and t["rows_duplicated"] == 0
    assert t["p99"] <= 1e-7 and t["max"] <= 1e-6
    assert result["execution"]  # which batch size and mode the workers ran
    saved = json.load(open(tmp_path / "out-verify" / "verify.json"))
    assert saved["table"] == t


@pytest.mark.cluster
def test_verify_cli_flags_a_lower_precision(demo, tmp_path):
    """bf16 against fp32 with a tolerance it cannot meet: the table shows it, exit status 4."""
    job = {**demo["job"], "output": str(tmp_path / "out"), "workers": 1,
           "model": {**demo["job"]["model"], "precision": "bf16"}}  # fmt: skip
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    cmd = [sys.executable, "-m", "dscore.cli", "verify", str(path), "--sample", "1000", "--against", "fp32"]
    r = subprocess.run(
        [*cmd, "--tolerance", "1e-6", "--json", str(tmp_path / "v.json")], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 4, r.stdout + r.stderr
    assert "against the fp32 reference" in r.stdout and "FAIL" in r.stdout
    table = json.load(open(tmp_path / "v.json"))["table"]
    assert 1e-5 < table["max"] < 0.1 and table["count"] == 1000
    r = subprocess.run([*cmd, "--tolerance", "0.1"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "PASS" in r.stdout
