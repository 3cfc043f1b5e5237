"""``encode_table`` on the GPU: Arrow columns -> ``dscore.kernels.cuda`` -> int32 device arrays.

The twin of the CPU path in ``dscore.encoding`` (``_encode_array``, ``_output``),
step for step: the same Arrow buffer extraction, the same kernel arguments, the
same counts, so the same ``FieldStats``; only the kernels and the output memory
differ. ``dscore.encoding.encode_table(..., device="cuda")`` is the entry point;
this module is imported only then, since it imports numba.cuda.

Mapping tables and the Unicode tables are uploaded once per process and GPU
(``kernels.cuda.device_tables``, keyed by the host arrays, which ``Vocabulary`` and
``unicode.tables()`` cache); each call uploads only its partition's Arrow buffers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
from numba import cuda

from .encoding import (
    _as_strings,
    _bits,
    _cell_rows,
    _dictionary_invalid_row,
    _encode_fields,
    _is_list,
    _list_rows,
    _readonly,
    _replacing,
    _sep,
    _spec,
)
from .kernels import cuda as kc
from .spec import Field


def _on(device: str):
    """The numba context for ``device``: ``"cuda"`` is whatever is current on this thread
    (torch's current device, as for a model on ``"cuda"``; else GPU 0), ``"cuda:N"`` GPU N."""
    _, _, n = str(device).partition(":")
    return cuda.gpus[int(n)] if n else contextlib.nullcontext()


def _output(buffers, field: Field, rows: int):
    """``encoding._output`` with device memory: a reused buffer's first ``rows`` rows, or a new array."""
    if buffers is None:
        return cuda.device_array((rows, field.max_len), dtype=np.int32)
    buf = buffers.get(field.name)
    if buf is None or buf.shape[0] < rows or buf.shape[1] != field.max_len:
        buf = buffers[field.name] = cuda.device_array((max(rows, 1), field.max_len), dtype=np.int32)
    return buf[:rows]


def _encode_array(arr, field, buckets, lk, uni, out, counts) -> int:
    """``encoding._encode_array`` on the GPU: encode one Arrow chunk into the device view
    ``out``; return its first row holding invalid UTF-8 where the field fails on it, else -1."""
    t = arr.type
    spec, sep = _spec(field), _sep(field)
    bad = np.full(1, -1, dtype=np.int64)
    if pa.types.is_null(t):  # all padding, no tokens: what the kernel writes for null cells
        arr = pa.nulls(len(arr), pa.string())
    if pa.types.is_dictionary(t):
        dictionary = _as_strings(arr.dictionary)
        if pa.types.is_null(dictionary.type):
            dictionary = pa.array([None] * len(dictionary), pa.string())
        dict_tokens = cuda.device_array(len(dictionary), dtype=np.int64)
        rows = _cell_rows(dictionary)
        dict_out, _ = kc.encode_rows_cuda(*rows, spec, sep, buckets, lk, uni, row_tokens=dict_tokens, bad=bad)
        if bad[0] >= 0:
            row = _dictionary_invalid_row(arr)
            if row >= 0:
                return row
            # only unused entries are invalid: what they encode to is never read
            bad[0] = -1
            dict_out, _ = kc.encode_rows_cuda(*rows, _replacing(spec), sep, buckets, lk, uni, row_tokens=dict_tokens)
        indices = arr.indices
        codes = np.frombuffer(indices.buffers()[1], dtype=indices.type.to_pandas_dtype())
        codes = _readonly(codes[indices.offset : indices.offset + len(indices)])
        _, c = kc.gather_rows_cuda(codes, *_bits(arr), dict_out, dict_tokens, out=out)
    else:
        rows = _list_rows(arr) if _is_list(arr.type) else _cell_rows(arr)
        _, c = kc.encode_rows_cuda(*rows, spec, sep, buckets, lk, uni, out=out, bad=bad)
    counts += c
    return int(bad[0])


def encode_table(table: pa.Table, fields: Sequence[Field], vocab=None, *, buffers=None, device: str = "cuda"):
    """``dscore.encoding.encode_table`` on GPU ``device``: ``(arrays, stats)`` with
    int32 ``(rows, max_len)`` numba device arrays. ``table`` is a checked ``pa.Table``."""
    kc._require_device()  # the clear error, before numba's own for cuda.gpus
    with _on(device):
        return _encode_fields(table, fields, vocab, buffers, _output, _encode_array)
