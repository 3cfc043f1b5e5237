"""Helpers shared by the integration tests."""

from __future__ import annotations

import contextlib
import logging

import pyarrow as pa
import pyarrow.parquet as pq

from dscore.demo import FIELDS


def reference_scores(demo, paths=None, fields=FIELDS):
    """Eager PyTorch on the plain-Python reference encoding: {user_id: score}."""
    import glob

    import torch

    from . import naive

    paths = paths or sorted(glob.glob(demo["data"]))
    table = pa.concat_tables(pq.read_table(p) for p in paths)
    mapping = {
        f.name: dict(zip(demo["vocab"][f.name].column("token").to_pylist(), demo["vocab"][f.name].column("index").to_pylist()))
        for f in fields
    }
    inputs = [
        torch.from_numpy(naive.encode(table.column(f.column).to_pylist(), f, mapping[f.name])[0]).long()
        for f in fields
    ]
    with torch.inference_mode():
        scores = demo["eager"](*inputs).numpy()
    return dict(zip(table.column("user_id").to_pylist(), scores.tolist()))



@contextlib.contextmanager
def captured_logs(logger: str, level: int):
    """The records ``logger`` emits at ``level`` and above inside the block.

    caplog's stand-in: the suite also runs with ``-p no:logging``, which removes caplog.
    """
    records: list = []
    handler = logging.Handler(level)
    handler.emit = records.append
    log = logging.getLogger(logger)
    old = log.level
    log.addHandler(handler)
    log.setLevel(min(level, old) if old else level)
    try:
        yield records
    finally:
        log.removeHandler(handler)
        log.setLevel(old)
