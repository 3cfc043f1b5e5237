"""CUDA encode kernels == CPU kernels == tests/naive.py, on the same inputs as test_encode.

These run on a GPU, or on numba's simulator when NUMBA_ENABLE_CUDASIM=1 is set
before numba is imported: tests/test_cuda_kernels.py runs this directory so, in
a child process, with small launches (``dscore.cuda.threads-per-block`` and
``max-blocks`` through DASK_DSCORE__CUDA__... variables) so that rows fall on block
edges and threads loop over several rows. The simulator runs each thread as Python,
so there the property tests draw fewer examples (``EXAMPLES``); the pinned
examples and edge cases run everywhere.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dscore import Field
from dscore import encoding_cuda as gpu
from dscore.encoding import encode_table
from dscore.kernel_args import EMPTY_LOOKUP, NO_ROWS, KernelSpec, row_buffers, separator
from dscore.kernels.unicode import tables

from .. import naive
from ..test_encode import (
    WHITESPACE,
    arrow_column,
    as_vocab,
    check_bytes_case,
    draw_bytes_case,
    draw_case,
    fields,
    vocabulary_for,
)

pytestmark = [
    pytest.mark.skipif(
        not gpu.cuda_available(), reason="needs a CUDA GPU; tests/test_cuda_kernels.py runs these on the simulator"
    ),
    # The simulator runs the uint64 hash arithmetic on numpy scalars, which warn when
    # they wrap; the device (and XXH64) wrap silently.
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
]


SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
EXAMPLES = 12 if SIMULATED else 150  # per property test; a real GPU runs them all


def encode_cuda(col: pa.ChunkedArray, field: Field, vocab):
    """``encode_table(..., device="cuda")`` for one field: ``(host array, counts)``."""
    arrays, stats = encode_table(pa.table({"f": col}), [field], vocab, device="cuda")
    s = stats["f"]
    return arrays["f"].copy_to_host(), np.array([s.tokens, s.kept, s.oov, s.truncated])


def check(values, field, layout, seed):
    """Encode ``values`` on the GPU and on the CPU (and naively); all must agree."""
    rng = np.random.default_rng(seed)
    mapping = vocabulary_for(values, field, seed)
    vocab = as_vocab(mapping)
    col = arrow_column(values, field.kind, layout, rng)
    got, counts = encode_cuda(col, field, vocab)
    arrays, stats = encode_table(pa.table({"f": col}), [field], vocab)
    want, want_counts = naive.encode(values, field, mapping)
    np.testing.assert_array_equal(arrays["f"], want)  # the CPU kernel, as test_encode checks
    np.testing.assert_array_equal(got, want)
    s = stats["f"]
    assert counts.tolist() == [s.tokens, s.kept, s.oov, s.truncated] == want_counts


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), field=fields())
@example(data=None, field=Field("f", kind="delimited", max_len=3)).via("pinned: separators at the ends and doubled")
def test_cuda_matches_cpu_and_naive(data, field):
    values, layout, seed = draw_case(data, field)
    check(values, field, layout, seed)


LONG = "Ab" * 20 + "É,x"  # keys of 32+ bytes take XXH64's four-lane path
DELIMITED_ROWS = [",,a,,B ,", None, "", " , ", "Σ,ΑΣ,ΑΣ.,İ", "\u2003É\u00a0,\x1c", "a,b,c,d,e,f,g", LONG]


EDGE_CASES = [
    (Field("f", max_len=3), DELIMITED_ROWS, "string"),
    (Field("f", max_len=2, truncate="tail", pad="left"), DELIMITED_ROWS, "large_string"),
    (Field("f", max_len=2, truncate="tail", buckets=7), DELIMITED_ROWS, "dictionary"),
    (Field("f", max_len=4, truncate="tail", buckets=2**31 - 2), DELIMITED_ROWS, "dictionary_large"),
    (Field("f", sep="::", max_len=3, truncate="tail"), ["::a::::b::", ":a:::b", "::", None, "A::Σ::"], "view"),
    (Field("f", sep="Σ", max_len=3, lower=False), ["aΣΣbΣ", "ΣΑΣ", "σ", None], "string"),
    (Field("f", kind="scalar", strip=False), ["ΑΣ", "İ", "ΑΣ'", "A\u00adΣ", None, "\u212a", "  X  ", ""], "string"),
    (
        Field("f", kind="list", max_len=2, truncate="tail"),
        [["a", None, " B "], None, [], ["ΑΣ", "İ", "", "c"]],
        "list_dict",
    ),
    (Field("f", kind="list", max_len=3, pad="left"), [["ΑΣ", None], None, ["x"] * 5, [LONG]], "list_view"),
]


@pytest.mark.parametrize("field, values, layout", EDGE_CASES)
def test_edge_cases(field, values, layout):
    check(values, field, layout, seed=1)


@pytest.mark.parametrize("field, values, layout", [EDGE_CASES[i] for i in (1, 2, 4, 7)])
def test_jagged_rows_equal_the_cpu_paths(field, values, layout):
    """model.inputs: jagged on the GPU (padded scratch compacted on the device): the CPU
    path's values, offsets and counts (tests/test_jagged.py checks those against naive)."""
    col = arrow_column(values + values[::-1], field.kind, layout, np.random.default_rng(3))
    vocab = as_vocab(vocabulary_for(values, field, 3))
    table = pa.table({"f": col})
    got, got_stats = encode_table(table, [field], vocab, device="cuda", inputs="jagged")
    want, want_stats = encode_table(table, [field], vocab, inputs="jagged")
    np.testing.assert_array_equal(got["f"].offsets, want["f"].offsets)
    np.testing.assert_array_equal(got["f"].values.copy_to_host(), want["f"].values)
    assert got_stats == want_stats


