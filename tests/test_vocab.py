"""Vocabulary: fitting on Dask, mapping-table format, user tables, hashing mode, errors."""

from __future__ import annotations

import collections

import dask
import dask.dataframe as dd
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from dscore import Field, Vocabulary, bucket_index, encode, hash_token
from dscore.errors import SpecError, VocabError

from . import naive


def table(tokens, index, index_type=None):
    return pa.table({"token": pa.array(tokens, pa.string()), "index": pa.array(index, index_type or pa.int32())})


@pytest.fixture
def data_dir(tmp_path, rng):
    """Three parquet files with a delimited, a list and a dictionary-encoded scalar column."""
    words = ["alpha", "Beta", "gamma", "DELTA", "épsilon", "Σίγμα", "z"]
    for i in range(3):
        n = 200
        apps = [None if rng.random() < 0.05 else ",".join(rng.choice(words, size=rng.integers(0, 6))) for _ in range(n)]
        camps = [list(rng.choice(words, size=rng.integers(0, 4))) for _ in range(n)]
        dev = pa.array(rng.choice(words[:3], size=n)).dictionary_encode()
        t = pa.table({"apps": pa.array(apps, pa.string()), "camps": camps, "dev": dev})
        pq.write_table(t, tmp_path / f"part-{i}.parquet", row_group_size=64)
    return tmp_path


FIELDS = [
    Field("apps", max_len=4),
    Field("camps", kind="list", max_len=3),
    Field("dev", kind="scalar"),
    Field("hashed", column="apps", buckets=100),
]


def expected_counts(paths, field):
    c = collections.Counter()
    for p in paths:
        for v in pq.read_table(p, columns=[field.column]).column(0).to_pylist():
            c.update(naive.keys(v, field))
    return c


def test_fit_counts_and_numbering(data_dir):
    with dask.config.set(scheduler="threads"):
        vocab = Vocabulary.fit(str(data_dir / "*.parquet"), FIELDS, partition_rows=64)
    assert vocab.names == ["apps", "camps", "dev"]  # the hashing field needs no table
    for f in FIELDS[:3]:
        c = expected_counts(sorted(data_dir.glob("*.parquet")), f)
        order = sorted(c, key=lambda k: (-c[k], k.encode()))
        t = vocab[f.name]
        assert t.column("token").to_pylist() == order
        assert t.column("index").to_pylist() == list(range(2, 2 + len(order)))
        assert t.schema.field("index").type == pa.int32()


def test_fit_min_count_max_size_and_dask_dataframe(data_dir):
    ddf = dd.read_parquet(str(data_dir), dtype_backend="pyarrow")
    with dask.config.set(scheduler="threads"):
        full = Vocabulary.fit(str(data_dir), FIELDS[:1])
        small = Vocabulary.fit(ddf, FIELDS[:1], min_count=100, max_size=3)
    c = expected_counts(sorted(data_dir.glob("*.parquet")), FIELDS[0])
    kept = [k for k in sorted(c, key=lambda k: (-c[k], k.encode())) if c[k] >= 100][:3]
    assert small["apps"].column("token").to_pylist() == kept
    assert full["apps"].column("token").to_pylist()[:3] == kept


def test_fit_runs_partition_by_partition(data_dir):
    """Counting is one task per partition plus a merge tree; no task reads every file."""
    seen = []
    from dscore import vocab as vocab_mod

    original = vocab_mod._count_piece

    def spy(fs, piece, *args):
        seen.append(piece)
        return original(fs, piece, *args)

    vocab_mod._count_piece = spy
    try:
        with dask.config.set(scheduler="sync"):
            Vocabulary.fit(str(data_dir), FIELDS[:1], partition_rows=64)
    finally:
        vocab_mod._count_piece = original
    assert len(seen) == 3 * 4  # 3 files x 4 row groups of 64 rows (200 rows each)
    assert all(p.rg_stop - p.rg_start == 1 for p in seen)


def test_save_load_roundtrip(tmp_path, data_dir):
    with dask.config.set(scheduler="threads"):
        vocab = Vocabulary.fit(str(data_dir), FIELDS)
    vocab.save(str(tmp_path / "v"))
    assert sorted(p.name for p in (tmp_path / "v").iterdir()) == ["apps.parquet", "camps.parquet", "dev.parquet"]
    back = Vocabulary.load(str(tmp_path / "v"))
    assert back == vocab and back.fingerprint() == vocab.fingerprint()
    only = Vocabulary.load(str(tmp_path / "v"), fields=FIELDS[:1] + FIELDS[3:])
    assert only.names == ["apps"]


def test_user_table_is_used_as_given(tmp_path):
    # Unsorted, sparse, arbitrary indices: dscore must not renumber them.
    pq.write_table(table(["zeta", "alpha", "mid"], [900, 7, 123456]), tmp_path / "f.parquet")
    vocab = Vocabulary.load(str(tmp_path))
    out = encode(pa.table({"f": ["alpha,ZETA, mid ,nope"]}), [Field("f", max_len=5)], vocab)["f"]
    assert out.tolist() == [[7, 900, 123456, 1, 0]]
    assert vocab["f"].column("token").to_pylist() == ["zeta", "alpha", "mid"]


