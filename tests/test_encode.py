"""encode() against the plain-Python reference in tests/naive.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dscore import Field, Vocabulary, encode
from dscore.encoding import encode_table, tokenize
from dscore.errors import SpecError

from . import naive

WHITESPACE = [chr(c) for c in range(0x110000) if chr(c).isspace()]
# Characters whose lowercase is special: non-ASCII case pairs, final sigma, a
# lowercase that expands ('İ'), Kelvin sign -> 'k', titlecase, case-ignorable marks.
SPECIAL = list("ÉéΣσςİiIßẞΩωKkǅǄ'.:\u00ad\u0301\u0345ΑΛ中😀") + ["\u212a", "\U0001044f", "\U00010427"]
SEPS = [",", "|", " ", "::", "Σ", "\t"]

token_chars = st.sampled_from(list("abcABZ019-_") + SPECIAL + WHITESPACE)
any_char = st.characters(exclude_categories=["Cs"])


@st.composite
def cells(draw, sep, kind):
    """A list of cell values (str or None) of one column."""
    piece = st.one_of(token_chars, token_chars, any_char, st.just(sep))
    text = st.lists(piece, max_size=24).map("".join)
    if kind == "list":
        elem = st.one_of(st.none(), st.lists(piece, max_size=6).map("".join))
        return draw(st.lists(st.one_of(st.none(), st.lists(elem, max_size=7)), max_size=25))
    return draw(st.lists(st.one_of(st.none(), text), max_size=25))


@st.composite
def fields(draw, kind=None):
    kind = kind or draw(st.sampled_from(["delimited", "scalar", "list"]))
    return Field(
        "f",
        kind=kind,
        sep=draw(st.sampled_from(SEPS)),
        max_len=draw(st.integers(1, 6)),
        truncate=draw(st.sampled_from(["head", "tail"])),
        pad=draw(st.sampled_from(["right", "left"])),
        lower=draw(st.booleans()),
        strip=draw(st.booleans()),
        buckets=draw(st.sampled_from([None, None, None, 1, 7, 2**31 - 2])),
    )


def vocabulary_for(values, field, draw_bits: int) -> dict[str, int]:
    """A mapping over some of the keys in ``values`` with arbitrary unique indices."""
    rng = np.random.default_rng(draw_bits)
    ks = sorted({k for v in values for k in naive.keys(v, field)})
    chosen = [k for k in ks if rng.random() < 0.7] + ["never-seen", "ab", "a"]
    chosen = list(dict.fromkeys(chosen))
    idx = rng.choice(np.arange(2, 2 + 50 * len(chosen)), size=len(chosen), replace=False)
    return dict(zip(chosen, (int(i) for i in idx)))


def as_vocab(mapping) -> Vocabulary:
    table = pa.table(
        {"token": pa.array(list(mapping), pa.string()), "index": pa.array(list(mapping.values()), pa.int32())}
    )
    return Vocabulary({"f": table})


def arrow_column(values, kind, layout, rng):
    """``values`` as an Arrow array of the requested layout, possibly sliced and chunked."""
    pad = [None, "pad", "x,y"] if kind != "list" else [None, ["pad"], []]
    lo, hi = int(rng.integers(0, 3)), int(rng.integers(0, 3))
    padded = pad[:lo] + list(values) + pad[:hi]
    if kind == "list":
        child = {"list": pa.string(), "large_list": pa.string(), "list_large": pa.large_string()}.get(layout)
        if layout == "list_dict":
            arr = pa.array(padded, pa.list_(pa.string()))
            arr = pa.ListArray.from_arrays(arr.offsets, arr.values.dictionary_encode(), mask=arr.is_null())
        elif layout == "list_view":
            arr = pa.array(padded, pa.list_view(pa.string()))
        else:
            outer = pa.large_list if layout == "large_list" else pa.list_
            arr = pa.array(padded, outer(child))
    elif layout == "dictionary":
        arr = pa.array(padded, pa.string()).dictionary_encode()
    elif layout == "dictionary_large":
        arr = pa.array(padded, pa.large_string()).dictionary_encode().cast(pa.dictionary(pa.int8(), pa.large_string()))
    else:
        arr = pa.array(
            padded, {"string": pa.string(), "large_string": pa.large_string(), "view": pa.string_view()}[layout]
        )
    arr = arr.slice(lo, len(values))
    cut = sorted(int(c) for c in rng.integers(0, len(values) + 1, size=2))
    return pa.chunked_array([arr.slice(0, cut[0]), arr.slice(cut[0], cut[1] - cut[0]), arr.slice(cut[1])], arr.type)


CELL_LAYOUTS = ["string", "large_string", "view", "dictionary", "dictionary_large"]
LIST_LAYOUTS = ["list", "large_list", "list_large", "list_dict", "list_view"]


def draw_case(data, field):
    """``(values, layout, seed)`` for ``field``: drawn from ``data``, or the pinned
    example (separators at the ends and doubled, Unicode whitespace and case) when
    ``data`` is None."""
    if data is None:
        return [",,a,,B ,", None, "", " , ", "Σ,ΑΣ,ΑΣ.,İ", "\u2003É\u00a0,\x1c"], "string", 0
    values = data.draw(cells(field.sep, field.kind))
    layout = data.draw(st.sampled_from(LIST_LAYOUTS if field.kind == "list" else CELL_LAYOUTS))
    return values, layout, data.draw(st.integers(0, 2**32 - 1))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), field=fields())
@example(data=None, field=Field("f", kind="delimited", max_len=3)).via("pinned: separators at the ends and doubled")
def test_encode_matches_naive(data, field):
    values, layout, seed = draw_case(data, field)
    rng = np.random.default_rng(seed)
    mapping = vocabulary_for(values, field, seed)
    col = arrow_column(values, field.kind, layout, rng)
    arrays, stats = encode_table(pa.table({"f": col}), [field], as_vocab(mapping))
    expected, counts = naive.encode(values, field, mapping)
    got = arrays["f"]
    assert got.dtype == np.int32 and got.flags.c_contiguous and got.shape == (len(values), field.max_len)
    np.testing.assert_array_equal(got, expected)
    s = stats["f"]
    assert [s.tokens, s.kept, s.oov, s.truncated] == counts
    assert s.rows == len(values)


@settings(max_examples=100, deadline=None)
@given(
    values=st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)), max_size=20),
    width=st.sampled_from([pa.int8(), pa.int32(), pa.int64(), pa.uint16(), pa.uint64()]),
    buckets=st.sampled_from([None, 13]),
)
def test_integer_columns_use_decimal_text(values, width, buckets):
    lo, hi = (np.iinfo(width.to_pandas_dtype()).min, np.iinfo(width.to_pandas_dtype()).max)
    values = [None if v is None else min(max(v, lo), hi) for v in values]
    field = Field("f", kind="scalar", buckets=buckets)
    mapping = {str(v): 2 + i for i, v in enumerate(dict.fromkeys(v for v in values[::2] if v is not None))}
    got = encode(pa.table({"f": pa.array(values, width)}), [field], as_vocab(mapping or {"x": 2}))["f"]
    np.testing.assert_array_equal(got, naive.encode(values, field, mapping)[0])
    # lists of integers, too
    lists = [values[i : i + 3] for i in range(0, len(values), 3)]
    lf = Field("f", kind="list", max_len=3, buckets=buckets)
    got = encode(pa.table({"f": pa.array(lists, pa.list_(width))}), [lf], as_vocab(mapping or {"x": 2}))["f"]
    np.testing.assert_array_equal(got, naive.encode(lists, lf, mapping)[0])


@settings(max_examples=200, deadline=None)
@given(data=st.data(), field=fields())
def test_tokenize_matches_naive(data, field):
    values = data.draw(cells(field.sep, field.kind))
    layout = data.draw(st.sampled_from(LIST_LAYOUTS if field.kind == "list" else CELL_LAYOUTS))
    col = arrow_column(values, field.kind, layout, np.random.default_rng(data.draw(st.integers(0, 99))))
    tokens, weights = tokenize(col, field)
    got = {}
    for t, w in zip(tokens.to_pylist(), weights):
        got[t] = got.get(t, 0) + int(w)
    want = {}
    for v in values:
        for k in naive.keys(v, field):
            want[k] = want.get(k, 0) + 1
    assert got == want


def test_every_python_whitespace_and_case_rule():
    """Each non-ASCII rule on its own, against str.strip().lower()."""
    samples = [ws + "X" + ws for ws in WHITESPACE] + [
        "İ", "ΑΣ", "ΑΣ'", "Σ", "ΑΣΑ", "Α.Σ", "Σ.Α", "ΑΣ\u0301", "\u212a", "ẞ", "ǅ", "\U00010427", "A\u00adΣ",
    ]  # fmt: skip
    field = Field("f", kind="scalar")
    mapping = {k: i + 2 for i, k in enumerate(dict.fromkeys(s.strip().lower() for s in samples))}
    got = encode(pa.table({"f": pa.array(samples)}), [field], as_vocab(mapping))["f"][:, 0]
    assert got.tolist() == [mapping[s.strip().lower()] for s in samples]


def test_large_vocabulary_is_exact():
    """>= 1M tokens with shared prefixes and colliding slots: every token gets its own index."""
    rng = np.random.default_rng(7)
    n = 1_100_000
    stems = [f"com.app{i}" for i in range(n // 4)]
    tokens = (
        stems + [s + "x" for s in stems] + [s + "Σ" for s in stems] + [f"t{i:07d}" for i in range(n - 3 * len(stems))]
    )
    tokens = [t.lower() for t in tokens]
    assert len(set(tokens)) == len(tokens) >= 1_000_000
    index = rng.permutation(len(tokens)).astype(np.int32) + 2
    vocab = Vocabulary({"f": pa.table({"token": pa.array(tokens), "index": pa.array(index)})})
    slots = vocab.lookup(Field("f"))[0]
    # The test only means something if distinct tokens do share home slots.
    homes = np.array([naive.xxh64(t.encode()) & (len(slots) - 1) for t in tokens[:50_000]])
    assert len(np.unique(homes)) < len(homes)
    queries = tokens + [s + "y" for s in stems[:1000]] + ["q" + s for s in stems[:1000]]
    want = np.concatenate([index, np.ones(2000, dtype=np.int32)])
    perm = rng.permutation(len(queries))
    got = encode(pa.table({"f": pa.array([queries[i].upper() for i in perm])}), [Field("f", kind="scalar")], vocab)
    np.testing.assert_array_equal(got["f"][:, 0], want[perm])


def test_output_layout_and_empty_table():
    vocab = as_vocab({"a": 2})
    out = encode(pa.table({"f": pa.array([], pa.string())}), [Field("f", max_len=3)], vocab)["f"]
    assert out.shape == (0, 3) and out.dtype == np.int32
    null_col = encode(pa.table({"f": pa.nulls(3)}), [Field("f", max_len=2)], vocab)["f"]
    assert null_col.tolist() == [[0, 0]] * 3


def test_pandas_input():
    import pandas as pd

    df = pd.DataFrame({"f": ["a,b", None], "g": [["A", None], []]})
    vocab = Vocabulary({"f": as_vocab({"a": 2})["f"], "g": as_vocab({"a": 5})["f"]})
    out = encode(df, [Field("f", max_len=2), Field("g", kind="list", max_len=2)], vocab)
    assert out["f"].tolist() == [[2, 1], [0, 0]]
    assert out["g"].tolist() == [[5, 0], [0, 0]]


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kind, arr, match",
    [
        (
            "delimited",
            pa.array([["a"]]),
            r"field 'f' \(column 'c', kind 'delimited'\).*found list<item: string>.*kind: list",
        ),
        ("scalar", pa.array([1.5]), r"field 'f' \(column 'c', kind 'scalar'\) expects a string.*found double"),
        (
            "list",
            pa.array(["a,b"]),
            r"field 'f' \(column 'c', kind 'list'\) expects a list.*found string.*kind: delimited",
        ),
        ("list", pa.array([[1.5]]), r"kind 'list'\) expects a list.*found list<item: double>"),
        ("scalar", pa.array([{"x": "a"}]), r"found struct<x: string>"),
    ],
)
def test_wrong_column_type(kind, arr, match):
    with pytest.raises(SpecError, match=match):
        encode(pa.table({"c": arr}), [Field("f", column="c", kind=kind)], as_vocab({"a": 2}))


def test_missing_column_and_vocabulary():
    with pytest.raises(ValueError, match=r"field 'f': column 'nope' is not in the input; columns are \['c'\]"):
        encode(pa.table({"c": ["a"]}), [Field("f", column="nope")], as_vocab({"a": 2}))
    with pytest.raises(ValueError, match=r"field 'f' needs a vocabulary \(or buckets=N"):
        encode(pa.table({"f": ["a"]}), [Field("f")], None)
    with pytest.raises(ValueError, match=r"has no table for field 'g'"):
        encode(pa.table({"g": ["a"]}), [Field("g")], as_vocab({"a": 2}))
    with pytest.raises(ValueError, match="field 'f' is given twice"):
        encode(pa.table({"f": ["a"]}), [Field("f"), Field("f")], as_vocab({"a": 2}))


def test_tokenize_grows_its_buffers():
    """Many tokens in few rows exercise the growable output buffers of the tokenize kernels."""
    field = Field("f", max_len=1)
    values = [",".join(f"T{i % 97}" for i in range(n)) for n in (1000, 0, 5, 3000)]
    tokens, weights = tokenize(pa.chunked_array([pa.array(values)]), field)
    assert len(tokens) == 4005 and int(weights.sum()) == 4005
    assert tokens[2999].as_py() == f"t{(2999 - 1005) % 97}"
    lists = [[f"T{i}" for i in range(n)] for n in (500, 0, 700)]
    tokens, _ = tokenize(pa.array(lists), Field("f", kind="list"))
    assert tokens.to_pylist() == [t.lower() for row in lists for t in row]


def test_fixed_size_lists_sliced():
    arr = pa.array([["a", "B"], ["c", None], None, ["d", "e"]], pa.list_(pa.string(), 2)).slice(1)
    vocab = as_vocab({"a": 2, "b": 3, "c": 4, "d": 5})
    out = encode(pa.table({"f": arr}), [Field("f", kind="list", max_len=3)], vocab)["f"]
    assert out.tolist() == [[4, 0, 0], [0, 0, 0], [5, 1, 0]]


def test_reused_buffers_are_fully_overwritten():
    """With buffers, output memory is reused: every cell must be written, padding included."""
    vocab = as_vocab({"a": 2, "b": 3})
    field = Field("f", max_len=3, pad="left")
    buffers = {}
    first = encode_table(pa.table({"f": ["a,b,a,b", "b", None, "a,a"]}), [field], vocab, buffers=buffers)[0]["f"]
    assert first.tolist() == [[2, 3, 2], [0, 0, 3], [0, 0, 0], [0, 2, 2]]
    buffers["f"][:] = 99  # garbage left by an earlier partition
    second = encode_table(pa.table({"f": ["b", None, "a,b"]}), [field], vocab, buffers=buffers)[0]["f"]
    assert second.tolist() == [[0, 0, 3], [0, 0, 0], [0, 2, 3]]
    assert np.shares_memory(second, buffers["f"])
    nulls = encode_table(pa.table({"f": pa.nulls(2)}), [field], vocab, buffers=buffers)[0]["f"]
    assert nulls.tolist() == [[0, 0, 0]] * 2
    dict_col = pa.array(["a", None, "b"]).dictionary_encode()
    third = encode_table(pa.table({"f": dict_col}), [field], vocab, buffers=buffers)[0]["f"]
    assert third.tolist() == [[0, 0, 2], [0, 0, 0], [0, 0, 3]]


# ---------------------------------------------------------------- invalid UTF-8
# One rule on every path: on_invalid_utf8: replace reads a cell as Python's
# bytes.decode("utf-8", "replace"); fail (the default) names the first bad row.
INVALID_UTF8 = {
    "overlong": [b"\xc1\xafppo", b"\xc0\xa0", b"\xe0\x80\xaf", b"\xf0\x80\x80\xaf", b"\xe0\x9f\xbf"],
    "surrogate": [b"\xed\xa0\x80", b"\xed\xbf\xbfX", b"\xed\xa0"],
    "truncated": [b"x\xe2\x82", b"\xf0\x9f\x98", b"\xe2,", b"\xf0\x9f\x98 A", b"\xf4\x8f\xbf"],
    "above U+10FFFF": [b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xf8\x88\x80\x80\x80", b"\xff\xfe"],
    "lone continuation": [b"\x80", b"\xbf\xbfab", b"\xc3\xa9\x80", b"A\xce\xa3\x80"],
    # next to what strip and the final-sigma rule look at
    "in context": [
        b"\xe2\x80\x83\xff\xe2\x80\x83",
        b" \xc0\xa0 ",
        b"\xce\x91\xce\xa3\xcc\x81\xff",
        b"\xff\xce\xa3",
        b"\xc4\xb0\xed",
    ],
}
INVALID_PIECES = [b for pieces in INVALID_UTF8.values() for b in pieces]
BYTE_LAYOUTS = {"cell": ["string", "large_string", "dictionary"], "list": ["list", "large_list", "list_dict"]}


@st.composite
def byte_cells(draw, sep, kind):
    """A column's cells as raw bytes (None for null): valid text, arbitrary bytes and
    every class of invalid UTF-8, mixed."""
    piece = st.one_of(
        st.binary(max_size=3), st.sampled_from(INVALID_PIECES), token_chars.map(str.encode), st.just(sep.encode())
    )
    text = st.lists(piece, max_size=8).map(b"".join)
    if kind == "list":
        return draw(st.lists(st.one_of(st.none(), st.lists(st.one_of(st.none(), text), max_size=5)), max_size=12))
    return draw(st.lists(st.one_of(st.none(), text), max_size=12))


def bytes_column(values, kind, layout, cut) -> pa.ChunkedArray:
    """Raw-byte ``values`` as an Arrow string column that Arrow would not validate, in two chunks."""
    large = layout == "large_list" or layout == "large_string"
    binary, string = (pa.large_binary(), pa.large_string()) if large else (pa.binary(), pa.string())
    if kind == "list":
        outer = pa.large_list if large else pa.list_
        arr = pa.array(values, outer(binary)).view(outer(string))
        if layout == "list_dict":
            arr = pa.ListArray.from_arrays(arr.offsets, arr.values.dictionary_encode(), mask=arr.is_null())
    else:
        arr = pa.array(values, binary).view(string)
        if layout == "dictionary":
            arr = arr.dictionary_encode()
    cut = min(cut, len(values))
    return pa.chunked_array([arr.slice(0, cut), arr.slice(cut)], arr.type)


def draw_bytes_case(data, field):
    """``(values, layout, cut)`` for ``field``: drawn from ``data``, or, when ``data`` is
    None, the pinned example: every class of invalid UTF-8, and a bad token or list
    element after the first (which ``max_len: 1`` drops)."""
    if data is None:
        if field.kind == "list":
            return [[b"ok", b"\xc1\xafppo"], None, [b"ok", *INVALID_PIECES]], "list", 1
        return [b"ok", b"a," + b",".join(INVALID_PIECES), None, b"\xc1\xafppo"], "string", 1
    values = data.draw(byte_cells(field.sep, field.kind))
    layout = data.draw(st.sampled_from(BYTE_LAYOUTS["list" if field.kind == "list" else "cell"]))
    return values, layout, data.draw(st.integers(0, 12))


def first_invalid_row(values):
    """The first row holding a string that Python cannot decode, or None."""
    for i, v in enumerate(values):
        strings = [] if v is None else [x for x in v if x is not None] if isinstance(v, list) else [v]
        for b in strings:
            try:
                b.decode("utf-8")
            except UnicodeDecodeError:
                return i
    return None


def check_bytes_case(values, field, layout, cut, device="cpu"):
    """Encode raw-byte cells on ``device`` against the plain-Python reference, which
    decodes them itself (``dscore.verify.reference_values``), and tokenize them."""
    from dscore.encoding import InvalidUTF8Error
    from dscore.verify import reference_values

    col = bytes_column(values, field.kind, layout, cut)
    assert reference_values(col) == values
    mapping = vocabulary_for(values, dataclasses.replace(field, on_invalid_utf8="replace"), cut)
    bad = first_invalid_row(values)
    if bad is not None and field.on_invalid_utf8 == "fail":
        match = (
            rf"field 'f' \(column 'f'\): row {bad} is not valid UTF-8 \(.*byte \d+: .+\); .*on_invalid_utf8: replace"
        )
        with pytest.raises(InvalidUTF8Error, match=match):
            encode_table(pa.table({"f": col}), [field], as_vocab(mapping), device=device)
        with pytest.raises(ValueError, match=rf"row {bad} is not valid UTF-8"):
            naive.encode(reference_values(col), field, mapping)
        if device == "cpu":
            with pytest.raises(InvalidUTF8Error, match=match):
                tokenize(col, field)
        return
    arrays, stats = encode_table(pa.table({"f": col}), [field], as_vocab(mapping), device=device)
    got = arrays["f"] if device == "cpu" else arrays["f"].copy_to_host()
    expected, counts = naive.encode(reference_values(col), field, mapping)
    np.testing.assert_array_equal(got, expected)
    s = stats["f"]
    assert [s.tokens, s.kept, s.oov, s.truncated] == counts
    if device == "cpu":
        tokens, weights = tokenize(col, field)
        got: dict = {}
        for t, w in zip(tokens.to_pylist(), weights):
            got[t] = got.get(t, 0) + int(w)
        want: dict = {}
        for k in (k for v in values for k in naive.keys(v, field)):
            want[k] = want.get(k, 0) + 1
        assert got == want


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), field=fields(), replace=st.booleans())
@example(data=None, field=Field("f", kind="delimited", max_len=2, truncate="tail", buckets=97), replace=True).via(
    "pinned: every class of invalid UTF-8"
)
@example(data=None, field=Field("f", kind="delimited", max_len=1), replace=False).via(
    "pinned: invalid UTF-8 only in a token that truncation drops still fails"
)
@example(data=None, field=Field("f", kind="list", max_len=1), replace=False).via(
    "pinned: invalid UTF-8 only in a list element that truncation drops still fails"
)
def test_invalid_utf8_follows_python(data, field, replace):
    values, layout, cut = draw_bytes_case(data, field)
    field = dataclasses.replace(field, on_invalid_utf8="replace" if replace else "fail")
    check_bytes_case(values, field, layout, cut)


@pytest.mark.parametrize("cls", sorted(INVALID_UTF8))
@pytest.mark.parametrize("buckets", [None, 1009])
def test_each_invalid_utf8_class_reads_as_python_replace(cls, buckets):
    """Each class on its own, as a scalar: the key is decode("utf-8", "replace").strip().lower()
    (so b"\\xc1\\xafppo" is not the token 'oppo'); hashing mode hashes that key's UTF-8."""
    raw = INVALID_UTF8[cls]
    keys = [b.decode("utf-8", "replace").strip().lower() for b in raw]
    field = Field("f", kind="scalar", buckets=buckets, on_invalid_utf8="replace")
    mapping = {"oppo": 2, **{k: 3 + i for i, k in enumerate(dict.fromkeys(keys))}}
    col = pa.chunked_array([pa.array(raw, pa.binary()).view(pa.string())])
    got = encode(pa.table({"f": col}), [field], as_vocab(mapping))["f"][:, 0].tolist()
    if buckets is None:
        assert got == [mapping[k] for k in keys]
    else:
        assert got == [2 + naive.xxh64(k.encode()) % buckets for k in keys]


