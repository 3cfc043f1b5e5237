from __future__ import annotations

import pyarrow.parquet as pq
import pytest

BUCKETS = 61


@pytest.fixture(scope="module")
def tiny_job(tmp_path_factory):
    """A small job on disk that needs no mapping tables (every field hashes): demo data
    of 160 rows in 2 row groups, and the demo model as TorchScript, random weights."""
    import torch

    from dscore.demo import FIELDS, build_model, make_table, package_names
    from dscore.spec import Field

    root = tmp_path_factory.mktemp("tiny")
    fields = [Field(f.name, kind=f.kind, max_len=min(f.max_len, 12), buckets=BUCKETS) for f in FIELDS]
    pq.write_table(make_table(160, seed=3, apps=package_names(300)), root / "data.parquet", row_group_size=80)
    torch.manual_seed(0)
    model = build_model([BUCKETS + 2] * len(fields), dim=8, hidden=(16,))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    torch.jit.save(torch.jit.script(model), str(root / "model.pt"))
    return {
        "input": str(root / "data.parquet"),
        "output": str(root / "scores"),
        "id_columns": ["user_id"],
        "fields": [f.to_dict(compact=True) for f in fields],
        "model": {"path": str(root / "model.pt"), "batch_size": 64},
    }
