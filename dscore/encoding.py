"""Fields of Arrow tables -> int32 index matrices (or jagged rows): type checks, the encode loop, statistics.

``encode(table, fields, vocab)`` is the public entry point; ``encode_table`` also
returns the per-field counts the job report shows, and encodes on the CPU or, with
``device="cuda"``, on the GPU: the same loop (``_encode_fields``, ``_encode_array``)
with ``dscore.encoding_cuda`` as its device, imported only then. Also here: the
invalid-UTF-8 error and its message, the choice of encode device, and ``tokenize``
(every key of a column, for fitting vocabularies). The kernel arguments come from
``dscore.kernel_args``; the kernels (``dscore.kernels``) never see Arrow objects.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .errors import DscoreError, JobError, SpecError
from .jagged import Jagged, jagged_buffers
from .kernel_args import (
    EMPTY_LOOKUP,
    NO_ROWS,
    KernelSpec,
    as_strings,
    dictionary_codes,
    dictionary_strings,
    is_list,
    list_buffers,
    row_buffers,
    separator,
    validity,
)
from .kernels import cpu
from .kernels.unicode import tables as unicode_tables
from .numeric import NumericSizeError, check_numeric_type, numeric_matrix
from .spec import ENCODE_DEVICES, MODEL_INPUTS, Field

log = logging.getLogger(__name__)


@dataclass
class FieldStats:
    """Counts for one field over some rows.

    ``tokens`` are non-empty tokens before truncation, ``kept`` those written,
    ``oov`` kept tokens that mapped to index 1, ``truncated`` rows that had more
    than ``max_len`` tokens. ``filled``: values of a numeric field that were null or
    NaN and took its ``fill`` (categorical fields leave it 0, numeric ones the rest).
    """

    rows: int = 0
    tokens: int = 0
    kept: int = 0
    oov: int = 0
    truncated: int = 0
    filled: int = 0

    def add(self, other: FieldStats) -> FieldStats:
        for k in ("rows", "tokens", "kept", "oov", "truncated", "filled"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        return self

    def summary(self) -> dict:
        rows = max(self.rows, 1)
        return {
            **{k: getattr(self, k) for k in ("rows", "tokens", "kept", "oov", "truncated", "filled")},
            "oov_rate": self.oov / max(self.kept, 1),
            "truncation_rate": self.truncated / rows,
            "mean_tokens": self.tokens / rows,
        }


# ---------------------------------------------------------------- type checks
def _is_stringish(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _is_token_type(t: pa.DataType) -> bool:
    """A type whose values are single tokens: strings, integers, dictionaries of those."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    return _is_stringish(t) or pa.types.is_integer(t) or pa.types.is_null(t)


def check_field_type(field: Field, type: pa.DataType, where: str = "") -> None:
    """Raise ``SpecError`` when a column of Arrow ``type`` cannot feed ``field``."""
    if field.numeric:
        return check_numeric_type(field, type, where)
    if pa.types.is_null(type):
        return
    if field.kind == "list":
        if is_list(type) and _is_token_type(type.value_type):
            return
        expected = "a list of strings or integers (list<string>, large_list<string>, list<int64>, ...)"
        hint = "; for a string of separated tokens use kind: delimited" if _is_token_type(type) else ""
    else:
        if _is_token_type(type):
            return
        expected = "a string, dictionary<string> or integer column"
        hint = "; for a list column use kind: list" if is_list(type) else ""
    raise SpecError(
        f"{where}field {field.name!r} (column {field.column!r}, kind {field.kind!r}) expects "
        f"{expected}; found {type}{hint}"
    )


# ---------------------------------------------------------------- invalid UTF-8
class InvalidUTF8Error(DscoreError, ValueError):
    """A string column holds invalid UTF-8 and its field says ``on_invalid_utf8: fail``.

    ``row`` counts from the first row of the table given to ``encode_table``.
    """

    def __init__(self, field: str, column: str, row: int, detail: str):
        self.field, self.column, self.row, self.detail = field, column, row, detail
        super().__init__(self.reason(f"row {row}"))

    def reason(self, row: str) -> str:
        """The message, with the bad row described as ``row`` (the caller may know more of it)."""
        return (
            f"field {self.field!r} (column {self.column!r}): {row} is not valid UTF-8 ({self.detail}); expected "
            f"UTF-8 text: fix the input, or set on_invalid_utf8: replace on field {self.field!r} to read each "
            "invalid sequence as U+FFFD"
        )

    def __reduce__(self):
        return (InvalidUTF8Error, (self.field, self.column, self.row, self.detail))


