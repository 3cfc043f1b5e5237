"""The benchmark harness measures what it says (small data; figures are not checked)."""

from __future__ import annotations

import glob
import os

import pyarrow.parquet as pq
import pytest

from dscore import bench

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    return bench.prepare(str(tmp_path_factory.mktemp("bench") / "w"), 12_000)


def test_pieces_of_the_benchmark(job):
    layout = bench.Layout(1, 2, 1)
    rows = bench.run_model_modes(job, layout, [("torchscript", "none", 1024), ("torchscript", "freeze", 1024), ("eager", "none", 1024)], 0.1)
    assert [r["mode"] for r in rows] == ["none", "freeze", "none"]
    assert all(r["rows_per_s"] > 0 and r["max_diff"] <= 1e-6 for r in rows)  # eager == TorchScript
    assert "vs TorchScript 8192" in bench.format_modes([*rows, {**rows[0], "batch": 8192}])
    assert bench.run_read_only(job, layout)["rows_per_s"] > 0
    plain = bench.run_plain_dask(job, layout, 1024)
    out = glob.glob(os.path.join(os.path.dirname(job), "scores-plain-dask", "*.parquet"))
    assert plain["rows_per_s"] > 0 and sum(pq.read_metadata(f).num_rows for f in out) == 12_000
    assert bench.run_single_process(job, 1024)["rows"] == 12_000


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
