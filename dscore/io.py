"""fsspec inputs: expand URLs, plan partitions from parquet footers, read one partition.

A *piece* is the unit of work everywhere in dscore: one input file, or a run of
consecutive row groups of one parquet file. Its identity (path, row-group range,
size, modification time or etag) is what the output manifest records, so pieces
must be deterministic for the same input.

What an input URL covers (``expand``): a file; a directory, read as a dataset of
every data file below it; or a glob, whose matches are files or such directories
(a Spark ``y.parquet/`` folder of part files). Names starting with ``_`` or ``.``
(``_SUCCESS``, ``_temporary/``, ``.crc`` files) are ignored at every level below
the URL's fixed part, as Spark, Hive and pyarrow.dataset do; every other file must
be parquet or CSV, or the job fails naming it: nothing matched is skipped silently.
Hive-style ``key=value`` directories give their files' rows a column ``key``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import io as _io
import posixpath
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import unquote

import fsspec
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from . import config
from .errors import InputError
from .spec import CsvSpec

PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")
CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.zst")
PARQUET_MAGIC = b"PAR1"
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"  # how Spark and Hive name a null partition value


@dataclass(frozen=True)
class InputFile:
    """A data file of the input, with the hive-style ``key=value`` directories
    between the input's fixed part and the file, as ``((key, value), ...)``
    (``value`` is ``None`` for Hive's null partition)."""

    path: str
    partitions: tuple = ()


@dataclass(frozen=True)
class Piece:
    """One partition of the input: a file, or row groups ``[rg_start, rg_stop)`` of one."""

    index: int
    url: str
    format: str
    rg_start: int
    rg_stop: int
    rows: int | None
    size: int
    version: str
    partitions: tuple = ()  # InputFile.partitions

    def identity(self) -> dict:
        """What must not change between a run and its resume."""
        ident = {
            "url": self.url,
            "row_groups": [self.rg_start, self.rg_stop],
            "rows": self.rows,
            "size": self.size,
            "version": self.version,
        }
        if self.partitions:  # only then: identities (and input digests) of other inputs stay as they were
            ident["partitions"] = dict(self.partitions)
        return ident

    def describe(self) -> str:
        if self.format == "parquet":
            return f"{self.url} (row groups {self.rg_start}-{self.rg_stop - 1})"
        return self.url


def url_to_fs(url: str, storage_options: dict | None = None):
    """``(filesystem, path)`` for ``url``."""
    return fsspec.core.url_to_fs(url, **(storage_options or {}))


def is_local(fs) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    return any(p in ("file", "local") for p in protocols)


def write_atomic(fs, path: str, write) -> None:
    """Write ``path`` with ``write(file)`` so that readers see all of it or none of it.

    Locally: a temporary file in the same directory, then a rename. Elsewhere: one
    object, uploaded only once ``write`` has returned. A file opened on an object
    store would not do: leaving ``with fs.open(...)`` on an exception still uploads
    what was written so far, and a rename there is a copy and a delete.
    """
    if not is_local(fs):
        buf = _io.BytesIO()
        write(buf)
        fs.pipe_file(path, buf.getvalue())
        return
    parent = posixpath.dirname(path)
    fs.makedirs(parent, exist_ok=True)
    tmp = posixpath.join(parent, f".{posixpath.basename(path)}.{uuid.uuid4().hex}.tmp")
    try:
        with fs.open(tmp, "wb") as f:
            write(f)
        fs.mv(tmp, path)
    finally:
        if fs.exists(tmp):
            fs.rm(tmp)


def _format(path: str) -> str:
    lower = path.lower()
    if lower.endswith(CSV_SUFFIXES):
        return "csv"
    return "parquet"


def ignored(name: str) -> bool:
    """Names that Spark, Hive and pyarrow.dataset skip: ``_SUCCESS``, ``_temporary``,
    ``_metadata``, ``.crc`` and other hidden files. Spark keeps ``_key=value``
    directories (they are partitions), and so does dscore."""
    return name.startswith(".") or (name.startswith("_") and "=" not in name)


def _has_magic(path: str) -> bool:
    return any(c in path for c in "*?[")


def _below(path: str, root: str) -> list[str]:
    """The components of ``path`` below the directory ``root``."""
    root = root.rstrip("/")
    rel = path[len(root) :] if root and path.startswith(root + "/") else path
    return [c for c in rel.split("/") if c]


def _hive(path: str, root: str) -> tuple:
    """``((key, value), ...)`` of the ``key=value`` directories between ``root`` and ``path``."""
    out = []
    for part in _below(path, root)[:-1]:
        key, eq, value = part.partition("=")
        if eq and key:
            value = unquote(value)  # Spark escapes /, =, % and others in partition values
            out.append((unquote(key), None if value == HIVE_NULL else value))
    return tuple(out)


def _check_data_file(fs, path: str, url: str) -> None:
    """Parquet or CSV by its suffix, or parquet by its first bytes (Hive names its
    files ``000000_0``); anything else fails naming it, rather than being skipped."""
    if path.lower().endswith(PARQUET_SUFFIXES + CSV_SUFFIXES):
        return
    try:
        with fs.open(path, "rb") as f:
            head = f.read(len(PARQUET_MAGIC))
    except OSError as e:
        raise InputError(full_url(fs, path), None, None, f"cannot be read: {type(e).__name__}: {e}") from e
    if head != PARQUET_MAGIC:
        raise InputError(
            full_url(fs, path), None, None,
            f"matched by input {url!r} but neither parquet ({', '.join(PARQUET_SUFFIXES)}, or starting with "
            f"PAR1) nor CSV ({', '.join(CSV_SUFFIXES)}); move it out of the input, narrow the input, or "
            "rename it with a leading _ or . to have it ignored",
        )  # fmt: skip


def _expand_one(fs, url: str, path: str) -> list[InputFile]:
    """The data files ``url`` covers, sorted; see the module docstring."""
    if _has_magic(path):
        parts = path.split("/")
        fixed = next(i for i, p in enumerate(parts) if _has_magic(p))
        root = "/".join(parts[:fixed])
        matches = fs.glob(path, detail=True)
        dirs = {m for m, info in matches.items() if info.get("type") == "directory"}
        candidates = [m for m in matches if m not in dirs] + [p for d in sorted(dirs) for p in fs.find(d)]
    elif fs.isdir(path):
        root, candidates = path, fs.find(path)
    elif fs.exists(path):
        return [InputFile(path)]  # named by the user: read whatever its name
    else:
        raise FileNotFoundError(f"input {url!r} does not exist")
    kept = sorted({p for p in candidates if not any(ignored(c) for c in _below(p, root))})
    if not kept:
        skipped = sorted({_below(p, root)[0] for p in candidates})
        note = f"; names starting with _ or . are ignored: {', '.join(skipped[:5])}" if skipped else ""
        raise FileNotFoundError(f"input {url!r} matched no data files (*.parquet, *.csv){note}")
    for p in kept:
        _check_data_file(fs, p, url)
    return [InputFile(p, _hive(p, root)) for p in kept]


def expand(url: str | list[str], storage_options: dict | None = None):
    """``(fs, files)``: the ``InputFile``s of a file, a directory of data files, a
    glob, or a list of those; sorted per URL, each file once.

    Raises ``FileNotFoundError`` naming the URL when nothing matches, and
    ``InputError`` naming a matched file that is neither parquet nor CSV.
    """
    urls = [url] if isinstance(url, str) else list(url)
    if not urls:
        raise FileNotFoundError("input is an empty list of paths")
    fs, _ = url_to_fs(urls[0], storage_options)
    # fsspec shares filesystem instances within a process, and object stores cache
    # listings in them: a job must see the input as it is now (its versions name it).
    fs.invalidate_cache()
    files: dict[str, InputFile] = {}
    for u in urls:
        _, path = url_to_fs(u, storage_options)
        for f in _expand_one(fs, u, path):
            files.setdefault(f.path, f)  # a file two URLs cover is still read once
    return fs, list(files.values())


def _version(info: dict) -> str:
    for key in ("ETag", "etag", "mtime", "LastModified", "last_modified", "created"):
        if info.get(key) is not None:
            return str(info[key]).strip('"')
    return ""


def full_url(fs, path: str) -> str:
    return fs.unstrip_protocol(path)


def _parquet_footer(fs, path: str) -> pq.FileMetaData:
    try:
        with fs.open(path, "rb") as f:
            return pq.ParquetFile(f).metadata
    except Exception as e:
        raise InputError(
            full_url(fs, path), None, None, f"not a readable parquet file (footer): {type(e).__name__}: {e}"
        ) from e


def _plan_file(fs, file: InputFile, partition_rows: int, partition_bytes, reading, id_types):
    path = file.path
    info = fs.info(path)
    url, size, version = full_url(fs, path), int(info.get("size") or 0), _version(info)
    tail = (size, version, file.partitions)
    if _format(path) == "csv":
        if id_types is not None:  # the types read_piece gives them: the job's, or string
            id_types.check(url, reading.types(file, None, id_types.columns))
        return [(url, "csv", 0, 1, None, *tail)]
    meta = _parquet_footer(fs, path)
    if id_types is not None:
        id_types.check(url, reading.types(file, meta.schema.to_arrow_schema(), id_types.columns))
    if meta.num_row_groups == 0:
        return [(url, "parquet", 0, 0, 0, *tail)]
    out, start, rows, nbytes = [], 0, 0, 0
    for rg in range(meta.num_row_groups):
        n, b = meta.row_group(rg).num_rows, meta.row_group(rg).total_byte_size
        if rows and (rows + n > partition_rows or (partition_bytes and nbytes + b > partition_bytes)):
            out.append((url, "parquet", start, rg, rows, *tail))
            start, rows, nbytes = rg, 0, 0
        rows += n
        nbytes += b
    out.append((url, "parquet", start, meta.num_row_groups, rows, *tail))
    return out


class Unreadable(NamedTuple):
    """A file that ``plan`` set aside: its footer could not be read, or its id types differ."""

    url: str
    identity: dict  # Piece.identity()'s keys: url, size, version
    error: str


FOOTER_THREADS = 16  # footers read at once: on object stores each is a round trip


def plan(
    fs, files: list[InputFile], partition_rows: int, *, bad: list | None = None,
    partition_bytes: int | None = None, reading: Reading | None = None, id_types: IdTypes | None = None,
) -> list[Piece]:  # fmt: skip
    """Pieces of at most ``partition_rows`` rows and ``partition_bytes`` uncompressed
    bytes (parquet metadata), but at least one row group, each.

    A file whose footer cannot be read, or whose id columns differ in type from
    ``id_types`` (parquet footers; CSV columns as ``reading`` types them), raises
    ``InputError``, or, when ``bad`` is a list, is appended to it as an ``Unreadable``
    and left out of the plan. Footers are read in a thread pool.
    """
    reading = reading or Reading()

    def one(file):
        try:
            return _plan_file(fs, file, partition_rows, partition_bytes, reading, id_types)
        except InputError as e:
            if bad is None:
                raise
            return e

    with concurrent.futures.ThreadPoolExecutor(max(1, min(FOOTER_THREADS, len(files)))) as pool:
        per_file = list(pool.map(one, files))
    pieces = []
    for file, parts in zip(files, per_file):
        if isinstance(parts, InputError):
            info = fs.info(file.path)
            identity = {"url": full_url(fs, file.path), "size": info.get("size"), "version": _version(info)}
            bad.append(Unreadable(parts.url, identity, str(parts)))
            continue
        for args in parts:
            pieces.append(Piece(len(pieces), *args))
    return pieces


@dataclass(frozen=True)
class Reading:
    """How input files are read beyond what they say themselves: the job's ``csv:``
    options (``spec.CsvSpec``) and the Arrow types of hive partition columns
    (``partition_types``; string unless given).

    CSV columns that dscore reads (id and field columns) are strings unless
    ``csv.column_types`` types them: type inference would turn an id ``"00123"``
    into the integer 123.
    """

    csv: CsvSpec | None = None
    partition_types: Mapping = dataclasses.field(default_factory=dict)

    def partition_type(self, column: str) -> pa.DataType:
        return pa.type_for_alias(self.partition_types.get(column, "string"))

    def csv_type(self, column: str) -> pa.DataType:
        declared = (self.csv.column_types if self.csv else {}).get(column)
        return pa.type_for_alias(declared) if declared else pa.string()

    def types(self, file: InputFile, schema: pa.Schema | None, columns: Sequence[str]) -> dict:
        """Types of ``file``'s ``columns`` as ``read_piece`` gives them: partition
        columns as typed here; others from the parquet ``schema``, or for CSV (``schema``
        None) as typed here. Columns the file lacks are left out."""
        parts = dict(file.partitions)
        out = {}
        for c in columns:
            if c in parts:
                out[c] = self.partition_type(c)
            elif schema is None:
                out[c] = self.csv_type(c)
            elif c in schema.names:
                out[c] = schema.field(c).type
        return out

    def csv_options(self, columns: Sequence[str], include: Sequence[str] | None = None) -> dict:
        """Keyword arguments of ``pyarrow.csv.read_csv`` / ``open_csv``: ``columns`` as
        strings unless typed, only ``include`` read (all when None)."""
        c = self.csv or CsvSpec()
        names = list(c.column_names) if c.column_names else None
        read = pacsv.ReadOptions(
            column_names=names,
            autogenerate_column_names=not c.header and not names,  # f0, f1, ...
            skip_rows=1 if (c.header and names) else 0,  # the names replace the file's header line
        )
        types = {col: pa.string() for col in columns}
        types.update({col: pa.type_for_alias(t) for col, t in c.column_types.items()})
        return {
            "read_options": read,
            "parse_options": pacsv.ParseOptions(delimiter=c.delimiter, quote_char=c.quote_char),
            "convert_options": pacsv.ConvertOptions(column_types=types, include_columns=list(include or ())),
        }

    def partition_column(self, piece: Piece, column: str, rows: int) -> pa.Array:
        """The value of ``piece``'s hive directory ``column=value``, repeated ``rows`` times."""
        value, typ = dict(piece.partitions)[column], self.partition_type(column)
        try:
            scalar = pa.scalar(value, pa.string()).cast(typ)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise InputError(
                piece.url, None, column,
                f"hive directory {column}={value} is not of type {typ} (partition_types.{column}); "
                "fix the directory name or the type",
            ) from e  # fmt: skip
        return pa.repeat(scalar, rows)


@dataclass(frozen=True)
class IdTypes:
    """The id columns' Arrow types in the first input file. They become the output
    parts' schema, so every file must have the same (``check``)."""

    types: tuple  # ((column, pa.DataType), ...)
    source: str  # the first file's URL

    @property
    def columns(self) -> list[str]:
        return [c for c, _ in self.types]

    @classmethod
    def of(cls, schema: pa.Schema, id_columns: Sequence[str], source: str) -> IdTypes:
        return cls(tuple((c, schema.field(c).type) for c in id_columns if c in schema.names), source)

    def check(self, url: str, types: Mapping[str, pa.DataType], row_groups=None) -> None:
        """Raise ``InputError`` naming ``url`` and the column if an id column's type in
        ``types`` differs (a missing column is ``read_piece``'s to report)."""
        for column, want in self.types:
            got = types.get(column)
            if got is not None and got != want:
                typed = want if want != pa.string() else got  # CSV reads ids as strings unless typed
                raise InputError(
                    url, row_groups, column,
                    f"id column type is {got} here but {want} in {self.source} (the first input file); "
                    f"output parts must share one schema: cast the column to {want} in this file, "
                    f"or, for CSV input, type it in the job (csv: {{column_types: {{{column}: {typed}}}}})",
                )  # fmt: skip


def read_piece(fs, piece: Piece, columns: list[str], reading: Reading | None = None) -> pa.Table:
    """Read only ``columns`` of ``piece`` (hive partition columns included, as
    ``reading`` types them); errors are ``InputError`` naming the file."""
    reading = reading or Reading()
    path = fs._strip_protocol(piece.url)
    rgs = (piece.rg_start, piece.rg_stop) if piece.format == "parquet" else None
    in_file = in_file_columns(piece, columns)
    try:
        with fs.open(path, "rb") as f:
            if piece.format == "csv":
                table = pacsv.read_csv(f, **reading.csv_options(columns, include=in_file))
            else:
                pf = pq.ParquetFile(f)
                check_file_columns(piece, pf.schema_arrow.names, columns)
                table = pf.read_row_groups(range(piece.rg_start, piece.rg_stop), columns=in_file)
    except InputError:
        raise
    except pa.ArrowKeyError as e:  # CSV: a column in include_columns is not in the header
        missing = re.search(r"Column '(.*)' in include_columns", str(e))
        reason = "column is missing from the file" if missing else f"{type(e).__name__}: {e}"
        raise InputError(piece.url, rgs, missing and missing.group(1), reason) from e
    except Exception as e:
        raise InputError(piece.url, rgs, None, f"{type(e).__name__}: {e}") from e
    return with_partitions(table, piece, columns, reading)


def iter_piece(fs, piece: Piece, columns: list[str], max_bytes: int | None, reading: Reading):
    """``read_piece`` as one table, or, when its row groups decode to more than
    ``max_bytes`` (a piece is at least one row group, and a writer may make one row
    group of millions of rows), as consecutive tables of about ``max_bytes / 4`` each,
    streamed from the file in record batches: a worker's memory then bounds the
    partition size, not the input's row-group size. Errors are ``InputError``.
    """
    if piece.format != "parquet" or not max_bytes:
        yield read_piece(fs, piece, columns, reading)
        return
    rgs = (piece.rg_start, piece.rg_stop)
    with _input_errors(piece.url, rgs):
        f = fs.open(fs._strip_protocol(piece.url), "rb")
    with f:
        with _input_errors(piece.url, rgs):
            # Neither pre-buffered (pyarrow's default reads every column chunk of the row
            # groups at once: 500 MiB for a 1.5M-row row group before the first batch)
            # nor unbuffered (a column chunk read whole).
            pf = pq.ParquetFile(f, buffer_size=stream_buffer(), pre_buffer=False)
            check_file_columns(piece, pf.schema_arrow.names, columns)
            in_file = in_file_columns(piece, columns)
            meta, wanted = pf.metadata, set(in_file)
            nbytes = sum(
                meta.row_group(rg).column(i).total_uncompressed_size
                for rg in range(*rgs)
                for i in range(meta.num_columns)
                if meta.row_group(rg).column(i).path_in_schema.split(".")[0] in wanted
            )
        if nbytes > max_bytes:
            yield from _stream(pf, piece, columns, reading, max_bytes, nbytes)
            return
    # Within budget: read whole, pre-buffered (coalesced reads matter on object stores).
    yield read_piece(fs, piece, columns, reading)


def _stream(pf, piece: Piece, columns, reading, max_bytes: int, nbytes: int):
    """``iter_piece``'s slices of a piece that decodes to ``nbytes`` > ``max_bytes``."""
    rgs = (piece.rg_start, piece.rg_stop)
    rows = sum(pf.metadata.row_group(rg).num_rows for rg in range(*rgs))
    # Slices of a quarter of the budget: reading one peaks at about 3x its decoded
    # size (builders grow by doubling, then copy; measured 280 MiB for 64 MiB slices).
    batches = pf.iter_batches(
        batch_size=max(int(config.get("stream.min-rows")), rows * max_bytes // (4 * nbytes)), row_groups=range(*rgs),
        columns=in_file_columns(piece, columns), use_threads=False,
    )  # fmt: skip
    while True:
        with _input_errors(piece.url, rgs):
            batch = next(batches, None)
        if batch is None:
            return
        yield with_partitions(pa.Table.from_batches([batch]), piece, columns, reading)


def stream_buffer() -> int:
    """Bytes of the read buffer of a streamed parquet file (``config.get("stream.buffer")``)."""
    from dask.utils import parse_bytes

    value = config.get("stream.buffer")
    return parse_bytes(value) if isinstance(value, str) else int(value)


@contextlib.contextmanager
def _input_errors(url, rgs):
    try:
        yield
    except InputError:
        raise
    except Exception as e:
        raise InputError(url, rgs, None, f"{type(e).__name__}: {e}") from e


def in_file_columns(piece: Piece, columns: Sequence[str]) -> list[str]:
    """The ``columns`` read from ``piece``'s file: all but its hive partition columns."""
    parts = dict(piece.partitions)
    return [c for c in columns if c not in parts]


def check_file_columns(piece: Piece, names: Sequence[str], columns: Sequence[str]) -> None:
    """``InputError`` unless the file (its column ``names``) has every one of ``columns``
    that is not a partition column of ``piece``, and none that is."""
    rgs, parts = (piece.rg_start, piece.rg_stop), dict(piece.partitions)
    missing = [c for c in columns if c not in parts and c not in names]
    if missing:
        raise InputError(piece.url, rgs, missing[0], "column is missing from the file")
    both = [c for c in columns if c in parts and c in names]
    if both:
        raise InputError(
            piece.url,
            rgs,
            both[0],
            f"is a column of the file and a hive directory ({both[0]}=...) above it; rename one",
        )


def with_partitions(table: pa.Table, piece: Piece, columns: Sequence[str], reading: Reading) -> pa.Table:
    """``table`` (``in_file_columns`` of ``piece``) with the partition columns added, as ``columns``."""
    parts = dict(piece.partitions)
    for c in columns:
        if c in parts:
            table = table.append_column(c, reading.partition_column(piece, c, table.num_rows))
    return table.select(columns)


def read_schema(fs, file: InputFile, columns: Sequence[str] = (), reading: Reading | None = None) -> pa.Schema:
    """Arrow schema of a data file as ``read_piece`` reads it, with ``columns`` typed
    for CSV: from the parquet footer (or the CSV's first block), plus partition
    columns. An unreadable file is an ``InputError`` naming it."""
    reading = reading or Reading()
    if _format(file.path) == "csv":
        try:
            with fs.open(file.path, "rb") as f:
                schema = pacsv.open_csv(f, **reading.csv_options(columns)).schema
        except Exception as e:
            raise InputError(
                full_url(fs, file.path), None, None, f"not a readable CSV file: {type(e).__name__}: {e}"
            ) from e
    else:
        schema = _parquet_footer(fs, file.path).schema.to_arrow_schema()
    for key, _ in file.partitions:
        if key not in schema.names:
            schema = schema.append(pa.field(key, reading.partition_type(key)))
    return schema
