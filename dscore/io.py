"""fsspec inputs: expand URLs, plan partitions from parquet footers, read one partition.

A *piece* is the unit of work everywhere in dscore: one input file, or a run of
consecutive row groups of one parquet file. Its identity (path, row-group range,
size, modification time or etag) is what the output manifest records, so pieces
must be deterministic for the same input.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import io as _io
import os
import posixpath
import uuid
from dataclasses import dataclass

import fsspec
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")
CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.zst")


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

    def identity(self) -> dict:
        """What must not change between a run and its resume."""
        return {
            "url": self.url,
            "row_groups": [self.rg_start, self.rg_stop],
            "rows": self.rows,
            "size": self.size,
            "version": self.version,
        }

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


def _is_data_file(path: str) -> bool:
    base = os.path.basename(path.rstrip("/"))
    return not base.startswith(("_", ".")) and base.lower().endswith(PARQUET_SUFFIXES + CSV_SUFFIXES)


def expand(url: str | list[str], storage_options: dict | None = None):
    """``(fs, paths)``: a file, a directory of data files, a glob, or a list of those.

    Raises ``FileNotFoundError`` naming the URL when nothing matches.
    """
    urls = [url] if isinstance(url, str) else list(url)
    if not urls:
        raise FileNotFoundError("input is an empty list of paths")
    fs, _ = url_to_fs(urls[0], storage_options)
    # fsspec shares filesystem instances within a process, and object stores cache
    # listings in them: a job must see the input as it is now (its versions name it).
    fs.invalidate_cache()
    paths: list[str] = []
    for u in urls:
        _, path = url_to_fs(u, storage_options)
        if any(c in path for c in "*?["):
            found = sorted(p for p in fs.glob(path) if not fs.isdir(p))
        elif fs.isdir(path):
            found = sorted(p for p in fs.find(path) if _is_data_file(p))
        elif fs.exists(path):
            found = [path]
        else:
            raise FileNotFoundError(f"input {u!r} does not exist")
        if not found:
            raise FileNotFoundError(f"input {u!r} matched no data files (*.parquet, *.csv)")
        paths.extend(found)
    return fs, paths


def _version(info: dict) -> str:
    for key in ("ETag", "etag", "mtime", "LastModified", "last_modified", "created"):
        if info.get(key) is not None:
            return str(info[key]).strip('"')
    return ""


def full_url(fs, path: str) -> str:
    return fs.unstrip_protocol(path)


def _plan_file(fs, path: str, partition_rows: int, partition_bytes: int | None = None):
    info = fs.info(path)
    url, size, version = full_url(fs, path), int(info.get("size") or 0), _version(info)
    if _format(path) == "csv":
        return [(url, "csv", 0, 1, None, size, version)]
    try:
        with fs.open(path, "rb") as f:
            meta = pq.ParquetFile(f).metadata
    except Exception as e:
        raise InputError(url, None, None, f"not a readable parquet file (footer): {type(e).__name__}: {e}") from e
    if meta.num_row_groups == 0:
        return [(url, "parquet", 0, 0, 0, size, version)]
    out, start, rows, nbytes = [], 0, 0, 0
    for rg in range(meta.num_row_groups):
        n, b = meta.row_group(rg).num_rows, meta.row_group(rg).total_byte_size
        if rows and (rows + n > partition_rows or (partition_bytes and nbytes + b > partition_bytes)):
            out.append((url, "parquet", start, rg, rows, size, version))
            start, rows, nbytes = rg, 0, 0
        rows += n
        nbytes += b
    out.append((url, "parquet", start, meta.num_row_groups, rows, size, version))
    return out


def plan(
    fs, paths: list[str], partition_rows: int = 1 << 20, threads: int = 16, bad: list | None = None,
    partition_bytes: int | None = None,
) -> list[Piece]:  # fmt: skip
    """Pieces of at most ``partition_rows`` rows and ``partition_bytes`` uncompressed
    bytes (parquet metadata), but at least one row group, each.

    A file whose footer cannot be read raises ``InputError``, or, when ``bad`` is a
    list, is appended to it as ``(url, identity, error)`` and left out of the plan.
    Footers are read in a thread pool: on object stores each is a round trip.
    """

    def one(path):
        try:
            return _plan_file(fs, path, partition_rows, partition_bytes)
        except InputError as e:
            if bad is None:
                raise
            return e

    with concurrent.futures.ThreadPoolExecutor(max(1, min(threads, len(paths)))) as pool:
        per_file = list(pool.map(one, paths))
    pieces = []
    for path, parts in zip(paths, per_file):
        if isinstance(parts, InputError):
            info = fs.info(path)
            identity = {"url": full_url(fs, path), "size": info.get("size"), "version": _version(info)}
            bad.append((parts.url, identity, str(parts)))
            continue
        for args in parts:
            pieces.append(Piece(len(pieces), *args))
    return pieces


class InputError(Exception):
    """A bad input file, row group or column; the message names what is at fault."""

    def __init__(self, url: str, row_groups, column, reason: str):
        self.url, self.row_groups, self.column, self.reason = url, row_groups, column, reason
        where = url
        if row_groups is not None:
            where += f" (row groups {row_groups[0]}-{row_groups[1] - 1})"
        if column is not None:
            where += f", column {column!r}"
        super().__init__(f"{where}: {reason}")

    def __reduce__(self):
        return (InputError, (self.url, self.row_groups, self.column, self.reason))


def read_piece(fs, piece: Piece, columns: list[str]) -> pa.Table:
    """Read only ``columns`` of ``piece``; errors are ``InputError`` naming the file."""
    path = fs._strip_protocol(piece.url)
    rgs = (piece.rg_start, piece.rg_stop) if piece.format == "parquet" else None
    try:
        with fs.open(path, "rb") as f:
            if piece.format == "csv":
                table = pacsv.read_csv(f)
            else:
                pf = pq.ParquetFile(f)
                missing = [c for c in columns if c not in pf.schema_arrow.names]
                if missing:
                    raise InputError(piece.url, rgs, missing[0], "column is missing from the file")
                table = pf.read_row_groups(range(piece.rg_start, piece.rg_stop), columns=columns)
    except InputError:
        raise
    except Exception as e:
        raise InputError(piece.url, rgs, None, f"{type(e).__name__}: {e}") from e
    if piece.format == "csv":
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise InputError(piece.url, None, missing[0], "column is missing from the file")
        table = table.select(columns)
    return table


def iter_piece(fs, piece: Piece, columns: list[str], max_bytes: int | None = None):
    """``read_piece`` as one table, or, when its row groups decode to more than
    ``max_bytes`` (a piece is at least one row group, and a writer may make one row
    group of millions of rows), as consecutive tables of about ``max_bytes / 4`` each,
    streamed from the file in record batches: a worker's memory then bounds the
    partition size, not the input's row-group size. Errors are ``InputError``.
    """
    if piece.format != "parquet" or not max_bytes:
        yield read_piece(fs, piece, columns)
        return
    rgs = (piece.rg_start, piece.rg_stop)
    with _input_errors(piece.url, rgs):
        f = fs.open(fs._strip_protocol(piece.url), "rb")
    with f:
        with _input_errors(piece.url, rgs):
            # Neither pre-buffered (pyarrow's default reads every column chunk of the row
            # groups at once: 500 MiB for a 1.5M-row row group before the first batch)
            # nor unbuffered (a column chunk read whole).
            pf = pq.ParquetFile(f, buffer_size=STREAM_BUFFER, pre_buffer=False)
            missing = [c for c in columns if c not in pf.schema_arrow.names]
            if missing:
                raise InputError(piece.url, rgs, missing[0], "column is missing from the file")
            meta, wanted = pf.metadata, set(columns)
            nbytes = sum(
                meta.row_group(rg).column(i).total_uncompressed_size
                for rg in range(*rgs)
                for i in range(meta.num_columns)
                if meta.row_group(rg).column(i).path_in_schema.split(".")[0] in wanted
            )
            if nbytes <= max_bytes:
                table = pf.read_row_groups(range(*rgs), columns=columns)
        if nbytes <= max_bytes:
            yield table
            return
        rows = sum(meta.row_group(rg).num_rows for rg in range(*rgs))
        # Slices of a quarter of the budget: reading one peaks at about 3x its decoded
        # size (builders grow by doubling, then copy; measured 280 MiB for 64 MiB slices).
        batches = pf.iter_batches(
            batch_size=max(MIN_STREAM_ROWS, rows * max_bytes // (4 * nbytes)), row_groups=range(*rgs),
            columns=columns, use_threads=False,
        )  # fmt: skip
        while True:
            with _input_errors(piece.url, rgs):
                batch = next(batches, None)
            if batch is None:
                return
            yield pa.Table.from_batches([batch])


STREAM_BUFFER = 1 << 23
MIN_STREAM_ROWS = 4096


@contextlib.contextmanager
def _input_errors(url, rgs):
    try:
        yield
    except InputError:
        raise
    except Exception as e:
        raise InputError(url, rgs, None, f"{type(e).__name__}: {e}") from e


def read_schema(fs, path: str) -> pa.Schema:
    """Arrow schema of a data file, from the parquet footer (or the CSV's first block)."""
    with fs.open(path, "rb") as f:
        if _format(path) == "csv":
            return pacsv.open_csv(f).schema
        return pq.ParquetFile(f).schema_arrow
