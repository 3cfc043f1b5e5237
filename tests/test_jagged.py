"""Jagged inputs (``model.inputs: jagged``): the encode kernels' jagged rows against the
plain-Python reference, and EmbeddingBag models fed them against padded masked means."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dscore import Field, ModelSpec, zoo
from dscore.demo import FIELDS
from dscore.encoding import encode_table
from dscore.errors import ModelError, SpecError
from dscore.jagged import Jagged
from dscore.model import Model

from . import naive
from .helpers import padded_indices
from .test_encode import arrow_column, as_vocab, draw_case, fields, vocabulary_for


def rows_of(padded: np.ndarray) -> list[list[int]]:
    """Each row of a padded matrix without its padding (either side)."""
    return [[int(x) for x in r if x != naive.PAD] for r in padded]


def check_jagged(values, field, layout, seed):
    rng = np.random.default_rng(seed)
    mapping = vocabulary_for(values, field, seed)
    col = arrow_column(values, field.kind, layout, rng)
    arrays, stats = encode_table(pa.table({"f": col}), [field], as_vocab(mapping), inputs="jagged")
    want, counts = naive.encode(values, field, mapping)
    got = arrays["f"]
    assert isinstance(got, Jagged) and len(got) == len(values)
    assert got.values.dtype == np.int32 and got.offsets.dtype == np.int64 and got.offsets[0] == 0
    assert got.values.shape == (got.offsets[-1],)
    assert [r.tolist() for r in got.rows()] == rows_of(want)
    s = stats["f"]
    assert [s.tokens, s.kept, s.oov, s.truncated] == counts  # the padded path's stats
    return got


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), field=fields())
@example(data=None, field=Field("f", kind="delimited", max_len=3)).via("pinned: separators at the ends and doubled")
def test_jagged_encode_matches_naive(data, field):
    """Every kind, layout (dictionary columns, sliced and chunked arrays), truncate mode,
    pad side (ignored), hashing and tables: the padded reference's rows, unpadded."""
    values, layout, seed = draw_case(data, field)
    check_jagged(values, field, layout, seed)


ROWS = ["a,b,c,d,e", None, "", " , ", "x", "c,c,Σ", "b,a"]


@pytest.mark.parametrize("truncate", ["head", "tail"])
@pytest.mark.parametrize("pad", ["right", "left"])
@pytest.mark.parametrize("layout", ["string", "dictionary"])
@pytest.mark.parametrize("buckets", [None, 5])
def test_truncation_nulls_and_empty_rows(truncate, pad, layout, buckets):
    field = Field("f", max_len=3, truncate=truncate, pad=pad, buckets=buckets)
    got = check_jagged(ROWS, field, layout, seed=7)
    assert np.diff(got.offsets).tolist() == [3, 0, 0, 0, 1, 3, 2]


def test_list_column_and_chunks_follow_each_other():
    field = Field("f", kind="list", max_len=2, truncate="tail")
    col = pa.chunked_array([[["a", "b", "c"], None], [[], ["x", None, "y"]], [["z"]]])
    arrays, _ = encode_table(pa.table({"f": col}), [field], as_vocab({"a": 2, "b": 3, "c": 4, "x": 5}), inputs="jagged")
    assert [r.tolist() for r in arrays["f"].rows()] == [[3, 4], [], [], [5, 1], [1]]


def test_buffers_are_reused_and_numeric_fields_stay_dense():
    fields_ = [Field("f", max_len=4, buckets=9), Field("n", kind="numeric")]
    buffers: dict = {}
    big = pa.table({"f": ["a,b,c,d,e"] * 50, "n": [1.5] * 50})
    small = pa.table({"f": ["a", None, "b,c"], "n": [2.0, None, 3.0]})
    first, _ = encode_table(big, fields_, buffers=buffers, inputs="jagged")
    assert first["f"].offsets[-1] == 200 and first["n"].shape == (50, 1)
    values = buffers[("f", "jagged")][0]
    again, _ = encode_table(small, fields_, buffers=buffers, inputs="jagged")
    assert buffers[("f", "jagged")][0] is values  # the same memory, reused
    assert np.diff(again["f"].offsets).tolist() == [1, 0, 2]
    padded, _ = encode_table(small, fields_)
    assert [r.tolist() for r in again["f"].rows()] == rows_of(padded["f"])
    np.testing.assert_array_equal(again["n"], padded["n"])
    with pytest.raises(ValueError, match="inputs is 'ragged'; expected one of padded, jagged"):
        encode_table(small, fields_, inputs="ragged")