def test_invalid_utf8_in_an_unused_dictionary_entry_is_not_a_row():
    """A slice shares its parent's dictionary: entries no row uses do not fail it."""
    arr = pa.array([b"\xc1\xafppo", b"ok", b"\xff"], pa.binary()).view(pa.string()).dictionary_encode()
    vocab = as_vocab({"ok": 2})
    assert encode(pa.table({"f": arr.slice(1, 1)}), [Field("f")], vocab)["f"].tolist() == [[2]]
    with pytest.raises(ValueError, match=r"row 1 is not valid UTF-8 \(byte 0: invalid start byte b'\\xff'\)"):
        encode(pa.table({"f": arr.slice(1)}), [Field("f")], vocab)


def test_short_byte_sequences_decode_as_python():
    """Every 1- and 2-byte cell, and 3- and 4-byte cells over each lead byte with
    continuation bytes at the edges of the ranges Table 3-7 allows: the kernels' keys
    are Python's decode("utf-8", "replace") (then lower()), byte for byte."""
    edges = [0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xFF]
    cells = [bytes([a]) for a in range(256)] + [bytes([a, b]) for a in range(256) for b in range(256)]
    cells += [bytes([a, b, c]) for a in range(0xE0, 0x100) for b in edges for c in edges]
    cells += [bytes([a, b, c, d]) for a in range(0xF0, 0x100) for b in edges for c in edges for d in (0x80, 0xBF, 0x41)]
    col = pa.array(cells, pa.binary()).view(pa.string())
    for lower in (False, True):
        field = Field("f", kind="scalar", strip=False, lower=lower, on_invalid_utf8="replace")
        keys, _ = tokenize(col, field)
        want = [c.decode("utf-8", "replace") for c in cells]
        assert keys.to_pylist() == [w.lower() if lower else w for w in want]
