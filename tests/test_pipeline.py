"""End-to-end scoring on a real local cluster of worker processes."""

from __future__ import annotations

import glob
import json
import os
import pickle

import dask.dataframe as dd
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import dscore
from dscore.errors import JobError
from dscore.plan import plan_job
from dscore.scorer import Scorer
from dscore.spec import JobSpec, SpecError

from .helpers import reference_scores

pytestmark = pytest.mark.cluster


def read_output(path):
    files = sorted(glob.glob(os.path.join(path, "part-*.parquet")))
    return files, pa.concat_tables(pq.read_table(f) for f in files)


def test_end_to_end_matches_eager_reference(demo, client, tmp_path):
    job = {**demo["job"], "output": str(tmp_path / "out")}
    report = dscore.run(job, client=client, progress=False)
    assert report.status == "complete" and report.rows == 6000 and report.partitions == 6
    files, out = read_output(job["output"])
    assert len(files) == 6  # one file per input partition (2 row groups of 500 each)
    assert out.column_names == ["user_id", "score"]
    assert out.schema.field("score").type == pa.float32()
    ids = out.column("user_id").to_pylist()
    assert sorted(ids) == list(range(6000))  # every input row exactly once
    # rows keep their input order within each partition
    for f in files:
        part = pq.read_table(f).column("user_id").to_numpy()
        assert (np.diff(part) == 1).all()
    want = reference_scores(demo)
    got = out.column("score").to_numpy()
    diff = np.abs(got - np.array([want[i] for i in ids], dtype=np.float32))
    assert diff.max() <= 1e-6, diff.max()
    assert got.std() > 0.01  # the comparison is not between constants
    assert os.path.exists(os.path.join(job["output"], "_SUCCESS"))


def test_report_is_written_and_complete(demo, client, tmp_path):
    job = {**demo["job"], "output": str(tmp_path / "out")}
    report = dscore.run(job, client=client, progress=False)
    saved = json.load(open(tmp_path / "out" / "_report.json"))
    assert saved["rows_scored"] == 6000 and saved["rows_per_second"] > 0
    assert set(saved["stages"]) == {"read", "encode", "tune", "predict", "write"}
    assert all(v >= 0 for v in saved["stages"].values()) and saved["stages"]["predict"] > 0
    apps = saved["fields"]["apps"]
    assert 0 < apps["oov_rate"] < 0.2 and 30 < apps["mean_tokens"] < 50 and apps["rows"] == 6000
    assert saved["fields"]["campaigns"]["truncation_rate"] == 0
    assert "apps" in report.format() and "rows/s" in report.format()


def test_model_loaded_once_per_worker_process(demo, client, tmp_path):
    """12 partitions on 2 workers: each process reads the model file once, and again
    once only after the file changes."""
    import copy
    import shutil

    import torch

    def loads():
        from dscore import worker

        return 0 if worker._RUNTIME is None else worker._RUNTIME.loads["model"]

    model = tmp_path / "model.pt"
    shutil.copy(demo["root"] / "model.pt", model)
    job = {**demo["job"], "output": str(tmp_path / "out"), "partition_rows": 500, "model": {"path": str(model)}}
    before = client.run(loads)
    dscore.run(job, client=client, progress=False)
    first = client.run(loads)
    assert all(first[w] - before[w] <= 1 for w in first) and sum(first.values()) > sum(before.values())
    changed = copy.deepcopy(demo["eager"])
    with torch.no_grad():
        changed.mlp[-1].bias.add_(1.0)
    torch.jit.save(torch.jit.script(changed), str(model))
    with pytest.raises(JobError, match="different model"):  # resuming would mix two models
        dscore.run(job, client=client, progress=False)
    report = dscore.run(job, client=client, progress=False, overwrite=True)
    second = client.run(loads)
    assert all(second[w] - first[w] <= 1 for w in second) and sum(second.values()) > sum(first.values())
    assert report.scored_partitions == 12


def _graph_bytes(collection) -> int:
    return len(pickle.dumps(dict(collection.__dask_graph__()), protocol=5))


def test_graph_does_not_carry_the_model(demo, tmp_path):
    """The task graph holds the model's path and fingerprint, so its size does not
    depend on the model's size."""
    import torch

    from dscore.demo import build_model

    small = demo["root"] / "model.pt"
    big_model = build_model([s * 50 for s in demo["sizes"]], dim=64)
    big = tmp_path / "big.pt"
    torch.jit.save(torch.jit.script(big_model), str(big))
    assert os.path.getsize(big) > 50 * os.path.getsize(small)
    ddf = dd.read_parquet(demo["data"], dtype_backend="pyarrow")
    sizes = []
    for path in (small, big):
        scorer = Scorer(str(path), dscore.demo.FIELDS, demo["job"]["vocab"], id_columns=["user_id"])
        sizes.append(_graph_bytes(scorer.score(ddf)))
    assert abs(sizes[0] - sizes[1]) < 512, sizes