def _row_strings(arr: pa.Array, row: int) -> list[bytes]:
    """The raw bytes of the strings of row ``row`` (a cell, or a list's elements), as
    the kernels see them. Error messages only: this is slow."""
    if pa.types.is_dictionary(arr.type):
        return _row_strings(as_strings(arr.dictionary), arr.indices[row].as_py())
    if is_list(arr.type):
        starts, stops, _, _, child = list_buffers(arr)
        strings = child.slice(starts[row], stops[row] - starts[row])
    else:
        strings = as_strings(arr).slice(row, 1)
    binary = pa.large_binary() if pa.types.is_large_string(strings.type) else pa.binary()
    return [b for b in strings.view(binary).to_pylist() if b is not None]


def _utf8_error(field: Field, arr: pa.Array, row: int, table_row: int) -> InvalidUTF8Error:
    """The error for row ``row`` of the chunk ``arr`` (row ``table_row`` of the table),
    where a kernel found invalid UTF-8; says what Python's decoder says of it."""
    detail = "invalid bytes"
    for i, b in enumerate(_row_strings(arr, row)):
        try:
            b.decode("utf-8")
        except UnicodeDecodeError as e:
            where = f"list element {i}, " if is_list(arr.type) else ""
            detail = f"{where}byte {e.start}: {e.reason} {b[e.start : e.end]!r}"
            break
    return InvalidUTF8Error(field.name, field.column, table_row, detail)


def _dictionary_invalid_row(arr: pa.DictionaryArray) -> int:
    """First row of ``arr`` whose dictionary entry is invalid UTF-8, or -1 when only
    entries that no row uses are (a slice shares its parent's whole dictionary)."""
    entries = as_strings(arr.dictionary)
    binary = pa.large_binary() if pa.types.is_large_string(entries.type) else pa.binary()
    invalid = np.array([b is not None and not _decodes(b) for b in entries.view(binary).to_pylist()] + [False])
    codes = arr.indices.fill_null(len(entries)).to_numpy(zero_copy_only=False).astype(np.int64)
    rows = np.flatnonzero(invalid[codes])
    return int(rows[0]) if len(rows) else -1


