"""Vocabularies: mapping tables, their exact lookup structures, hashing mode, fitting.

Encoding convention (docs/design.md)
------------------------------------
======  ================================================================
index   meaning
======  ================================================================
0       padding
1       out of vocabulary (OOV)
2...    vocabulary tokens; fitted tables number them by descending count,
        ties by token in byte order
======  ================================================================

A mapping table is one parquet file per field, ``<dir>/<field name>.parquet``, with
columns ``token`` (string) and ``index`` (int32). Tables a user brings are used as
given: their indices, their order.

Hashing mode (``Field(buckets=N)``) needs no table: ``index = 2 + hash_token(key) % N``
where ``key`` is the normalized token and ``hash_token`` is XXH64 with seed 0 over
its UTF-8 bytes (``xxhash.xxh64_intdigest(key.encode())`` computes the same).
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import threading
import warnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import io
from .encoding import check_field_type, check_fields, tokenize
from .errors import SpecError, VocabError
from .kernels import cpu
from .spec import CsvSpec, Field

log = logging.getLogger(__name__)

TABLE_SCHEMA = pa.schema([("token", pa.string()), ("index", pa.int32())])


def hash_token(token: str | bytes) -> int:
    """The stable 64-bit hash of hashing mode: XXH64 (seed 0) of the token's UTF-8 bytes.

    ``hash_token`` does not normalize: a field with ``buckets=N`` maps a raw token to
    ``2 + hash_token(field.normalize(token)) % N``.

    >>> hash_token("")
    17241709254077376921
    """
    data = token.encode("utf-8") if isinstance(token, str) else bytes(token)
    return int(cpu.xxh64(np.frombuffer(data, dtype=np.uint8), 0, len(data)))


def bucket_index(token: str, field: Field) -> int:
    """The index a hashing-mode ``field`` gives ``token`` (normalization included)."""
    if field.buckets is None:
        raise ValueError(f"field {field.name!r} has no buckets; bucket_index needs hashing mode")
    key = field.normalize(token)
    if not key:
        return cpu.PAD
    return cpu.FIRST_INDEX + hash_token(key) % field.buckets


def _check_table(name: str, table: pa.Table, where: str) -> pa.Table:
    """Validate a mapping table; return it with a plain ``string`` token column."""
    cols = table.schema.names
    for col in ("token", "index"):
        if col not in cols:
            raise VocabError(f"{where}: mapping table of field {name!r} has no {col!r} column; columns are {cols}")
    token_t, index_t = table.schema.field("token").type, table.schema.field("index").type
    if not (pa.types.is_string(token_t) or pa.types.is_large_string(token_t)):
        raise VocabError(f"{where}: column 'token' of field {name!r} must be string; found {token_t}")
    if index_t != pa.int32():
        raise VocabError(
            f"{where}: column 'index' of field {name!r} must be int32; found {index_t} "
            "(cast it, e.g. table.cast(...) or df['index'].astype('int32'))"
        )
    table = table.select(["token", "index"]).combine_chunks()
    for col in ("token", "index"):
        nulls = table.column(col).null_count
        if nulls:
            raise VocabError(f"{where}: column {col!r} of field {name!r} has {nulls} null values")
    index = table.column("index").to_numpy()
    if len(index) and index.min() < cpu.FIRST_INDEX:
        row = int(np.argmin(index))
        raise VocabError(
            f"{where}: field {name!r} maps token {table.column('token')[row].as_py()!r} to index "
            f"{index[row]}; indices 0 (padding) and 1 (out of vocabulary) are reserved, tokens start at 2"
        )
    tokens = table.column("token")
    if pc.count_distinct(tokens).as_py() != len(tokens):
        counts = pc.value_counts(tokens)
        twice = set(counts.field("values").filter(pc.greater(counts.field("counts"), 1)).to_pylist())
        seen: dict = {}
        for row, token in enumerate(tokens.to_pylist()):  # only on the error path
            if token in twice and token in seen:
                raise VocabError(
                    f"{where}: field {name!r} lists token {token!r} twice (rows {seen[token]} and {row}); "
                    "tokens must be unique"
                )
            seen.setdefault(token, row)
    uniq, first, counts = np.unique(index, return_index=True, return_counts=True)
    if len(uniq) != len(index):
        dup = uniq[counts > 1][0]
        rows = np.flatnonzero(index == dup)[:2]
        toks = [table.column("token")[int(r)].as_py() for r in rows]
        raise VocabError(f"{where}: field {name!r} gives index {dup} to two tokens, {toks[0]!r} and {toks[1]!r}")
    return table.cast(TABLE_SCHEMA)


class Vocabulary:
    """Mapping tables for a set of fields.

    Parameters
    ----------
    tables : mapping of field name to pyarrow.Table
        Each with columns ``token`` (string) and ``index`` (int32). See the module
        docstring for the encoding convention.
    """

    def __init__(self, tables: Mapping[str, pa.Table], *, source: str = "<memory>"):
        self.source = source
        self._tables = {name: _check_table(name, t, source) for name, t in tables.items()}
        # Kernel lookup tables are built on first use: only processes that encode
        # (workers) pay for them, not the client that plans a job.
        self._lookups: dict[str, tuple] = {}
        self._lookups_lock = threading.Lock()
        self._checked: set[tuple] = set()

    # -------------------------------------------------------------- mapping access
    @property
    def names(self) -> list[str]:
        return sorted(self._tables)

    def __contains__(self, name: str) -> bool:
        return name in self._tables

    def __getitem__(self, name: str) -> pa.Table:
        return self._tables[name]

    def __len__(self) -> int:
        return len(self._tables)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{n}: {self._tables[n].num_rows}" for n in self.names)
        return f"Vocabulary({sizes}; source={self.source!r})"

    def __eq__(self, other) -> bool:
        return (
            isinstance(other, Vocabulary)
            and self._tables.keys() == other._tables.keys()
            and all(self._tables[n].equals(other._tables[n]) for n in self._tables)
        )

    def fingerprint(self) -> str:
        """SHA-256 over every table's tokens and indices (what a manifest records)."""
        h = hashlib.sha256()
        for name in self.names:
            tokens = self._tables[name].column("token").combine_chunks()
            offsets = np.frombuffer(tokens.buffers()[1], dtype=np.int32)[
                tokens.offset : tokens.offset + len(tokens) + 1
            ]
            data = tokens.buffers()[2]
            h.update(name.encode() + b"\0")
            h.update(np.diff(offsets).astype(np.int64).tobytes())  # lengths, tokens and their order
            h.update(b"" if data is None else memoryview(data)[offsets[0] : offsets[-1]])
            h.update(self._tables[name].column("index").combine_chunks().to_numpy().tobytes())
        return h.hexdigest()

    # -------------------------------------------------------------- lookups
    def _build(self, name: str) -> tuple:
        table = self._tables[name]
        tokens = table.column("token").combine_chunks().cast(pa.large_string())
        offsets = np.frombuffer(tokens.buffers()[1], dtype=np.int64)[tokens.offset : tokens.offset + len(tokens) + 1]
        data = tokens.buffers()[2]
        data = np.zeros(0, np.uint8) if data is None else np.frombuffer(data, dtype=np.uint8)
        values = table.column("index").combine_chunks().to_numpy()
        if 4 * len(tokens) + offsets[-1] - offsets[0] >= 2**32:
            raise VocabError(f"{self.source}: mapping table of field {name!r} holds over 4 GiB of tokens")
        # Load factor at most 1/2 keeps linear probes short on hits and misses alike.
        capacity = 1 << max(4, int(2 * max(len(tokens), 1) - 1).bit_length())
        slots, arena, dup = cpu.build_table(offsets, data, values, capacity)
        assert dup < 0, "duplicate tokens are refused by _check_table"
        slots.flags.writeable = False
        arena.flags.writeable = False
        return slots, arena

    def lookup(self, field: Field) -> tuple:
        """The kernel's lookup tuple for ``field`` (built once, then cached)."""
        if field.name not in self._tables:
            raise VocabError(
                f"vocabulary {self.source} has no table for field {field.name!r} "
                f"(expected {field.name}.parquet; it has {self.names or 'no tables'}); "
                "fit one with `dscore vocab JOB.yaml` or give the field buckets=N"
            )
        with self._lookups_lock:  # tasks on several threads share one worker's tables
            if field.name not in self._lookups:
                self._lookups[field.name] = self._build(field.name)
        self._warn_unnormalized(field)
        return self._lookups[field.name]

    def _warn_unnormalized(self, field: Field) -> None:
        key = (field.name, field.lower, field.strip)
        if key in self._checked:
            return
        self._checked.add(key)
        tokens = self._tables[field.name].column("token")
        normal, _ = tokenize(tokens, Field(field.name, kind="scalar", lower=field.lower, strip=field.strip))
        if len(normal) == len(tokens) and pc.all(pc.equal(normal, tokens.cast(pa.large_string()))).as_py() in (
            True,
            None,
        ):
            return
        bad = [t for t in tokens.to_pylist() if field.normalize(t) != t or not t][:3]
        warnings.warn(
            f"{self.source}: table of field {field.name!r} holds tokens that normalization "
            f"(strip={field.strip}, lower={field.lower}) never produces, e.g. {bad}; they can never match",
            stacklevel=3,
        )

    # -------------------------------------------------------------- persistence
    def save(self, path: str, *, storage_options: dict | None = None) -> None:
        """Write ``<path>/<field>.parquet`` for each table (other files are left alone)."""
        fs, root = io.url_to_fs(path, storage_options)
        fs.makedirs(root, exist_ok=True)
        for name, table in self._tables.items():
            io.write_atomic(fs, posixpath.join(root, f"{name}.parquet"), lambda f, t=table: pq.write_table(t, f))

    @classmethod
    def load(
        cls, path: str, *, fields: Iterable[Field] | None = None, storage_options: dict | None = None
    ) -> Vocabulary:
        """Read the mapping tables in ``path``: those of ``fields`` (hashing fields need
        none), or every ``*.parquet`` there when ``fields`` is None."""
        fs, root = io.url_to_fs(path, storage_options)
        fs.invalidate_cache(root)  # tables another process wrote since this one listed
        if not fs.isdir(root):
            raise FileNotFoundError(f"vocabulary directory {path!r} does not exist")
        if fields is None:
            names = sorted(
                posixpath.basename(p)[: -len(".parquet")]
                for p in fs.ls(root, detail=False)
                if p.endswith(".parquet") and not posixpath.basename(p).startswith(".")
            )
        else:
            names = [f.name for f in fields if f.needs_table]
        tables = {}
        for name in names:
            target = posixpath.join(root, f"{name}.parquet")
            if not fs.exists(target):
                raise FileNotFoundError(
                    f"vocabulary {path!r} has no table for field {name!r} (expected {target}); "
                    "fit it with `dscore vocab JOB.yaml` or give the field buckets=N"
                )
            try:
                with fs.open(target, "rb") as f:
                    tables[name] = pq.read_table(f)
            except Exception as e:
                raise VocabError(f"cannot read mapping table {target}: {e}") from e
        return cls(tables, source=path)

    # -------------------------------------------------------------- fitting
    @classmethod
    def fit(
        cls,
        source,
        fields: Sequence[Field],
        *,
        min_count: int = 1,
        max_size: int | None = None,
        storage_options: dict | None = None,
        partition_rows: int = 1 << 20,
        csv: CsvSpec | dict | None = None,
        partition_types: Mapping[str, str] | None = None,
    ) -> Vocabulary:
        """Count tokens partition by partition on Dask and number them from 2.

        Parameters
        ----------
        source : str, list of str or dask.dataframe.DataFrame
            Parquet/CSV path, directory, glob or fsspec URL; or a dask DataFrame.
        fields : sequence of Field
            Fields in hashing mode are skipped (they need no table).
        min_count : int
            Tokens seen fewer times are left out (they encode as OOV).
        max_size : int, optional
            Keep at most this many tokens per field, the most frequent.
        csv, partition_types : optional
            How CSV input is parsed and hive directory columns are typed (the job
            keys of these names); read exactly as ``dscore score`` reads them.

        Every partition is counted in its own task and the counts are merged in a
        tree, so no process ever holds a whole column. Runs on the current Dask
        scheduler (a ``distributed.Client`` if one is active).
        """
        import dask

        check_fields(fields)
        fields = [f for f in fields if f.needs_table]
        if not fields:
            return cls({})
        if not (isinstance(min_count, int) and min_count >= 1):
            raise ValueError(f"min_count must be a positive integer, got {min_count!r}")
        if max_size is not None and not (isinstance(max_size, int) and max_size >= 1):
            raise ValueError(f"max_size must be a positive integer or None, got {max_size!r}")
        columns = list(dict.fromkeys(f.column for f in fields))
        if isinstance(source, (str, list)):
            fs, files = io.expand(source, storage_options)
            reading = io.Reading(CsvSpec.from_dict(csv) if isinstance(csv, dict) else csv, dict(partition_types or {}))
            first = io.full_url(fs, files[0].path)
            schema = io.read_schema(fs, files[0], columns, reading)
            for f in fields:
                if f.column not in schema.names:
                    raise SpecError(
                        f"field {f.name!r}: column {f.column!r} is not in {first}; columns are {schema.names}"
                    )
                check_field_type(f, schema.field(f.column).type, where=f"{first}: ")
            pieces = io.plan(fs, files, partition_rows, reading=reading)
            parts = [dask.delayed(_count_piece)(fs, p, columns, fields, reading) for p in pieces]
            label = source if isinstance(source, str) else f"{len(source)} paths"
        elif hasattr(source, "to_delayed") and hasattr(source, "npartitions"):
            parts = [dask.delayed(_count_frame)(d, columns, fields) for d in source.to_delayed()]
            label = "dask DataFrame"
        else:
            raise TypeError(
                f"source must be a path, URL, glob, list of those, or a dask DataFrame; got "
                f"{type(source).__module__}.{type(source).__name__} (wrap pandas data with dask.dataframe.from_pandas)"
            )
        while len(parts) > 1:
            parts = [dask.delayed(_merge)(*parts[i : i + 8]) for i in range(0, len(parts), 8)]
        (counts,) = dask.compute(parts[0])
        tables = {f.name: _number(counts[f.name], min_count, max_size) for f in fields}
        vocab = cls(tables, source=f"fit({label})")
        log.info("fitted %s", vocab)
        return vocab