def test_jagged_rows_slice_and_unpack():
    j = Jagged.from_padded(np.array([[2, 3, 0], [0, 0, 0], [4, 0, 0], [5, 6, 7]], dtype=np.int32))
    values, offsets = j
    assert values.tolist() == [2, 3, 4, 5, 6, 7] and offsets.tolist() == [0, 2, 2, 3, 6]
    part = j[1:3]
    assert part.shape == (2,) and part.values.tolist() == [4] and part.offsets.tolist() == [0, 0, 1]
    assert j[:100].offsets.tolist() == offsets.tolist() and len(j[3:1]) == 0
    with pytest.raises(TypeError, match="contiguous slice"):
        j[::2]


def test_model_inputs_is_checked():
    with pytest.raises(SpecError, match=r"model.inputs: expected one of padded, jagged, got 'ragged'"):
        ModelSpec.from_dict({"path": "m.pt", "inputs": "ragged"})


# ---------------------------------------------------------------- models
SIZES = [52, 5002, 2002, 702]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return zoo.export(
        str(tmp_path_factory.mktemp("zoo")), SIZES, seed=3, names=["embedding_bag", "embedding_bag_jagged"]
    )


@pytest.fixture(scope="module")
def padded():
    """Index matrices as encoding gives them: right-padded with 0, some rows all padding."""
    return padded_indices(SIZES)


@pytest.mark.parametrize("form, call", [("torchscript", "positional"), ("eager", "keyword")])
def test_embedding_bag_jagged_equals_padded_masked_mean(exported, padded, form, call):
    jagged = {n: Jagged.from_padded(a) for n, a in padded.items()}
    bag = exported["embedding_bag_jagged"]
    model = Model.load(ModelSpec(**bag[form], inputs="jagged", call=call), FIELDS)
    assert model.input_names[:2] == ["device_name_values", "device_name_offsets"]
    got = model.predict(jagged, batch_size=256)
    # the same weights as a masked mean over the padded rows
    masked = Model.load(ModelSpec(**{**bag["eager"], "factory": "dscore.zoo:masked_mean"}), FIELDS)
    want = masked.predict(padded, batch_size=256)
    assert np.abs(got.astype(np.float64) - want).max() <= 1e-6
    assert got.std() > 1e-4 and (np.diff(jagged["campaigns"].offsets) == 0).any()  # empty bags covered
    # a row's score does not depend on the micro-batch (the last one padded with probe rows)
    for bs in (1, 64, 100, 700, 4096):
        np.testing.assert_array_equal(model.predict(jagged, batch_size=bs), got)


def test_a_model_that_rejects_jagged_inputs_fails_the_probe_naming_model_inputs(exported):
    with pytest.raises(ModelError, match=r"fails on a one-row probe batch called as model\(device_name_values, "
                       r"device_name_offsets, .*model.inputs: jagged.*model.inputs \(padded"):  # fmt: skip
        Model.load(ModelSpec(**exported["embedding_bag"]["torchscript"], inputs="jagged"), FIELDS)
    with pytest.raises(ModelError, match=r"model.inputs \(padded: one \(B, max_len\) tensor per field; jagged"):
        Model.load(ModelSpec(**exported["embedding_bag_jagged"]["torchscript"]), FIELDS)


def test_onnx_models_refuse_jagged_inputs(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"not read")
    with pytest.raises(ModelError, match=r"model.inputs: jagged is not supported for ONNX models"):
        Model.load(ModelSpec(str(tmp_path / "m.onnx"), inputs="jagged"), FIELDS)


def test_freeze_works_and_compile_is_refused_on_jagged_inputs(exported, padded):
    from dscore import optimize

    jagged = {n: Jagged.from_padded(a) for n, a in padded.items()}
    script = Model.load(ModelSpec(**exported["embedding_bag_jagged"]["torchscript"], inputs="jagged"), FIELDS)
    script.batch_size = 128
    ok, why = optimize.try_mode(script, "freeze", jagged)
    assert ok, why
    eager = Model.load(ModelSpec(**exported["embedding_bag_jagged"]["eager"], inputs="jagged"), FIELDS)
    ok, why = optimize.try_mode(eager, "compile", jagged)
    assert not ok and "jagged inputs (model.inputs: jagged) vary in length" in why
