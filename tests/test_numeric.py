"""``kind: numeric`` fields: the vectorised conversion against the plain-Python reference,
the spec and type checks, and the report's count of filled values."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dscore import Field
from dscore.encoding import check_field_type, encode_table
from dscore.errors import SpecError
from dscore.numeric import NumericSizeError, numeric_matrix
from dscore.spec import JobSpec

from . import naive

NAN = float("nan")
number = st.one_of(
    st.none(),
    st.just(NAN),
    st.floats(allow_nan=False, width=32),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**63), 2**63 - 1),
)
TYPES = {
    "int8": (pa.int8(), st.integers(-128, 127)),
    "int64": (pa.int64(), st.integers(-(2**63), 2**63 - 1)),
    "uint64": (pa.uint64(), st.integers(0, 2**64 - 1)),
    "float32": (pa.float32(), st.floats(width=32, allow_nan=True)),
    "float64": (pa.float64(), st.floats(allow_nan=True)),
}


def column(values, type, chunks):
    """``values`` as an Arrow array, or a chunked array cut at ``chunks``."""
    if not chunks:
        return pa.array(values, type)
    cuts = sorted({min(c, len(values)) for c in chunks} | {0, len(values)})
    return pa.chunked_array([pa.array(values[a:b], type) for a, b in zip(cuts, cuts[1:])], type)


def same(got, want):
    np.testing.assert_array_equal(got[0], want[0])
    assert got[0].dtype == np.float32 and got[0].flags.c_contiguous
    assert got[1] == want[1]


@st.composite
def numeric_cases(draw):
    """``(values, arrow type, field, chunk cuts, slice)`` for one numeric column."""
    name = draw(st.sampled_from(sorted(TYPES)))
    t, elem = TYPES[name]
    elem = st.one_of(st.none(), elem)
    layout = draw(st.sampled_from(["scalar", "fixed", "list", "large_list"]))
    size = 1 if layout == "scalar" else draw(st.integers(1, 4))
    if layout == "scalar":
        values = draw(st.lists(elem, max_size=20))
    else:
        values = draw(st.lists(st.one_of(st.none(), st.lists(elem, min_size=size, max_size=size)), max_size=20))
        t = {"fixed": pa.list_(t, size), "list": pa.list_(t), "large_list": pa.large_list(t)}[layout]
    fill = draw(st.sampled_from([0.0, -1.0, 2.5, NAN]))
    chunks = draw(st.lists(st.integers(0, 20), max_size=3))
    return values, t, Field("x", kind="numeric", size=size, fill=fill), chunks


@settings(max_examples=300, deadline=None)
@given(case=numeric_cases(), start=st.integers(0, 3))
@example(case=([1, None, 3], pa.int64(), Field("x", kind="numeric"), []), start=0)
@example(case=([1.5, NAN, None, -0.0], pa.float64(), Field("x", kind="numeric", fill=7), [2]), start=1)
@example(case=([2**63 - 1, -(2**63)], pa.int64(), Field("x", kind="numeric"), []), start=0)
@example(case=([None, None], pa.null(), Field("x", kind="numeric", size=2), [1]), start=0)
@example(
    case=([[1, None], None, [NAN, 4]], pa.list_(pa.float32(), 2), Field("x", kind="numeric", size=2), [1]), start=1
)
@example(
    case=([[1, 2], None, [3, None]], pa.list_(pa.int32()), Field("x", kind="numeric", size=2, fill=-1), []), start=1
)
def test_numeric_matches_reference(case, start):
    values, t, field, chunks = case
    arr = column(values, t, chunks)
    arr = arr.slice(min(start, len(values)))
    got = numeric_matrix(arr, field)
    want = naive.numeric(arr.to_pylist(), field)
    if math.isnan(field.fill):  # NaN != NaN: compare where they are
        assert np.array_equal(got[0], want[0], equal_nan=True) and got[1] == want[1]
    else:
        same(got, want)


def test_encode_table_feeds_numeric_beside_categorical():
    table = pa.table({"age": pa.array([30, None, 41.5, NAN]), "apps": ["a,b", None, "b", "c"]})
    fields = [Field("apps", buckets=10, max_len=2), Field("age", kind="numeric", fill=-1.0)]
    arrays, stats = encode_table(table, fields)
    np.testing.assert_array_equal(arrays["age"], np.array([[30], [-1], [41.5], [-1]], dtype=np.float32))
    assert arrays["apps"].dtype == np.int32
    assert stats["age"].filled == 2 and stats["age"].rows == 4 and stats["apps"].filled == 0
    assert stats["age"].summary()["filled"] == 2


# ---------------------------------------------------------------- bad specs
@pytest.mark.parametrize(
    "key, value",
    [("max_len", 4), ("sep", "|"), ("buckets", 10), ("truncate", "tail"), ("pad", "left"), ("lower", False),
     ("strip", False)],
)  # fmt: skip
def test_numeric_refuses_token_keys(key, value):
    with pytest.raises(SpecError, match=rf"field 'age': {key} is .* but kind is 'numeric', which takes no {key}"):
        Field("age", kind="numeric", **{key: value})


@pytest.mark.parametrize("kwargs, match", [
    ({"kind": "numeric", "size": 0}, r"field 'x': size is 0; expected a positive integer"),
    ({"kind": "numeric", "size": True}, r"field 'x': size is True; expected a positive integer"),
    ({"kind": "numeric", "fill": "zero"}, r"field 'x': fill is 'zero'; expected a number"),
    ({"kind": "scalar", "size": 3}, r"field 'x': size is 3 but kind is 'scalar'; size is for kind: numeric only"),
    ({"fill": 1.0}, r"field 'x': fill is 1.0 but kind is 'delimited'; fill is for kind: numeric only"),
])  # fmt: skip
def test_bad_numeric_spec(kwargs, match):
    with pytest.raises(SpecError, match=match):
        Field("x", **kwargs)


def test_numeric_field_needs_no_vocab():
    job = JobSpec(input="in/", output="out/", fields=[{"name": "age", "kind": "numeric"}], model={"path": "m.pt"})
    assert job.vocab is None and job.fields[0].size == 1 and job.fields[0].fill == 0.0
    with pytest.raises(SpecError, match=r"missing required key 'vocab' \(fields \['apps'\]"):
        JobSpec(
            input="in/", output="out/", fields=[{"name": "age", "kind": "numeric"}, {"name": "apps"}],
            model={"path": "m.pt"},
        )  # fmt: skip


# ---------------------------------------------------------------- bad columns
@pytest.mark.parametrize("type, size, match", [
    (pa.string(), 1, r"expects an integer or floating column, or a fixed_size_list of them .*; found string"),
    (pa.bool_(), 1, r"found bool"),
    (pa.decimal128(10, 2), 1, r"found decimal128\(10, 2\)"),
    (pa.dictionary(pa.int32(), pa.float64()), 1, r"found dictionary<values=double"),
    (pa.list_(pa.string()), 2, r"found list<item: string>"),
    (pa.list_(pa.float32(), 3), 2, r"expects lists of 2 numbers; found fixed_size_list<item: float>\[3\]: set size: 3"),
    (pa.float64(), 2, r"expects lists of 2 numbers; found double, one number per row"),
])  # fmt: skip
def test_wrong_column_type(type, size, match):
    field = Field("age", column="age_col", kind="numeric", size=size)
    with pytest.raises(SpecError, match=r"part-0.parquet: field 'age' \(column 'age_col', kind 'numeric'.*" + match):
        check_field_type(field, type, where="part-0.parquet: ")
    with pytest.raises(SpecError, match=match):
        numeric_matrix(pa.nulls(2, type), field)


def test_list_of_wrong_length_names_row():
    field = Field("v", column="vec", kind="numeric", size=2)
    arr = pa.chunked_array([pa.array([[1, 2]], pa.list_(pa.int64())), pa.array([None, [1, 2], [1, 2, 3]])])
    with pytest.raises(NumericSizeError, match=r"field 'v' \(column 'vec', kind 'numeric'\): row 3 is a list of 3"):
        numeric_matrix(arr, field)
    with pytest.raises(NumericSizeError, match=r"row 3 is a list of 3 numbers; expected 2"):
        naive.numeric(arr.to_pylist(), field)


def test_numeric_fields_need_no_mapping_table(tmp_path):
    import dask

    from dscore import Vocabulary

    pq.write_table(pa.table({"apps": ["a,b", "b"], "age": [1.0, None]}), tmp_path / "part-0.parquet")
    fields = [Field("apps", max_len=2), Field("age", kind="numeric")]
    with dask.config.set(scheduler="sync"):
        vocab = Vocabulary.fit(str(tmp_path / "part-0.parquet"), fields)
    vocab.save(str(tmp_path / "vocab"))
    assert not (tmp_path / "vocab" / "age.parquet").exists()
    loaded = Vocabulary.load(str(tmp_path / "vocab"), fields=fields)  # no table asked for age
    arrays, stats = encode_table(pq.read_table(tmp_path / "part-0.parquet"), fields, loaded)
    np.testing.assert_array_equal(arrays["age"], [[1.0], [0.0]])
    assert stats["age"].filled == 1