def test_scorer_on_a_dask_dataframe(demo, client):
    ddf = dd.read_parquet(demo["data"], dtype_backend="pyarrow")
    scorer = Scorer(demo["job"]["model"]["path"], dscore.demo.FIELDS, demo["job"]["vocab"], id_columns=["user_id"])
    scorer.register(client)
    result = scorer.score(ddf)
    assert list(result.columns) == ["user_id", "score"]
    df = result.compute()
    assert len(df) == 6000 and df["user_id"].is_unique
    want = reference_scores(demo)
    diff = np.abs(df["score"].to_numpy() - np.array([want[i] for i in df["user_id"]], dtype=np.float32))
    assert diff.max() <= 1e-6


def test_scorer_without_distributed(demo):
    """Scorer works with dask's threaded scheduler too (no worker plugin)."""
    import dask

    ddf = dd.read_parquet(demo["data"], dtype_backend="pyarrow").partitions[:1]
    scorer = Scorer(demo["job"]["model"]["path"], dscore.demo.FIELDS, demo["job"]["vocab"], id_columns=["user_id"])
    with dask.config.set(scheduler="threads"):
        df = scorer.score(ddf).compute()
    assert len(df) == 2000  # one partition per file


# ---------------------------------------------------------------- bad input fails before the cluster starts
@pytest.mark.parametrize(
    "change, exc, match",
    [
        (
            {"input": "/nonexistent/*.parquet"},
            FileNotFoundError,
            r"input '/nonexistent/\*.parquet' matched no data files",
        ),
        ({"input": "/nonexistent/dir"}, FileNotFoundError, r"input '/nonexistent/dir' does not exist"),
        (
            {"model": {"path": "/nonexistent/model.pt"}},
            ValueError,
            r"model file '/nonexistent/model.pt' does not exist",
        ),
        ({"id_columns": ["uid"]}, SpecError, r"part-0.parquet: id column 'uid' is not in the input"),
        (
            {"fields": [{"name": "apps", "column": "app_list"}]},
            SpecError,
            r"part-0.parquet: field 'apps' reads column 'app_list', which is not in the input",
        ),
        (
            {"fields": [{"name": "apps", "kind": "list"}]},
            SpecError,
            r"part-0.parquet: field 'apps' \(column 'apps', kind 'list'\) expects a list .* found string",
        ),
        ({"fields": [{"name": "nope", "column": "apps"}]}, FileNotFoundError, r"has no table for field 'nope'"),
    ],
)
def test_bad_input_fails_before_the_job(demo, tmp_path, change, exc, match):
    job = JobSpec.from_dict({**demo["job"], "output": str(tmp_path / "o"), **change})
    with pytest.raises(exc, match=match):
        plan_job(job)


def test_empty_input_directory(demo, tmp_path):
    (tmp_path / "empty").mkdir()
    job = JobSpec.from_dict({**demo["job"], "input": str(tmp_path / "empty")})
    with pytest.raises(FileNotFoundError, match="matched no data files"):
        plan_job(job)


def test_model_probe_failure_names_the_file(demo, tmp_path):
    import torch

    class ThreeInputs(torch.nn.Module):
        def forward(self, a, b, c):
            return a.float().sum(1)

    path = tmp_path / "three.pt"
    torch.jit.save(torch.jit.script(ThreeInputs()), str(path))
    job = JobSpec.from_dict({**demo["job"], "model": {"path": str(path)}})
    with pytest.raises(
        ValueError,
        match=r"three.pt' fails on a one-row probe batch called as model\(device_name, device_model, apps, campaigns\)",
    ):
        plan_job(job)


def test_tables_bigger_than_the_model_fail_before_the_job(demo, tmp_path):
    import dask

    with dask.config.set(scheduler="sync"):
        bigger = dscore.Vocabulary.fit(demo["data"], dscore.demo.FIELDS)  # min_count 1: more tokens
    bigger.save(str(tmp_path / "vocab"))
    job = JobSpec.from_dict({**demo["job"], "vocab": str(tmp_path / "vocab")})
    with pytest.raises(
        ValueError, match=r"fails on the largest indices the mapping tables produce \(device_name: \d+, .*apps: \d+"
    ):
        plan_job(job)


def test_refuses_a_foreign_output_directory(demo, client, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(JobError, match="is not empty and holds no dscore job"):
        dscore.run({**demo["job"], "output": str(tmp_path / "out")}, client=client, progress=False)


def test_unreachable_scheduler_is_one_clear_error():
    import dask

    from dscore.cluster import connect

    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        with pytest.raises(JobError, match=r"^cannot connect to the scheduler at tcp://127.0.0.1:9: Timed out"):
            with connect("tcp://127.0.0.1:9"):
                pass
        with pytest.raises(JobError, match=r"tls://127.0.0.1:9: .*source the client.env that cluster/tls.py wrote"):
            with connect("tls://127.0.0.1:9"):
                pass
