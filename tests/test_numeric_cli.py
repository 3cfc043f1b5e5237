"""A Wide & Deep-style model with a numeric input, end to end through ``dscore score``
on a local cluster, against a direct eager call of the model on the reference encoding."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from dscore.demo import FIELDS, NUMERIC_FIELD, WideDeepModel, make_table, package_names
from dscore.spec import JobSpec
from dscore.verify import reference_scores, reference_values

from . import naive

BUCKETS = 997  # hashing mode: no mapping tables to fit


@pytest.mark.cluster
def test_wide_deep_numeric_job_matches_eager_model(tmp_path):
    fields = [type(f)(**{**f.to_dict(), "buckets": BUCKETS}) for f in FIELDS] + [NUMERIC_FIELD]
    apps = package_names(2000)
    tables = [make_table(600, seed=i, first_id=600 * i, apps=apps, numeric=True) for i in range(2)]
    for i, t in enumerate(tables):
        pq.write_table(t, tmp_path / f"part-{i}.parquet", row_group_size=200)
    table = pa.concat_tables(tables)
    sessions = table.column("sessions_per_day")
    nulls = sessions.null_count
    nans = int(np.isnan(sessions.to_numpy(zero_copy_only=False)).sum()) - nulls
    assert nulls > 0 and nans > 0  # the job has rows of both kinds to fill

    torch.manual_seed(0)
    model = WideDeepModel([BUCKETS + 2] * 4, dim=8, hidden=(16,))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
        for emb in (model.deep.device_name, model.deep.device_model, model.deep.apps, model.deep.campaigns):
            emb.weight[0].zero_()
    model.eval()
    torch.jit.save(torch.jit.script(model), str(tmp_path / "model.pt"))
    job = {
        "input": str(tmp_path / "part-*.parquet"),
        "output": str(tmp_path / "scores"),
        "id_columns": ["user_id"],
        "fields": [f.to_dict(compact=True) for f in fields],
        "model": {"path": str(tmp_path / "model.pt"), "batch_size": 256},
        "partition_rows": 200,
        "cluster": "local",
        "workers": 1,
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job, sort_keys=False))
    r = subprocess.run(
        [sys.executable, "-m", "dscore.cli", "score", str(tmp_path / "job.yaml")],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={**os.environ, "DASK_LOGGING__DISTRIBUTED": "warning"},
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "dscore complete: 1,200 rows" in r.stdout
    assert f"sessions_per_day numeric: {nulls + nans:,} values null or NaN, filled" in r.stdout, r.stdout
    report = json.loads((tmp_path / "scores" / "_report.json").read_text())
    assert report["fields"]["sessions_per_day"]["filled"] == nulls + nans

    out = pq.read_table(str(tmp_path / "scores"))
    ids = out.column("user_id").to_numpy()
    inputs = []
    for f in fields:
        values = reference_values(table.column(f.column))
        if f.numeric:
            x = naive.numeric(values, f)[0]
            assert (x[np.flatnonzero(~np.isfinite(sessions.to_numpy(zero_copy_only=False)))] == -1.0).all()
            inputs.append(torch.from_numpy(x))
        else:
            inputs.append(torch.from_numpy(naive.encode(values, f)[0]).long())
    with torch.no_grad():
        want = model(*inputs).numpy()
    got = out.column("score").to_numpy()
    diff = np.abs(got - want[ids])
    assert diff.max() <= 1e-6, diff.max()
    assert got.std() > 0.01
    # dscore verify's reference (the eager encoding through dscore's Model) agrees too
    verified = reference_scores(JobSpec.load(str(tmp_path / "job.yaml")), table)[:, 0]
    assert np.abs(verified - want).max() <= 1e-6
    r = subprocess.run(
        [sys.executable, "-m", "dscore.cli", "verify", str(tmp_path / "job.yaml"), "--sample", "400",
         "--tolerance", "1e-6"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={**os.environ, "DASK_LOGGING__DISTRIBUTED": "warning"},
    )  # fmt: skip
    assert r.returncode == 0 and "PASS" in r.stdout, r.stdout + r.stderr


@pytest.mark.cluster
def test_numeric_input_errors_name_the_file_and_column(tmp_path):
    """A string column fails at planning; a list row of the wrong length fails its partition;
    both name the file and the column."""
    model = torch.nn.Linear(2, 1)
    torch.jit.save(torch.jit.script(model), str(tmp_path / "model.pt"))
    good = pa.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], pa.list_(pa.float64()))
    bad = pa.array([[1.0, 2.0], None, [5.0, 6.0, 7.0]], pa.list_(pa.float64()))
    (tmp_path / "a").mkdir()
    pq.write_table(pa.table({"user_id": [0, 1, 2], "vec": good}), tmp_path / "a" / "part-0.parquet")
    pq.write_table(pa.table({"user_id": [3, 4, 5], "vec": bad}), tmp_path / "a" / "part-1.parquet")
    (tmp_path / "b").mkdir()
    pq.write_table(pa.table({"user_id": [0], "vec": ["1,2"]}), tmp_path / "b" / "part-0.parquet")

    def score(data):
        job = {
            "input": str(tmp_path / data / "*.parquet"),
            "output": str(tmp_path / f"scores-{data}"),
            "id_columns": ["user_id"],
            "fields": [{"name": "v", "column": "vec", "kind": "numeric", "size": 2}],
            "model": {"path": str(tmp_path / "model.pt")},
            "cluster": "local",
            "workers": 1,
        }
        (tmp_path / "job.yaml").write_text(yaml.safe_dump(job, sort_keys=False))
        return subprocess.run(
            [sys.executable, "-m", "dscore.cli", "score", str(tmp_path / "job.yaml")],
            capture_output=True, text=True, timeout=600, cwd=tmp_path,
            env={**os.environ, "DASK_LOGGING__DISTRIBUTED": "warning"},
        )  # fmt: skip

    r = score("a")
    assert r.returncode != 0
    assert "part-1.parquet" in r.stderr and "field 'v' (column 'vec', kind 'numeric'): row 2" in r.stderr, r.stderr
    assert "is a list of 3 numbers; expected 2" in r.stderr
    r = score("b")
    assert r.returncode != 0
    assert "part-0.parquet" in r.stderr and "column 'vec', kind 'numeric', size 2) expects" in r.stderr, r.stderr
    assert "found string" in r.stderr
