"""The benchmark harness measures what it says (small data; figures are not checked)."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from dscore import bench

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    return bench.prepare(str(tmp_path_factory.mktemp("bench") / "w"), 12_000)


def test_pieces_of_the_benchmark(job):
    layout = bench.Layout(1, 2, 1)
    rows = bench.run_model_modes(
        job, layout, [("torchscript", "none", 1024), ("torchscript", "freeze", 1024), ("eager", "none", 1024)], 0.1
    )
    assert [r["mode"] for r in rows] == ["none", "freeze", "none"]
    assert all(r["rows_per_s"] > 0 and r["max_diff"] <= 1e-6 for r in rows)  # eager == TorchScript
    assert "vs TorchScript 8192" in bench.format_modes([*rows, {**rows[0], "batch": 8192}])
    # The in-worker figure comes from the nanny's worker processes, the in-process one from this process.
    assert os.getpid() not in rows[0]["pids"] and len(rows[0]["pids"]) == 1
    import torch

    before = torch.get_num_threads(), os.environ.get("DSCORE_TORCH_THREADS")
    here = bench.run_model_only(job, layout, 1024, "freeze", 0.1, in_process=True)
    assert here["pids"] == [os.getpid()] and here["rows_per_s"] > 0 and here["max_diff"] <= 1e-6
    assert (torch.get_num_threads(), os.environ.get("DSCORE_TORCH_THREADS")) == before  # nothing leaks to later tests
    assert bench.run_read_only(job, layout)["rows_per_s"] > 0
    plain = bench.run_plain_dask(job, layout, 1024)
    out = glob.glob(os.path.join(os.path.dirname(job), "scores-plain-dask", "*.parquet"))
    assert plain["rows_per_s"] > 0 and sum(pq.read_metadata(f).num_rows for f in out) == 12_000
    assert bench.run_single_process(job, 1024)["rows"] == 12_000


def test_onnx_runtime_beside_torchscript(job):
    """``--model-only`` exports the demo model to ONNX and times ONNX Runtime on the same rows."""
    assert ("onnx", "none", 8192) in bench.mode_plan()
    plan = [("torchscript", "none", 1024), ("onnx", "none", 1024), ("onnx", "freeze", 1024)]
    rows = bench.run_model_modes(job, bench.Layout(1, 1, 1), plan, 0.1, in_process=True)
    assert os.path.exists(os.path.join(os.path.dirname(job), "model.onnx"))
    assert [(r["variant"], r["mode"]) for r in rows] == [(v, m) for v, m, _ in plan]
    assert all(r["rows_per_s"] > 0 and r["max_diff"] <= 1e-6 for r in rows[:2])  # ONNX Runtime == TorchScript
    assert "ONNX Runtime" in rows[2]["error"]
    assert "\nonnx        none       1024" in bench.format_modes([*rows, {**rows[0], "batch": 8192}])


def test_pandas_baseline_encodes_like_dscore(job):
    """The plain-Dask baseline must do the same work: same indices as dscore for every field."""
    import numpy as np

    from dscore import Vocabulary, encode
    from dscore.spec import JobSpec

    spec = JobSpec.load(job)
    table = pq.read_table(sorted(glob.glob(spec.input[0]))[0]).slice(0, 500)
    vocab = Vocabulary.load(spec.vocab)
    ours = encode(table, spec.fields, vocab)
    df = table.to_pandas()
    for f in spec.fields:
        mapping = dict(zip(*(vocab[f.name].column(c).to_pylist() for c in ("token", "index"))))
        theirs = bench._pandas_encode(df[f.column], f, mapping)
        np.testing.assert_array_equal(theirs, ours[f.name])


def test_bench_models_cli(tmp_path):
    """``dscore bench --models`` on a few rows: each model asked for, in both forms, gets its
    line, and the JSON holds each figure (their values are not checked). One of the zoo's
    models (two outputs) keeps the suite short; tests/test_zoo.py checks every model."""
    out = tmp_path / "models.json"
    r = subprocess.run(
        [sys.executable, "-m", "dscore.cli", "bench", "--models", "--only", "two_output", "--rows", "10000", "--seconds", "0.02",
         "--layout", "2x1x1", "--workdir", str(tmp_path / "w"), "--json", str(out)],
        capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert any(line.startswith("read-only ceiling") and "encode-only ceiling" in line for line in lines)
    res = json.loads(out.read_text())["models"]
    variants = ["two_output torchscript", "two_output eager"]
    assert [m["variant"] for m in res["models"]] == variants
    for m in res["models"]:
        assert sum(line.startswith(m["variant"] + " ") for line in lines) == 1, m["variant"]
        assert m["in_process"]["max_diff"] <= 1e-6  # eager scores as its TorchScript twin
        # Two worker processes, neither of them the one that measured in process.
        assert len(m["in_workers"]["pids"]) == 2 and not set(m["in_workers"]["pids"]) & set(m["in_process"]["pids"])
        assert m["dscore"]["report"]["rows_scored"] == 10_000
        assert 0 < m["serial_ceiling"] < min(res["read_only"]["rows_per_s"], res["encode_only"]["rows_per_s"])
    two = res["models"][-1]["dscore"]["report"]
    assert two["model"]["outputs"] == ["score_0", "score_1"]


def test_bench_multi_model(tmp_path):
    """``dscore bench --multi-model``'s figures on a few rows: one job with two models
    against a job for each, in one run (their values are not checked)."""
    res = bench.multi_model(str(tmp_path / "w"), 10_000, bench.Layout(1, 2, 1))
    assert res["models"] == ["masked_mean", "two_output"]
    assert set(res["together"]["execution"]) == {"masked_mean", "two_output"}
    assert [r["model"] for r in res["separate"]] == ["masked_mean", "two_output"]
    assert all(r["rows_per_s"] > 0 for r in [res["together"], *res["separate"], res["separate_total"]])
    assert res["ratio"] == res["together"]["rows_per_s"] / res["separate_total"]["rows_per_s"]
    text = bench.format_multi_model(res)
    assert "one job, models: masked_mean, two_output" in text and "x the separate jobs" in text
    out = pq.read_table(str(tmp_path / "w" / "scores-multi"))
    assert out.column_names == ["user_id", "masked_mean", "two_output_0", "two_output_1"] and out.num_rows == 10_000
