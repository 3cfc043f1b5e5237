"""The GPU path above the kernels: ``encode_table(device="cuda")`` == the CPU path, the
hand-off of device arrays to torch, ``score_table`` with ``encode_device: cuda``,
worker teardown, and a client that never initialises CUDA.

On a GPU machine the model goes to CUDA too (``model.device: auto``) and device
arrays reach it without a copy; on numba's simulator (tests/test_cuda_kernels.py
runs this directory so) torch has no CUDA, the model stays on the CPU and the
device arrays are copied to the host: the same code, minus the zero-copy step.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dscore import Field, Vocabulary
from dscore import encoding_cuda as kc
from dscore.encoding import encode_table, resolve_encode_device
from dscore.errors import SpecError

from .. import naive

pytestmark = [
    pytest.mark.skipif(
        not kc.cuda_available(), reason="needs a CUDA GPU; tests/test_cuda_kernels.py runs these on the simulator"
    ),
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),  # see test_cuda_encode.py
]

ROOT = Path(__file__).resolve().parents[2]
TOKENS = ["a", "B ", " ΑΣ", "İ", "x y", "", "Σ", "é", "ab", "never", "Kk", "0"]
ROWS = 37  # not a multiple of the simulated launch's 8 threads


def _cell(rng, sep):
    if rng.random() < 0.15:
        return None
    return sep.join(rng.choice(TOKENS, size=int(rng.integers(0, 7))))


def _list(rng):
    if rng.random() < 0.15:
        return None
    return [None if rng.random() < 0.1 else str(t) for t in rng.choice(TOKENS, size=int(rng.integers(0, 6)))]


def _chunked(arr, rng):
    cut = sorted(int(c) for c in rng.integers(0, len(arr) + 1, size=2))
    return pa.chunked_array([arr.slice(0, cut[0]), arr.slice(cut[0], cut[1] - cut[0]), arr.slice(cut[1])], arr.type)


def mixed_table(rng):
    """``(table, fields, vocab)``: every column layout the GPU path dispatches on, chunked."""
    delimited = [_cell(rng, ",") for _ in range(ROWS)]
    lists = [_list(rng) for _ in range(ROWS)]
    ints = pa.array([None if rng.random() < 0.1 else int(x) for x in rng.integers(-5, 50, ROWS)], pa.int64())
    list_dict = pa.array(lists, pa.list_(pa.string()))
    list_dict = pa.ListArray.from_arrays(
        list_dict.offsets, list_dict.values.dictionary_encode(), mask=list_dict.is_null()
    )
    columns = {
        "dict": pa.array(delimited, pa.string()).dictionary_encode(),  # dictionary: encode entries, gather rows
        "list": pa.array(lists, pa.list_(pa.string())),
        "list_dict": list_dict,
        "hashed": pa.array(delimited, pa.large_string()),
        "seq": pa.array([_cell(rng, "::") for _ in range(ROWS)], pa.string_view()),
        "ints": ints,
        "nulls": pa.nulls(ROWS),
        "null_dict": pa.nulls(ROWS).dictionary_encode(),
    }
    table = pa.table({k: _chunked(v, rng) for k, v in columns.items()})
    fields = [
        Field("dict", max_len=3, truncate="tail"),
        Field("list", kind="list", max_len=2, pad="left"),
        Field("list_dict", kind="list", max_len=4, buckets=13),
        Field("hashed", max_len=4, buckets=97, truncate="tail", pad="left"),
        Field("seq", sep="::", max_len=3),
        Field("ints", kind="scalar"),
        Field("nulls", max_len=2),
        Field("null_dict", kind="scalar", buckets=5),
    ]
    keys = sorted({k for f in fields for v in table.column(f.column).to_pylist() for k in naive.keys(v, f)})
    mapping = {k: 2 + i for i, k in enumerate(keys) if i % 3}  # a third of the keys out of vocabulary
    tables = {
        f.name: pa.table(
            {"token": pa.array(list(mapping), pa.string()), "index": pa.array(list(mapping.values()), pa.int32())}
        )
        for f in fields
        if f.buckets is None
    }
    return table, fields, Vocabulary(tables)


def test_encode_table_on_the_device_equals_the_cpu_path(rng):
    table, fields, vocab = mixed_table(rng)
    want, want_stats = encode_table(table, fields, vocab)
    got, stats = encode_table(table, fields, vocab, device="cuda")
    for f in fields:
        a = got[f.name]
        assert not isinstance(a, np.ndarray), f.name  # a device array
        assert tuple(a.shape) == want[f.name].shape and a.dtype == np.int32, f.name
        np.testing.assert_array_equal(a.copy_to_host(), want[f.name], err_msg=f.name)
    assert stats == want_stats
    assert want_stats["dict"].oov > 0 and want_stats["hashed"].truncated > 0  # the counts are exercised


def test_device_buffers_are_reused_and_slices_encode_alike(rng):
    table, fields, vocab = mixed_table(rng)
    buffers: dict = {}
    encode_table(table, fields, vocab, buffers=buffers, device="cuda")
    first = dict(buffers)
    for part in (table.slice(5, 20), table.slice(0, 0)):  # sliced chunks; an empty partition
        got, stats = encode_table(part, fields, vocab, buffers=buffers, device="cuda:0")
        want, want_stats = encode_table(part, fields, vocab)
        assert all(buffers[n] is first[n] for n in first)  # no new device memory
        for n, w in want.items():
            np.testing.assert_array_equal(got[n].copy_to_host(), w, err_msg=n)
        assert stats == want_stats


def test_device_errors_are_the_cpu_paths():
    table = pa.table({"f": pa.array(["a"])})
    with pytest.raises(ValueError, match="field 'f' needs a vocabulary"):
        encode_table(table, [Field("f")], None, device="cuda")
    with pytest.raises(SpecError, match="expects a list of strings"):
        encode_table(table, [Field("f", kind="list", buckets=3)], None, device="cuda")


def test_auto_encodes_on_the_models_gpu():
    assert resolve_encode_device("auto", "cuda") == "cuda"
    assert resolve_encode_device("auto", "cuda:0") == "cuda:0"
    assert resolve_encode_device("cuda", "cuda:0") == "cuda:0"
    assert resolve_encode_device("cuda", "cpu") == "cuda"  # GPU encoding, rows copied to a CPU model
    assert resolve_encode_device("cpu", "cuda") == "cpu"


class _Weighted:
    """A stand-in model: a weighted sum of every field's indices (exact in float32)."""

    def __call__(self, *xs):
        return sum((x * (i + 1)).sum(1) for i, x in enumerate(xs)).float()


