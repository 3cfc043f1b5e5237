"""The CUDA kernels: ``dscore.kernels.cpu``'s, bit for bit, one thread per row.

The loops over rows, and nothing else: a row's tokens go through the same
``dscore.kernels.walk`` as on the CPU, compiled here as CUDA device functions
(``w``). What differs, all deliberate:

* One thread encodes one row (grid-stride loop). A row's keys go to its own slice
  of a global scratch buffer (CUDA kernels cannot allocate), at offsets the host
  computes from the row byte lengths (``dscore.encoding_cuda``); each key is looked
  up as soon as it is hashed (``walk.emit_lookup``), since the CPU kernel's second
  pass exists only to prefetch slots, and a GPU hides that latency with other warps.
* Counts are summed per thread and added with one atomic per counter per thread.
* A row with invalid UTF-8 (without ``replace``) is reported by lowering
  ``counts[4]`` atomically to its index (the CPU kernel stops at the first).

The kernels take the CPU kernels' arguments with the tuples unpacked (``spec``
minus its kind, ``lk``, ``uni``): numba.cuda launches take arrays and scalars.
Importing this module needs no GPU: kernels compile at their first launch. The
host side (uploads, launches, caches) is ``dscore.encoding_cuda``.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from . import walk
from .walk import DELIMITED, DELIMITED_SEQ, KINDS, LIST, SCALAR

w = walk.compile_for("cuda", cuda.jit(device=True), cuda.jit(device=True))


@cuda.jit(device=True)
def _add_counts(counts, acc):
    """Add a thread's ``acc`` to the launch's ``counts``: one atomic per counter."""
    if acc[0] > 0:  # kept, oov and truncated are 0 too otherwise
        for c in range(4):
            cuda.atomic.add(counts, c, acc[c])


# Each kernel is made by a function of ``source`` (walk.SOURCE), which it keeps in its
# closure so that numba's cache key changes with the walk's files (see walk.SOURCE).
def _encode_rows(kind, source):
    @cuda.jit(cache=True)
    def encode_rows(
        starts, stops, row_valid, row_valid_off,
        offsets, data, valid, valid_off,
        max_len, tail, pad_left, lower, strip, replace, sep, buckets,
        slots, arena, low, exp_offsets, expansions, flags,
        keys, key_off, out, row_tokens, counts,
    ):  # fmt: skip
        """Encode rows of tokens into ``out`` (rows, max_len); every cell is written.

        Row ``i`` builds its keys in ``keys[key_off[i]:key_off[i + 1]]``. ``counts`` is
        added to atomically; ``counts[4]`` is lowered to the first row holding invalid
        UTF-8 (without ``replace``), whose thread then stops encoding it.
        """
        source  # noqa: B018
        uni = (low, exp_offsets, expansions, flags)
        rule = (max_len, tail, lower, strip, replace)
        acc = cuda.local.array(4, np.int64)
        for c in range(4):
            acc[c] = 0
        for i in range(cuda.grid(1), starts.shape[0], cuda.gridsize(1)):
            kept = tokens = oov = 0
            if w.is_valid(row_valid, row_valid_off, i):
                sink = (out, i, slots, arena, buckets)
                kept, tokens, oov, invalid = w.walk_row(
                    kind, starts[i], stops[i], rule, offsets, data, valid, valid_off, sep, uni, keys, key_off[i], sink
                )
                if invalid:
                    cuda.atomic.min(counts, 4, i)
            w.pad_row(out, i, kept, max_len, pad_left)
            w.add_row(acc, max_len, tokens, kept, oov)
            if row_tokens.shape[0] > 0:
                row_tokens[i] = tokens
        _add_counts(counts, acc)

    return encode_rows


def _gather_rows(source):
    @cuda.jit(cache=True)
    def gather_rows(codes, valid, valid_off, dict_out, dict_tokens, out, counts):
        """Fill ``out`` from per-dictionary-entry rows: ``out[i] = dict_out[codes[i]]``."""
        source  # noqa: B018
        acc = cuda.local.array(4, np.int64)
        for c in range(4):
            acc[c] = 0
        for i in range(cuda.grid(1), codes.shape[0], cuda.gridsize(1)):
            tokens, kept, oov = w.gather_row(i, codes, valid, valid_off, dict_out, dict_tokens, out)
            w.add_row(acc, out.shape[1], tokens, kept, oov)
        _add_counts(counts, acc)

    return gather_rows


ENCODE_ROWS = {kind: _encode_rows(kind, walk.SOURCE) for kind in KINDS}
gather_rows = _gather_rows(walk.SOURCE)

__all__ = ["DELIMITED", "DELIMITED_SEQ", "ENCODE_ROWS", "LIST", "SCALAR", "gather_rows"]
