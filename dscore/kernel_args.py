"""What the kernels are given: Arrow arrays as numpy buffers, a ``Field`` as a ``KernelSpec``.

Both encoders (``dscore.encoding`` on the CPU, ``dscore.encoding_cuda`` on the GPU)
make their kernel arguments here, so they cannot drift apart. Everything is
zero-copy where Arrow allows, and read-only: Arrow memory is, so the kernels
compile one variant, not two. Nothing here imports numba.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .kernels.walk import DELIMITED, DELIMITED_SEQ, LIST, SCALAR
from .spec import Field

_KIND_CODE = {"delimited": DELIMITED, "list": LIST, "scalar": SCALAR}

NO_BITS = np.empty(0, dtype=np.uint8)  # "no nulls", as a validity bitmap
NO_BITS.flags.writeable = False
NO_ROWS = np.empty(0, dtype=np.int64)  # "no per-row token counts wanted"
# The lookup of a hashing-mode field, which the kernels never read: one empty slot, no arena.
EMPTY_LOOKUP = (np.zeros((1, 2), dtype=np.uint64), np.zeros(0, dtype=np.uint8))


class KernelSpec(NamedTuple):
    """How the kernels treat one field's tokens; ``tuple(spec)`` is the kernels' ``spec``.

    ``kind`` is a ``dscore.kernels.walk`` kind code (``DELIMITED_SEQ`` for a
    separator of several bytes); the rest are 0/1 flags except ``max_len``.
    """

    kind: int
    max_len: int
    tail: int
    pad_left: int
    lower: int
    strip: int
    replace: int

    @classmethod
    def of(cls, field: Field) -> KernelSpec:
        kind = _KIND_CODE[field.kind]
        if kind == DELIMITED and len(field.sep.encode("utf-8")) > 1:
            kind = DELIMITED_SEQ
        return cls(
            kind,
            field.max_len,
            int(field.truncate == "tail"),
            int(field.pad == "left"),
            int(field.lower),
            int(field.strip),
            int(field.on_invalid_utf8 == "replace"),
        )

    def replacing(self) -> KernelSpec:
        """This spec reading invalid UTF-8 as U+FFFD (for dictionary entries no row uses)."""
        return self._replace(replace=1)


def separator(field: Field) -> np.ndarray:
    """The field's separator as the kernels' ``sep``: its UTF-8 bytes."""
    return np.frombuffer(field.sep.encode("utf-8"), dtype=np.uint8)


# ---------------------------------------------------------------- Arrow types
def is_list(t: pa.DataType) -> bool:
    return (
        pa.types.is_list(t)
        or pa.types.is_large_list(t)
        or pa.types.is_fixed_size_list(t)
        or pa.types.is_list_view(t)
        or pa.types.is_large_list_view(t)
    )


def as_strings(arr: pa.Array) -> pa.Array:
    """Integers become their decimal text; string views become large strings."""
    t = arr.type
    if pa.types.is_integer(t):
        return pc.cast(arr, pa.string())
    if pa.types.is_string_view(t):
        return pc.cast(arr, pa.large_string())
    return arr


def dictionary_strings(arr: pa.DictionaryArray) -> pa.Array:
    """A dictionary column's entries as strings (a null-typed dictionary as null strings)."""
    entries = as_strings(arr.dictionary)
    if pa.types.is_null(entries.type):
        return pa.nulls(len(entries), pa.string())
    return entries


def _child_strings(child: pa.Array) -> pa.Array:
    """A list's child as a plain string/large_string array (dictionaries decoded)."""
    t = child.type
    if pa.types.is_dictionary(t):
        t = t.value_type
        child = pc.cast(child, t) if not pa.types.is_null(t) else pa.nulls(len(child), pa.string())
    if pa.types.is_null(t):
        return pa.nulls(len(child), pa.string())
    return as_strings(child)


# ---------------------------------------------------------------- buffers
def readonly(a: np.ndarray) -> np.ndarray:
    """Kernel inputs are always read-only, as Arrow memory is: one compiled variant, not two."""
    a.flags.writeable = False
    return a


def validity(arr: pa.Array) -> tuple[np.ndarray, int]:
    """Validity bitmap and its bit offset, or ``NO_BITS`` when there are no nulls."""
    buf = arr.buffers()[0]
    if buf is None or arr.null_count == 0:
        return NO_BITS, 0
    return readonly(np.frombuffer(buf, dtype=np.uint8)), arr.offset


def dictionary_codes(arr: pa.DictionaryArray) -> np.ndarray:
    """A dictionary column's indices (any integer type), zero-copy."""
    indices = arr.indices
    codes = np.frombuffer(indices.buffers()[1], dtype=indices.type.to_pandas_dtype())
    return readonly(codes[indices.offset : indices.offset + len(indices)])


def _string_buffers(arr: pa.Array):
    """``(offsets, data, valid, valid_off)`` of a string/large_string array, zero-copy."""
    n = len(arr)
    bufs = arr.buffers()
    otype = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    if bufs[1] is None:
        offsets = np.zeros(n + 1, dtype=otype)
    else:
        offsets = np.frombuffer(bufs[1], dtype=otype)[arr.offset : arr.offset + n + 1]
    data = NO_BITS if bufs[2] is None else np.frombuffer(bufs[2], dtype=np.uint8)
    valid, off = validity(arr)
    return readonly(offsets), readonly(data), valid, off


def list_buffers(arr: pa.Array):
    """``(starts, stops, valid, valid_off, child)``: row ``i`` is ``child[starts[i]:stops[i]]``.

    Zero-copy for list and large_list; list views and fixed-size lists compute
    their stops (one int per row) rather than trusting a cast to list, which
    mishandles sliced list views in some pyarrow releases.
    """
    t, n, off = arr.type, len(arr), arr.offset
    bufs = arr.buffers()
    if pa.types.is_fixed_size_list(t):
        starts = (np.arange(off, off + n, dtype=np.int64)) * t.list_size
        stops = starts + t.list_size
    else:
        otype = np.int64 if (pa.types.is_large_list(t) or pa.types.is_large_list_view(t)) else np.int32
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            offsets = np.frombuffer(bufs[1], dtype=otype)[off : off + n + 1]
            starts, stops = offsets[:-1], offsets[1:]
        else:
            starts = np.frombuffer(bufs[1], dtype=otype)[off : off + n]
            stops = starts + np.frombuffer(bufs[2], dtype=otype)[off : off + n]
    valid, voff = validity(arr)
    return readonly(starts), readonly(stops), valid, voff, _child_strings(arr.values)


def row_buffers(arr: pa.Array) -> tuple:
    """The kernels' row arguments ``(starts, stops, row_valid, row_valid_off, offsets,
    data, valid, valid_off)`` for a string, integer or list column (not a dictionary):
    a cell is its own row; a list's row is a run of child strings."""
    if is_list(arr.type):
        starts, stops, valid, off, child = list_buffers(arr)
        return (starts, stops, valid, off, *_string_buffers(child))
    offsets, data, valid, off = _string_buffers(as_strings(arr))
    return offsets[:-1], offsets[1:], valid, off, offsets, data, NO_BITS, 0