def test_device_arrays_hand_off_to_a_cpu_model(rng):
    import torch

    from dscore.model import Model, as_tensor
    from dscore.spec import ModelSpec

    table, fields, vocab = mixed_table(rng)
    got, _ = encode_table(table, fields, vocab, device="cuda")
    want, _ = encode_table(table, fields, vocab)
    t = as_tensor(got["hashed"], "cpu")
    assert t.dtype == torch.int32 and t.device.type == "cpu"
    np.testing.assert_array_equal(t.numpy(), want["hashed"])
    model = Model(_Weighted(), fields, ModelSpec("weighted.pt", batch_size=16), "cpu")
    np.testing.assert_array_equal(model.predict(got), model.predict(want))


def test_score_table_with_gpu_encoding_equals_the_cpu_path(tiny_job):
    """The worker's path: the model's device (CUDA where torch sees it), encoding on the
    GPU, partitions of several sizes through one Runtime; teardown frees the GPU state."""
    import torch

    from dscore import pipeline, worker
    from dscore.plan import plan_job
    from dscore.spec import JobSpec

    plan = plan_job(JobSpec.from_dict(tiny_job))
    cpu = dataclasses.replace(plan.task.with_models(device="cpu"), encode_device="cpu")
    gpu = dataclasses.replace(plan.task, encode_device="cuda")
    table = pq.read_table(tiny_job["input"])
    rt = worker.Runtime()
    tol = 1e-5 if torch.cuda.is_available() else 0.0  # GPU float32 sums in another order
    for part in (table.slice(0, 100), table.slice(100, 60), table):
        want = pipeline.score_table(part, cpu, worker.Runtime())
        got = pipeline.score_table(part, gpu, rt)
        assert got.stats == want.stats
        assert got.table.column("user_id").equals(want.table.column("user_id"))
        diff = np.abs(got.table.column("score").to_numpy() - want.table.column("score").to_numpy())
        assert diff.max() <= tol, diff.max()
        assert set(got.seconds) == {"encode", "tune", "predict"}
    assert rt.encode_device(gpu).startswith("cuda") and rt.gpu_encode
    assert kc._TABLES and kc._WORKSPACES
    rt.close()
    assert not kc._TABLES and not kc._WORKSPACES and not rt.gpu_encode


def test_planning_never_initialises_cuda(tiny_job):
    """The client plans (schema, probe on the CPU, kernel warm-up) without touching CUDA:
    workers that a client starts must be the first to initialise it."""
    job = {**tiny_job, "model": {**tiny_job["model"], "device": "auto"}, "encode_device": "cuda"}
    code = (
        "import json, sys, torch\n"
        "from dscore.plan import plan_job\n"
        "from dscore.spec import JobSpec\n"
        "plan_job(JobSpec.from_dict(json.loads(sys.argv[1])))\n"
        "gpu_modules = [m for m in ('dscore.kernels.cuda', 'dscore.encoding_cuda') if m in sys.modules]\n"
        "print(json.dumps([torch.cuda.is_initialized(), gpu_modules]))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(job)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [False, []]


def test_numeric_field_on_the_gpu_path():
    """A numeric field beside a categorical one with device="cuda": converted on the host
    (numpy, the CPU path's values and counts), and the model gets float32 beside int64."""
    import torch

    from dscore.model import Model
    from dscore.spec import ModelSpec

    table = pa.table({"t": ["a", None, "b,c"], "x": pa.array([1.5, None, float("nan")])})
    fields = [Field("t", buckets=7, max_len=2), Field("x", kind="numeric", fill=-2.0)]
    arrays, stats = encode_table(table, fields, device="cuda")
    cpu_arrays, cpu_stats = encode_table(table, fields)
    assert isinstance(arrays["x"], np.ndarray) and arrays["x"].dtype == np.float32
    np.testing.assert_array_equal(arrays["x"], [[1.5], [-2.0], [-2.0]])
    np.testing.assert_array_equal(arrays["t"].copy_to_host(), cpu_arrays["t"])
    assert stats["x"].filled == cpu_stats["x"].filled == 2

    class Wide(torch.nn.Module):
        def forward(self, t, x):
            assert t.dtype == torch.int64 and x.dtype == torch.float32
            return t.sum(dim=1).float() + x[:, 0]

    model = Model(Wide(), fields, ModelSpec(path="wide.pt"), "cuda" if torch.cuda.is_available() else "cpu")
    model.probe()
    np.testing.assert_array_equal(model.predict(arrays), model.predict(cpu_arrays))
