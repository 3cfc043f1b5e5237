from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from dscore.demo import FIELDS, build_model, make_table, package_names, vocab_sizes

DEMO_ROWS = 3 * 2000


@pytest.fixture
def rng():
    return np.random.default_rng(20261127)


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """A small demo job on disk: 3 parquet files of 2000 rows (row groups of 500), fitted
    mapping tables, and the reference model as TorchScript, torch.export and state_dict."""
    import dask
    import torch

    from dscore import Vocabulary

    root = tmp_path_factory.mktemp("demo")
    apps = package_names(5000)
    for i in range(3):
        t = make_table(2000, seed=i, first_id=2000 * i, apps=apps)
        pq.write_table(t, root / f"part-{i}.parquet", row_group_size=500)
    data = str(root / "part-*.parquet")
    with dask.config.set(scheduler="sync"):
        vocab = Vocabulary.fit(data, FIELDS, min_count=2)
    vocab.save(str(root / "vocab"))
    torch.manual_seed(0)
    model = build_model(vocab_sizes(vocab), dim=8, hidden=(16,))
    with torch.no_grad():  # random but not tiny weights, so that scores spread out
        for p in model.parameters():
            p.normal_(0, 0.5)
        for emb in (model.device_name, model.device_model, model.apps, model.campaigns):
            emb.weight[0].zero_()
    torch.jit.save(torch.jit.script(model), str(root / "model.pt"))
    torch.save(model.state_dict(), str(root / "state.pt"))
    example = tuple(torch.ones((2, f.max_len), dtype=torch.int64) for f in FIELDS)
    batch = torch.export.Dim("batch", min=1)
    ep = torch.export.export(model, example, dynamic_shapes=tuple({0: batch} for _ in FIELDS))
    torch.export.save(ep, str(root / "model.pt2"))
    job = {
        "input": data,
        "output": str(root / "scores"),
        "id_columns": ["user_id"],
        "vocab": str(root / "vocab"),
        "fields": [f.to_dict(compact=True) for f in FIELDS],
        "model": {"path": str(root / "model.pt"), "batch_size": 700},
        "partition_rows": 1000,
    }
    return {
        "root": root,
        "data": data,
        "vocab": vocab,
        "sizes": vocab_sizes(vocab),
        "eager": model,
        "job": job,
    }


@pytest.fixture(scope="module")
def many(demo, tmp_path_factory):
    """24 files of 400 rows (row groups of 100): 48 partitions of 200 rows."""
    root = tmp_path_factory.mktemp("many")
    apps = package_names(5000)
    for i in range(24):
        pq.write_table(
            make_table(400, seed=100 + i, first_id=400 * i, apps=apps), root / f"f{i:02d}.parquet", row_group_size=100
        )
    job = {**demo["job"], "input": str(root / "f*.parquet"), "partition_rows": 200}
    return {"root": root, "job": job, "rows": 24 * 400, "partitions": 48}


@pytest.fixture(scope="module")
def client():
    """A LocalCluster of 2 worker processes for the module's tests."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as lc:
        with Client(lc) as c:
            yield c