def _decodes(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# ---------------------------------------------------------------- encode
def _encode_array(arr, field, buckets, lk, uni, out, counts, device) -> int:
    """Encode the chunk ``arr`` into ``out`` with ``device``'s kernels (``_CPU`` or
    ``dscore.encoding_cuda``); return its first row that holds invalid UTF-8 where the
    field fails on it (``out`` is then incomplete), else -1.

    ``out`` is the chunk's rows of the padded matrix, or for jagged rows the pair
    ``(values, offsets)``: the whole values buffer and the chunk's ``rows + 1``
    offsets, whose first the chunk before wrote (see ``cpu.encode_rows_jagged``)."""
    spec, sep = KernelSpec.of(field), separator(field)
    jagged = isinstance(out, tuple)
    if jagged:  # no padding: dictionary entries' rows are read from the left
        spec = spec._replace(pad_left=0)
    bad = np.full(1, -1, dtype=np.int64)
    if pa.types.is_null(arr.type):  # all padding, no tokens: what the kernels write for null cells
        arr = pa.nulls(len(arr), pa.string())
    if not pa.types.is_dictionary(arr.type):
        if jagged:
            device.encode_rows_jagged(row_buffers(arr), spec, sep, buckets, lk, uni, *out, counts, bad)
        else:
            device.encode_rows(row_buffers(arr), spec, sep, buckets, lk, uni, out, NO_ROWS, counts, bad)
        return int(bad[0])
    # A dictionary column: encode its entries, then gather them row by row.
    entries = dictionary_strings(arr)
    rows = row_buffers(entries)
    dict_out = device.empty((len(entries), field.max_len), np.int32)
    dict_tokens = device.empty(len(entries), np.int64)
    entry_counts = np.zeros(4, dtype=np.int64)  # the rows' counts come from gather_rows
    device.encode_rows(rows, spec, sep, buckets, lk, uni, dict_out, dict_tokens, entry_counts, bad)
    if bad[0] >= 0:
        row = _dictionary_invalid_row(arr)
        if row >= 0:
            return row
        # only unused entries are invalid: what they encode to is never read
        device.encode_rows(rows, spec.replacing(), sep, buckets, lk, uni, dict_out, dict_tokens, entry_counts, bad)
    if jagged:
        device.gather_rows_jagged(dictionary_codes(arr), *validity(arr), dict_out, dict_tokens, *out, counts)
    else:
        device.gather_rows(dictionary_codes(arr), *validity(arr), dict_out, dict_tokens, out, counts)
    return -1


class _CPU:
    """The CPU's kernels and output memory, as ``_encode_fields`` uses a device's."""

    empty = staticmethod(np.empty)

    @staticmethod
    def output(buffers, field: Field, rows: int) -> np.ndarray:
        if buffers is None:
            return np.empty((rows, field.max_len), dtype=np.int32)
        buf = buffers.get(field.name)
        if buf is None or buf.shape[0] < rows or buf.shape[1] != field.max_len:
            buf = buffers[field.name] = np.empty((rows, field.max_len), dtype=np.int32)
        return buf[:rows]

    @staticmethod
    def jagged_output(buffers, field: Field, rows: int) -> tuple:
        """``(values, offsets)`` for a field's jagged rows: room for ``rows * max_len``
        int32 values (only the part written is ever touched) and ``rows + 1`` offsets."""
        return jagged_buffers(buffers, field, rows, lambda n: np.empty(n, dtype=np.int32))

    @staticmethod
    def encode_rows(rows, spec: KernelSpec, sep, buckets, lk, uni, out, row_tokens, counts, bad) -> None:
        cpu.ENCODE_ROWS[spec.kind](*rows, tuple(spec), sep, buckets, lk, uni, out, row_tokens, counts, bad)

    @staticmethod
    def encode_rows_jagged(rows, spec: KernelSpec, sep, buckets, lk, uni, values, offsets, counts, bad) -> None:
        cpu.ENCODE_ROWS_JAGGED[spec.kind](*rows, tuple(spec), sep, buckets, lk, uni, values, offsets, counts, bad)

    gather_rows = staticmethod(cpu.gather_rows)
    gather_rows_jagged = staticmethod(cpu.gather_rows_jagged)


def check_fields(fields: Sequence[Field]) -> None:
    """Raise ``TypeError``/``ValueError`` for a non-Field entry or a repeated field name."""
    seen = set()
    for f in fields:
        if not isinstance(f, Field):
            raise TypeError(f"fields must be dscore.Field objects; got {f!r}")
        if f.name in seen:
            raise ValueError(f"field {f.name!r} is given twice; field names must be unique")
        seen.add(f.name)


def _column(table: pa.Table, field: Field) -> pa.ChunkedArray:
    names = table.schema.names
    if field.column not in names:
        raise SpecError(f"field {field.name!r}: column {field.column!r} is not in the input; columns are {names}")
    col = table.column(field.column)
    return col if isinstance(col, pa.ChunkedArray) else pa.chunked_array([col])


def _field_inputs(table: pa.Table, field: Field, vocab):
    """``(column, buckets, lookup)`` of ``field``, checked: what either device's encode needs."""
    col = _column(table, field)
    check_field_type(field, col.type)
    if field.buckets is not None:
        return col, field.buckets, EMPTY_LOOKUP
    if vocab is None:
        raise SpecError(f"field {field.name!r} needs a vocabulary (or buckets=N for hashing mode); got vocab=None")
    return col, 0, vocab.lookup(field)


def _as_table(table) -> pa.Table:
    if isinstance(table, pa.Table):
        return table
    if isinstance(table, pa.RecordBatch):
        return pa.Table.from_batches([table])
    return pa.Table.from_pandas(table, preserve_index=False)


def encode_table(
    table, fields: Sequence[Field], vocab=None, *, buffers=None, device: str = "cpu", inputs: str = "padded"
):
    """Encode ``fields`` of ``table``; return ``(arrays, stats)``.

    ``arrays[name]`` is a C-contiguous int32 array of shape ``(rows, max_len)``, or
    for a ``numeric`` field a float32 numpy array ``(rows, size)`` (on either device);
    ``stats[name]`` a ``FieldStats``. See ``encode`` for the other parameters.

    ``inputs="jagged"`` (``model.inputs``): each categorical field is instead a
    ``dscore.jagged.Jagged``, the pair ``(values, offsets)``: row ``i``'s kept indices
    are ``values[offsets[i]:offsets[i + 1]]`` (int32 values, ``rows + 1`` int64
    offsets on the host), truncated as padded rows are, with no padding (``pad`` does
    not apply); the kernels write them directly. Stats are the padded path's.

    ``buffers``, a dict kept by the caller, lets repeated calls reuse their output
    memory: ``arrays`` are then views into it, valid until the next call. Fresh
    arrays of a few hundred MB otherwise cost a page fault per 4 KiB on every call.
    Keep one dict per device.

    ``device``: ``"cpu"``, or ``"cuda"`` / ``"cuda:N"`` to encode with the CUDA
    kernels on that GPU. The arrays are then numba device arrays (hand them to
    torch through ``__cuda_array_interface__``; ``dscore.model.as_tensor``), with
    exactly the CPU path's values and the same stats. Raises ``RuntimeError`` when
    numba.cuda finds no usable device (see ``resolve_encode_device``).
    """
    table = _as_table(table)
    check_fields(fields)
    if inputs not in MODEL_INPUTS:
        raise ValueError(f"inputs is {inputs!r}; expected one of {', '.join(MODEL_INPUTS)}")
    jagged = inputs == "jagged"
    if device == "cpu":
        return _encode_fields(table, fields, vocab, buffers, _CPU, jagged)
    from . import encoding_cuda  # numba.cuda only when asked for

    with encoding_cuda.on(device):
        return _encode_fields(table, fields, vocab, buffers, encoding_cuda, jagged)


def encode_forms(table, forms: dict, vocab=None, *, buffers=None, device: str = "cpu"):
    """``encode_table`` once per form its models take the fields in: ``forms`` maps
    ``model.inputs`` (``padded``, ``jagged``) to the fields to encode so
    (``TaskSpec.forms``). Returns ``({form: arrays}, stats)``, the stats of each field
    counted once (both forms count alike). One ``buffers`` dict serves every form."""
    encoded, stats = {}, {}
    for form, fields in forms.items():
        encoded[form], counted = encode_table(table, fields, vocab, buffers=buffers, device=device, inputs=form)
        stats = {**counted, **stats}
    return encoded, stats


def _encode_fields(table: pa.Table, fields, vocab, buffers, device, jagged: bool = False):
    """Each field's column, chunk by chunk, through ``device``'s kernels into the matrix
    ``device.output`` gives: ``(arrays, stats)``. One loop for both devices."""
    uni = unicode_tables()
    arrays: dict = {}
    stats: dict[str, FieldStats] = {}
    for field in fields:
        if field.numeric:  # no kernel: numpy on the host, on either device (the model copies it)
            arrays[field.name], filled = numeric_matrix(_column(table, field), field)
            stats[field.name] = FieldStats(table.num_rows, filled=filled)
            continue
        col, buckets, lk = _field_inputs(table, field, vocab)
        counts = np.zeros(4, dtype=np.int64)
        if jagged:
            values, offsets = device.jagged_output(buffers, field, table.num_rows)
            offsets[0] = 0
        else:
            out = device.output(buffers, field, table.num_rows)
        row = 0
        for chunk in col.chunks:
            n = len(chunk)
            target = (values, offsets[row : row + n + 1]) if jagged else out[row : row + n]
            bad = _encode_array(chunk, field, buckets, lk, uni, target, counts, device)
            if bad >= 0:
                raise _utf8_error(field, chunk, bad, row + bad)
            row += n
        arrays[field.name] = Jagged(values[: offsets[-1]], offsets) if jagged else out
        stats[field.name] = FieldStats(table.num_rows, *(int(c) for c in counts))
    return arrays, stats


def encode(table, fields: Sequence[Field], vocab=None) -> dict[str, np.ndarray]:
    """Map each field's tokens to vocabulary indices.

    Parameters
    ----------
    table : pyarrow.Table, pyarrow.RecordBatch or pandas.DataFrame
    fields : sequence of Field
    vocab : Vocabulary, optional
        Mapping tables; not needed when every field uses hashing (``buckets``).

    Returns
    -------
    dict of str to numpy.ndarray
        Per field name, a C-contiguous int32 array of shape ``(rows, max_len)``:
        0 = padding, 1 = out of vocabulary, vocabulary indices from 2.

    Raises
    ------
    ValueError
        A field's column is missing, or a field has neither a table nor buckets.
    TypeError
        A column's Arrow type does not fit its field's kind.
    InvalidUTF8Error
        A string column holds invalid UTF-8 and its field has ``on_invalid_utf8: fail``
        (the default); a ``ValueError`` that names the field, column and first bad row.
    """
    return encode_table(table, fields, vocab)[0]


# ---------------------------------------------------------------- device choice
_auto_logged = False  # "auto" chose the CPU: said once per process


def resolve_encode_device(requested: str, model_device: str) -> str:
    """Where a worker encodes: ``"cpu"``, or the GPU its model uses (``"cuda"``, ``"cuda:N"``).

    Parameters
    ----------
    requested : {"auto", "cpu", "cuda"}
        The job's ``encode_device``. ``auto`` is the GPU when the model is on CUDA
        and numba.cuda can run kernels there, else the CPU, said in one log line per
        process. ``cuda`` is the model's GPU (GPU 0 for a model on the CPU, whose
        rows are then copied to the host).
    model_device : str
        The loaded model's device (``cpu``, ``cuda``, ``cuda:N``).

    Raises
    ------
    RuntimeError
        ``cuda`` where numba.cuda finds no usable device.

    Nothing CUDA-related is imported unless the model is on CUDA or ``cuda`` is asked for.
    """
    global _auto_logged
    if requested not in ENCODE_DEVICES:
        raise SpecError(f"encode_device is {requested!r}; expected one of {', '.join(ENCODE_DEVICES)}")
    model_device = str(model_device)
    on_gpu = model_device.startswith("cuda")
    if requested == "cpu" or (requested == "auto" and not on_gpu):
        if requested == "auto" and not _auto_logged:
            _auto_logged = True
            log.info("encode_device auto: encoding on the CPU (the model is on %s)", model_device)
        return "cpu"
    from . import encoding_cuda

    if encoding_cuda.cuda_available():
        return model_device if on_gpu else "cuda"
    reason = encoding_cuda.unavailable_reason()
    if requested == "cuda":
        raise JobError(
            f"encode_device is 'cuda' but numba.cuda finds no usable CUDA device on this worker ({reason}); "
            "set encode_device: cpu (or auto, which encodes on the GPU only where it can)"
        )
    if not _auto_logged:
        _auto_logged = True
        log.warning(
            "encode_device auto: the model is on %s but numba.cuda cannot run kernels (%s); encoding on the CPU",
            model_device, reason,
        )  # fmt: skip
    return "cpu"


# ---------------------------------------------------------------- tokenize
def tokenize(arr: pa.Array | pa.ChunkedArray, field: Field):
    """Every normalized token of ``arr`` (no truncation) with its row and weight.

    Returns ``(tokens, weights)``: a large_string array of keys and an int64 array
    of how many input rows each stands for (dictionary entries count once per use).
    Used to fit vocabularies.
    """
    check_field_type(field, arr.type)
    uni = unicode_tables()
    spec, sep = KernelSpec.of(field), separator(field)
    tokenize_rows = cpu.TOKENIZE_ROWS[spec.kind]
    chunks = arr.chunks if isinstance(arr, pa.ChunkedArray) else [arr]
    keys, weights = [], []
    row0 = 0
    for original in chunks:
        chunk, t = original, original.type
        row0 += len(chunk)
        if pa.types.is_null(t) or len(chunk) == 0:
            continue
        freq = None
        if pa.types.is_dictionary(t):
            codes = chunk.indices.filter(chunk.is_valid()) if chunk.null_count else chunk.indices
            freq = np.bincount(codes.to_numpy(zero_copy_only=False), minlength=len(chunk.dictionary))
            chunk = as_strings(chunk.dictionary)
            if pa.types.is_null(chunk.type):
                continue
        rows = row_buffers(chunk)
        tok_offsets, tok_bytes, tok_rows, ntok, bad = tokenize_rows(*rows, tuple(spec), sep, uni)
        if bad >= 0:
            row = bad if freq is None else _dictionary_invalid_row(original)
            if row >= 0:
                raise _utf8_error(field, original, row, row0 - len(original) + row)
            # only dictionary entries that no row uses are invalid: their weights are 0
            res = tokenize_rows(*rows, tuple(spec.replacing()), sep, uni)
            tok_offsets, tok_bytes, tok_rows, ntok, _ = res
        tokens = pa.LargeStringArray.from_buffers(
            ntok, pa.py_buffer(tok_offsets[: ntok + 1]), pa.py_buffer(tok_bytes[: tok_offsets[ntok]])
        )
        if freq is None:
            keys.append(tokens)
            weights.append(np.ones(ntok, dtype=np.int64))
        else:  # a dictionary may hold entries no row uses (e.g. after slicing)
            w = freq[tok_rows[:ntok]].astype(np.int64)
            keys.append(tokens.filter(pa.array(w > 0)))
            weights.append(w[w > 0])
    if not keys:
        return pa.array([], pa.large_string()), np.zeros(0, dtype=np.int64)
    return pa.concat_arrays(keys), np.concatenate(weights)


__all__ = [
    "FieldStats", "InvalidUTF8Error", "NumericSizeError", "check_field_type", "check_fields", "encode", "encode_table",
    "resolve_encode_device", "tokenize",
]  # fmt: skip