def _count_table(table: pa.Table, fields: Sequence[Field]) -> dict[str, pa.Table]:
    out = {}
    for f in fields:
        tokens, weights = tokenize(table.column(f.column), f)
        out[f.name] = (
            pa.table({"token": tokens, "count": weights}).group_by("token").aggregate([("count", "sum")])
        ).rename_columns(["token", "count"])
    return out


def _count_piece(fs, piece: io.Piece, columns, fields, reading=None) -> dict[str, pa.Table]:
    return _count_table(io.read_piece(fs, piece, columns, reading), fields)


def _count_frame(df, columns, fields) -> dict[str, pa.Table]:
    return _count_table(pa.Table.from_pandas(df[columns], preserve_index=False), fields)


def _merge(*parts: dict[str, pa.Table]) -> dict[str, pa.Table]:
    out = {}
    for name in parts[0]:
        t = pa.concat_tables([p[name] for p in parts])
        out[name] = t.group_by("token").aggregate([("count", "sum")]).rename_columns(["token", "count"])
    return out


def _number(counts: pa.Table, min_count: int, max_size: int | None) -> pa.Table:
    counts = counts.filter(pc.greater_equal(counts.column("count"), min_count))
    counts = counts.sort_by([("count", "descending"), ("token", "ascending")])
    if max_size is not None:
        counts = counts.slice(0, max_size)
    n = counts.num_rows
    return pa.table(
        {
            "token": counts.column("token").cast(pa.string()),
            "index": pa.array(np.arange(cpu.FIRST_INDEX, cpu.FIRST_INDEX + n, dtype=np.int32)),
        },
        schema=TABLE_SCHEMA,
    )