def test_fingerprint_changes_with_content():
    a = Vocabulary({"f": table(["a", "b"], [2, 3])})
    b = Vocabulary({"f": table(["a", "b"], [3, 2])})
    c = Vocabulary({"f": table(["a", "c"], [2, 3])})
    assert len({a.fingerprint(), b.fingerprint(), c.fingerprint()}) == 3


# ---------------------------------------------------------------- hashing mode
@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(exclude_categories=["Cs"])))
def test_hash_token_is_xxh64(token):
    data = token.encode("utf-8")
    assert hash_token(token) == xxhash.xxh64_intdigest(data) == naive.xxh64(data)


def test_bucket_index_reproduces_encode():
    field = Field("f", kind="scalar", buckets=1000)
    tokens = ["Alpha", " beta ", "ΣΑΣ", "İ", "", "   "]
    out = encode(pa.table({"f": tokens}), [field])["f"][:, 0]
    assert out.tolist() == [bucket_index(t, field) for t in tokens]
    assert out[0] == 2 + xxhash.xxh64_intdigest(b"alpha") % 1000
    assert out[4] == out[5] == 0
    with pytest.raises(ValueError, match="field 'g' has no buckets"):
        bucket_index("a", Field("g"))


# ---------------------------------------------------------------- bad tables
@pytest.mark.parametrize(
    "t, match",
    [
        (table(["a", "b", "a"], [2, 3, 4]), r"field 'f' lists token 'a' twice \(rows 0 and 2\)"),
        (table(["a", "b"], [2, 2]), r"field 'f' gives index 2 to two tokens, 'a' and 'b'"),
        (table(["a", "b"], [2, 1]), r"maps token 'b' to index 1; indices 0 \(padding\) and 1"),
        (table(["a"], [2], pa.int64()), r"column 'index' of field 'f' must be int32; found int64"),
        (
            pa.table({"token": [1], "index": pa.array([2], pa.int32())}),
            r"column 'token' .* string; found int64",
        ),
        (
            pa.table({"tok": ["a"], "index": pa.array([2], pa.int32())}),
            r"has no 'token' column; columns are",
        ),
        (table([None, "a"], [2, 3]), r"column 'token' of field 'f' has 1 null values"),
    ],
)
def test_bad_tables(tmp_path, t, match):
    pq.write_table(t, tmp_path / "f.parquet")
    with pytest.raises(VocabError, match=match):
        Vocabulary.load(str(tmp_path))


def test_missing_table_and_directory(tmp_path):
    pq.write_table(table(["a"], [2]), tmp_path / "f.parquet")
    with pytest.raises(FileNotFoundError, match=r"has no table for field 'g' \(expected .*g.parquet\)"):
        Vocabulary.load(str(tmp_path), fields=[Field("f"), Field("g")])
    with pytest.raises(FileNotFoundError, match=r"vocabulary directory '.*nope' does not exist"):
        Vocabulary.load(str(tmp_path / "nope"))
    (tmp_path / "f.parquet").write_bytes(b"not parquet")
    with pytest.raises(VocabError, match=r"cannot read mapping table .*f.parquet: "):
        Vocabulary.load(str(tmp_path))


def test_tables_changed_while_the_job_runs(tmp_path):
    from dscore.pipeline import TaskSpec
    from dscore.plan import ModelTask
    from dscore.spec import ModelSpec
    from dscore.worker import Runtime

    Vocabulary({"f": table(["a"], [2])}).save(str(tmp_path))
    task = TaskSpec((Field("f"),), (ModelTask(None, ModelSpec("m.pt"), "fp", ("f",)),), str(tmp_path),
                    "the job's fingerprint", ())  # fmt: skip
    with pytest.raises(VocabError, match=r"mapping tables in '.*' changed while the job was running; rerun with"):
        Runtime().vocab(task)


def test_unnormalized_user_table_warns():
    vocab = Vocabulary({"f": table(["Apple", "pear"], [2, 3])})
    with pytest.warns(
        UserWarning, match=r"field 'f' holds tokens that normalization .* never produces, e.g. \['Apple'\]"
    ):
        out = encode(pa.table({"f": ["Apple", "PEAR"]}), [Field("f", kind="scalar")], vocab)["f"]
    assert out[:, 0].tolist() == [1, 3]
    # With lower=False the same table is fine.
    out = encode(pa.table({"f": ["Apple"]}), [Field("f", kind="scalar", lower=False)], vocab)["f"]
    assert out[0, 0] == 2


def test_fit_bad_source(tmp_path, data_dir):
    with pytest.raises(FileNotFoundError, match=r"input '.*nothing-\*.parquet' matched no data files"):
        Vocabulary.fit(str(tmp_path / "nothing-*.parquet"), FIELDS)
    with pytest.raises(SpecError, match=r"field 'x': column 'missing' is not in .*part-0.parquet"):
        Vocabulary.fit(str(data_dir), [Field("x", column="missing")])
    with pytest.raises(SpecError, match=r"part-0.parquet: field 'camps' \(column 'camps', kind 'delimited'\)"):
        Vocabulary.fit(str(data_dir), [Field("camps")])
    with pytest.raises(ValueError, match="min_count must be a positive integer"):
        Vocabulary.fit(str(data_dir), FIELDS, min_count=0)


def test_fit_rejects_pandas_frame():
    with pytest.raises(TypeError, match=r"got pandas.*DataFrame \(wrap pandas data with dask.dataframe.from_pandas\)"):
        Vocabulary.fit(pd.DataFrame({"apps": ["a"]}), FIELDS[:1])