def test_many_rows_per_thread():
    """More rows than the launch has threads: each thread loops over several."""
    values = [",".join(f"T{(i * j) % 11}" for j in range(i % 7)) or None for i in range(61)]
    check(values, Field("f", max_len=4, truncate="tail"), "string", seed=2)


def test_every_python_whitespace_and_case_rule():
    samples = [ws + "X" + ws for ws in WHITESPACE] + [
        "İ", "ΑΣ", "ΑΣ'", "Σ", "ΑΣΑ", "Α.Σ", "Σ.Α", "ΑΣ\u0301", "\u212a", "ẞ", "ǅ", "\U00010427", "A\u00adΣ",
    ]  # fmt: skip
    field = Field("f", kind="scalar")
    mapping = {k: i + 2 for i, k in enumerate(dict.fromkeys(s.strip().lower() for s in samples))}
    got, _ = encode_cuda(pa.chunked_array([pa.array(samples)]), field, as_vocab(mapping))
    assert got[:, 0].tolist() == [mapping[s.strip().lower()] for s in samples]


def test_tables_are_uploaded_once():
    lk = as_vocab({"a": 2}).lookup(Field("f"))
    first = gpu.device_tables(lk)
    assert gpu.device_tables(lk) is first
    gpu.clear()
    assert gpu.device_tables(lk) is not first


def test_empty_input_and_bad_output():
    field = Field("f", max_len=3, buckets=5)
    arrays, stats = encode_table(pa.table({"f": pa.array([], pa.string())}), [field], device="cuda")
    assert arrays["f"].shape == (0, 3) and stats["f"].tokens == 0
    from numba import cuda

    args = (row_buffers(pa.array(["a", "b"])), KernelSpec.of(field), separator(field), 5, EMPTY_LOOKUP, tables())
    with pytest.raises(ValueError, match=r"out must be an int32 device array of shape \(2, 3\); got int32 \(2, 2\)"):
        gpu.encode_rows(*args, cuda.device_array((2, 2), np.int32), NO_ROWS, np.zeros(4, np.int64), np.zeros(1))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), field=fields(), replace=st.booleans())
@example(data=None, field=Field("f", kind="delimited", max_len=2, truncate="tail", buckets=97), replace=True).via(
    "pinned: every class of invalid UTF-8"
)
@example(data=None, field=Field("f", kind="list", max_len=1), replace=False).via(
    "pinned: invalid UTF-8 only in a list element that truncation drops still fails"
)
def test_invalid_utf8_follows_python(data, field, replace):
    """The CUDA kernels follow test_encode's rule for invalid UTF-8 (through
    ``encode_table(device="cuda")``, so the first bad row comes from the device)."""
    values, layout, cut = draw_bytes_case(data, field)
    field = dataclasses.replace(field, on_invalid_utf8="replace" if replace else "fail")
    check_bytes_case(values, field, layout, cut, device="cuda")


def test_invalid_utf8_beyond_unicode_reads_as_replacement_characters():
    """A 4-byte sequence above U+10FFFF is four maximal invalid subparts, as in Python
    (where a lax decoder would index the Unicode tables out of bounds)."""
    raw = b"\xf5\x80\x80\x80A"
    arr = pa.Array.from_buffers(pa.string(), 1, [None, pa.py_buffer(np.array([0, 5], np.int32)), pa.py_buffer(raw)])
    field = Field("f", kind="scalar", buckets=1000, on_invalid_utf8="replace")
    out, _ = encode_cuda(pa.chunked_array([arr]), field, None)
    assert out.tolist() == [[2 + naive.xxh64(raw.decode("utf-8", "replace").lower().encode()) % 1000]]


def test_jagged_device_rows_feed_a_cpu_model(tmp_path):
    """GPU-encoded jagged rows (device values, host offsets) scored by a CPU model
    equal the CPU-encoded rows' scores."""
    import torch

    from dscore import ModelSpec
    from dscore.model import Model

    class Bag(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bag = torch.nn.EmbeddingBag(9, 4, mode="mean")

        def forward(self, values, offsets):
            return self.bag(values, offsets).sum(1)

    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(Bag()), str(tmp_path / "bag.pt"))
    field = Field("f", max_len=3, buckets=7)
    table = pa.table({"f": DELIMITED_ROWS * 5})
    model = Model.load(ModelSpec(str(tmp_path / "bag.pt"), inputs="jagged", batch_size=8), [field], device="cpu")
    on_gpu = model.predict(encode_table(table, [field], device="cuda", inputs="jagged")[0])
    on_cpu = model.predict(encode_table(table, [field], inputs="jagged")[0])
    np.testing.assert_array_equal(on_gpu, on_cpu)
