"""An EmbeddingBag model fed jagged rows (``model.inputs: jagged``), end to end through
``dscore score`` and ``dscore verify`` on a local cluster, against a direct call of the
model on the reference encoding and against the same weights as a padded masked mean."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from dscore import zoo
from dscore.demo import FIELDS, make_table, package_names
from dscore.jagged import Jagged
from dscore.verify import reference_values

from . import naive

BUCKETS = 997  # hashing mode: no mapping tables to fit


def _dscore(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "dscore.cli", *args],
        capture_output=True, text=True, timeout=600, cwd=cwd,
        env={**os.environ, "DASK_LOGGING__DISTRIBUTED": "warning"},
    )  # fmt: skip


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("jagged")
    # max_len 4 for apps: most rows are truncated (head and tail both covered)
    fields = [type(f)(**{**f.to_dict(), "buckets": BUCKETS, "max_len": min(f.max_len, 4)}) for f in FIELDS]
    fields[3] = type(fields[3])(**{**fields[3].to_dict(), "truncate": "tail", "pad": "left"})
    apps = package_names(2000)
    tables = [make_table(300, seed=i, first_id=300 * i, apps=apps) for i in range(2)]
    for i, t in enumerate(tables):
        pq.write_table(t, root / f"part-{i}.parquet", row_group_size=100)
    models = zoo.export(str(root), [BUCKETS + 2] * 4, seed=5, names=["embedding_bag", "embedding_bag_jagged"])
    spec = {
        "input": str(root / "part-*.parquet"),
        "output": str(root / "scores"),
        "id_columns": ["user_id"],
        "fields": [f.to_dict(compact=True) for f in fields],
        "model": {**models["embedding_bag_jagged"]["torchscript"], "inputs": "jagged", "batch_size": 128},
        "partition_rows": 200,
        "cluster": "local",
        "workers": 1,
    }
    return {"root": root, "fields": fields, "table": pa.concat_tables(tables), "models": models, "spec": spec}


@pytest.mark.cluster
def test_jagged_job_matches_the_model_on_the_reference_encoding(job):
    root = job["root"]
    (root / "job.yaml").write_text(yaml.safe_dump(job["spec"], sort_keys=False))
    r = _dscore("score", str(root / "job.yaml"), cwd=root)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "dscore complete: 600 rows" in r.stdout

    out = pq.read_table(str(root / "scores"))
    got = out.column("score").to_numpy()[np.argsort(out.column("user_id").to_numpy())]
    padded = [naive.encode(reference_values(job["table"].column(f.column)), f)[0] for f in job["fields"]]
    assert any((np.diff(Jagged.from_padded(p).offsets) == 0).any() for p in padded)  # empty rows covered
    model = torch.jit.load(job["models"]["embedding_bag_jagged"]["torchscript"]["path"]).eval()
    inputs = []
    for p in padded:
        values, offsets = Jagged.from_padded(p)
        inputs += [torch.from_numpy(values).long(), torch.from_numpy(offsets[:-1])]
    with torch.no_grad():
        want = model(*inputs).numpy()
        # the same weights as a masked mean over the padded rows
        masked = zoo.masked_mean([BUCKETS + 2] * 4)
        masked.load_state_dict(torch.load(job["models"]["embedding_bag"]["eager"]["path"], weights_only=True))
        mean = masked.eval()(*(torch.from_numpy(p).long() for p in padded)).numpy()
    assert np.abs(got - want).max() <= 1e-6
    assert np.abs(got.astype(np.float64) - mean).max() <= 1e-6
    assert got.std() > 1e-3

    r = _dscore("verify", str(root / "job.yaml"), "--sample", "300", "--tolerance", "1e-6", cwd=root)
    assert r.returncode == 0 and "PASS" in r.stdout, r.stdout + r.stderr


@pytest.mark.cluster
def test_jagged_inputs_to_a_padded_model_fail_the_probe_in_one_line(job):
    root = job["root"]
    spec = {
        **job["spec"],
        "output": str(root / "refused"),
        "model": {**job["models"]["embedding_bag"]["torchscript"], "inputs": "jagged"},
    }
    (root / "refused.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    r = _dscore("score", str(root / "refused.yaml"), cwd=root)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dscore: error: "), r.stderr
    assert "fails on a one-row probe batch" in lines[0] and "model.inputs" in lines[0]
    assert not (root / "refused" / "_parts").exists()  # no task ran


@pytest.mark.cluster
def test_jagged_and_padded_models_in_one_job(job):
    """``models:`` with one model fed jagged rows and one fed padded rows: each form is
    encoded once, and each model's column equals the model on the reference encoding."""
    root = job["root"]
    models = job["models"]
    spec = {k: v for k, v in job["spec"].items() if k != "model"}
    spec["output"] = str(root / "both")
    spec["models"] = {
        "bag": {**models["embedding_bag_jagged"]["torchscript"], "inputs": "jagged"},
        "mean": {**models["embedding_bag"]["torchscript"], "batch_size": 64},
    }
    (root / "both.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    r = _dscore("score", str(root / "both.yaml"), cwd=root)
    assert r.returncode == 0, r.stdout + r.stderr
    out = pq.read_table(str(root / "both"))
    assert out.column_names == ["user_id", "bag", "mean"]
    order = np.argsort(out.column("user_id").to_numpy())
    padded = [naive.encode(reference_values(job["table"].column(f.column)), f)[0] for f in job["fields"]]
    with torch.no_grad():
        bag = torch.jit.load(models["embedding_bag_jagged"]["torchscript"]["path"]).eval()
        jagged = [Jagged.from_padded(p) for p in padded]
        want_bag = bag(*[t for v, o in jagged for t in (torch.from_numpy(v).long(), torch.from_numpy(o[:-1]))])
        mean = torch.jit.load(models["embedding_bag"]["torchscript"]["path"]).eval()
        want_mean = mean(*(torch.from_numpy(p).long() for p in padded))
    assert np.abs(out.column("bag").to_numpy()[order] - want_bag.numpy().ravel()).max() <= 1e-6
    assert np.abs(out.column("mean").to_numpy()[order] - want_mean.numpy().ravel()).max() <= 1e-6

    r = _dscore("verify", str(root / "both.yaml"), "--sample", "200", "--tolerance", "1e-6", cwd=root)
    assert r.returncode == 0 and r.stdout.count("PASS") >= 1, r.stdout + r.stderr
    assert "bag" in r.stdout and "mean" in r.stdout
