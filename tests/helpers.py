"""Helpers shared by the integration tests."""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dscore.demo import FIELDS


def reference_scores(demo, paths=None, fields=FIELDS):
    """Eager PyTorch on the plain-Python reference encoding: {user_id: score}."""
    import torch

    from dscore.verify import reference_values

    from . import naive

    paths = paths or sorted(glob.glob(demo["data"]))
    table = pa.concat_tables(pq.read_table(p) for p in paths)
    mapping = {
        f.name: dict(
            zip(demo["vocab"][f.name].column("token").to_pylist(), demo["vocab"][f.name].column("index").to_pylist())
        )
        for f in fields
    }
    inputs = [
        torch.from_numpy(naive.encode(reference_values(table.column(f.column)), f, mapping[f.name])[0]).long()
        for f in fields
    ]
    with torch.inference_mode():
        scores = demo["eager"](*inputs).numpy()
    return dict(zip(table.column("user_id").to_pylist(), scores.tolist()))


def check_exactly_once(demo, output, data_glob, rows, fields=FIELDS):
    """``output`` (a local directory) holds every row of ``data_glob`` (a glob, or a
    list of parquet files) once, with the eager reference's score (encoding
    ``fields``), and ``_SUCCESS``."""
    files = sorted(glob.glob(os.path.join(output, "part-*.parquet")))
    out = pa.concat_tables(pq.read_table(f) for f in files)
    ids = out.column("user_id").to_pylist()
    assert len(ids) == rows, f"{len(ids)} rows, expected {rows}"  # nothing lost, nothing duplicated
    assert len(set(ids)) == rows
    want = reference_scores(demo, data_glob if isinstance(data_glob, list) else sorted(glob.glob(data_glob)), fields)
    got = out.column("score").to_numpy()
    assert np.abs(got - np.array([want[i] for i in ids], dtype=np.float32)).max() <= 1e-6
    assert os.path.exists(os.path.join(output, "_SUCCESS"))
    return out


def wait_for_records(output, n, timeout=120):
    """Wait until ``n`` partitions of the local ``output`` are recorded."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(glob.glob(os.path.join(output, "_parts", "*.json"))) >= n:
            return
        time.sleep(0.05)
    raise TimeoutError(f"fewer than {n} partitions finished in {timeout}s")


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


def page_faults_per_call(calls: int = 50) -> float:
    """Minor page faults of one micro-batch through an embedding model, the shape whose
    (batch, positions, dim) intermediate is what malloc thresholds decide."""
    import resource

    import torch

    torch.set_num_threads(1)
    emb = torch.nn.Embedding(50_000, 32)
    ids = torch.randint(0, 50_000, (256, 64))
    with torch.inference_mode():
        for _ in range(5):
            (emb(ids) * 2.0).sum(1)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(calls):
            (emb(ids) * 2.0).sum(1)
        return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls


def demo_arrays(demo, rows: int = 1500) -> dict:
    """The demo's first ``rows`` rows, encoded: the model tests' inputs."""
    from dscore import encode

    return encode(pq.read_table(demo["root"] / "part-0.parquet").slice(0, rows), FIELDS, demo["vocab"])


def eager_scores(demo, arrays) -> np.ndarray:
    """The demo's eager model on ``arrays``: the reference every engine is compared with."""
    import torch

    with torch.inference_mode():
        return demo["eager"](*(torch.from_numpy(arrays[f.name]).long() for f in FIELDS)).numpy()


def padded_indices(sizes, rows: int = 700, seed: int = 20261202) -> dict:
    """Index matrices of the demo's fields as encoding gives them: right-padded with 0,
    some rows all padding; field ``i`` draws indices below ``sizes[i]``."""
    rng = np.random.default_rng(seed)
    out = {}
    for f, v in zip(FIELDS, sizes):
        ids = rng.integers(1, v, (rows, f.max_len), dtype=np.int32)
        lengths = rng.integers(0, f.max_len + 1, rows)
        ids[np.arange(f.max_len)[None, :] >= lengths[:, None]] = 0
        out[f.name] = ids
    return out
