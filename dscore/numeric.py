"""``kind: numeric`` fields: Arrow number columns -> float32 ``(rows, size)`` matrices.

A numeric field is a dense model input, not a token: no vocabulary, no kernel. An
integer or floating column gives ``(rows, 1)``; a ``fixed_size_list<number, k>``,
or a list column whose every row has ``size`` elements, gives ``(rows, size)``.
Nulls (a null cell, a null list, a null element) and NaN take the field's ``fill``
and are counted. Values convert as Python's ``float(x)`` rounded to float32
(beyond its range: +-inf). All of
it is numpy/pyarrow vector work: a partition is converted without a Python loop
over its rows.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import DscoreError, SpecError
from .spec import Field


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_null(t)


def _is_plain_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t)


def check_numeric_type(field: Field, type: pa.DataType, where: str = "") -> None:
    """Raise ``SpecError`` when a column of Arrow ``type`` cannot feed the numeric ``field``.

    Known from the type alone: not a number (or list of numbers), a
    ``fixed_size_list`` of another width than ``size``, a scalar column for ``size`` > 1.
    A plain list's row lengths are checked on the data (``NumericSizeError``).
    """
    head = f"{where}field {field.name!r} (column {field.column!r}, kind 'numeric', size {field.size})"
    if pa.types.is_null(type):
        return
    if pa.types.is_fixed_size_list(type) and _is_number(type.value_type):
        if type.list_size == field.size:
            return
        raise SpecError(f"{head} expects lists of {field.size} numbers; found {type}: set size: {type.list_size}")
    if _is_plain_list(type) and _is_number(type.value_type):
        return
    if _is_number(type):
        if field.size == 1:
            return
        raise SpecError(f"{head} expects lists of {field.size} numbers; found {type}, one number per row")
    raise SpecError(
        f"{head} expects an integer or floating column, or a fixed_size_list of them "
        f"(int64, float32, fixed_size_list<float, {field.size}>, ...); found {type}"
    )


class NumericSizeError(DscoreError, ValueError):
    """A row of a list column feeding a numeric field has not ``size`` elements.

    ``row`` counts from the first row of the table given to ``numeric_matrix``.
    """

    def __init__(self, field: str, column: str, row: int, found: int, size: int):
        self.field, self.column, self.row, self.found, self.size = field, column, row, found, size
        super().__init__(self.reason(f"row {row}"))

    def reason(self, row: str) -> str:
        """The message, with the bad row described as ``row`` (the caller may know more of it)."""
        return (
            f"field {self.field!r} (column {self.column!r}, kind 'numeric'): {row} is a list of {self.found} "
            f"numbers; expected {self.size} (the field's size): fix the input or the field's size"
        )

    def __reduce__(self):
        return (NumericSizeError, (self.field, self.column, self.row, self.found, self.size))


def _as_float64(arr: pa.Array) -> np.ndarray:
    """``arr``'s values as float64 with NaN for nulls (a fresh, writable array)."""
    if pa.types.is_null(arr.type):
        return np.full(len(arr), np.nan)
    return np.array(arr.to_numpy(zero_copy_only=False), dtype=np.float64)


def _chunk(arr: pa.Array, field: Field, row0: int) -> np.ndarray:
    """float64 ``(len(arr), size)``, NaN where a value is missing."""
    t, k, n = arr.type, field.size, len(arr)
    if pa.types.is_null(t):
        return np.full((n, k), np.nan)
    if not (pa.types.is_fixed_size_list(t) or _is_plain_list(t)):
        return _as_float64(arr).reshape(n, 1)
    valid = np.ones(n, dtype=bool) if arr.null_count == 0 else arr.is_valid().to_numpy(zero_copy_only=False)
    if pa.types.is_fixed_size_list(t):  # values of null rows are there too: read them all, then blank those rows
        out = _as_float64(arr.values.slice(arr.offset * k, n * k)).reshape(n, k)
    else:
        lengths = pc.list_value_length(arr).fill_null(k).to_numpy(zero_copy_only=False)
        wrong = np.flatnonzero(lengths != k)
        if len(wrong):
            r = int(wrong[0])
            raise NumericSizeError(field.name, field.column, row0 + r, int(lengths[r]), k)
        out = np.full((n, k), np.nan)
        out[valid] = _as_float64(arr.flatten()).reshape(-1, k)  # flatten skips null rows
    out[~valid] = np.nan
    return out


def numeric_matrix(column: pa.ChunkedArray | pa.Array, field: Field) -> tuple[np.ndarray, int]:
    """``(values, filled)``: the numeric ``field`` of ``column`` as a C-contiguous float32
    ``(rows, size)`` array, and how many values took ``field.fill`` (nulls and NaN).

    Raises
    ------
    SpecError
        The column's type cannot feed the field (see ``check_numeric_type``).
    NumericSizeError
        A row of a list column has not ``size`` elements; names the field, column and row.
    """
    check_numeric_type(field, column.type)
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    out = np.empty((len(column), field.size), dtype=np.float32)
    filled, row = 0, 0
    for arr in chunks:
        values = _chunk(arr, field, row)
        missing = np.isnan(values)
        values[missing] = field.fill
        filled += int(missing.sum())
        with np.errstate(over="ignore"):  # beyond float32's range is +-inf, as float32(x) is
            out[row : row + len(arr)] = values
        row += len(arr)
    return out, filled


__all__ = ["NumericSizeError", "check_numeric_type", "numeric_matrix"]
