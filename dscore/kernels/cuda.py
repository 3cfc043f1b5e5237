"""The CUDA kernels: ``dscore.kernels.cpu``'s, bit for bit, one thread per row.

The loops over rows, and nothing else: a row's tokens go through the same
``dscore.kernels.walk`` as on the CPU, compiled here as CUDA device functions
(``W[kind]``). What differs, all deliberate:

* One thread encodes one row (grid-stride loop). A row's keys go to its own slice
  of a global scratch buffer (CUDA kernels cannot allocate), at offsets the host
  computes from the row byte lengths (``dscore.encoding_cuda``); each key is looked
  up as soon as it is hashed (``walk.LOOKUP_AT_ONCE``), since the CPU kernel's second
  pass exists only to prefetch slots, and a GPU hides that latency with other warps.
* Counts are summed per thread and added with one atomic per counter per thread.
* A row with invalid UTF-8 (without ``replace``) is reported by lowering
  ``counts[4]`` atomically to its index; its thread stops there, as the CPU kernel
  does at the first.

The kernels take the CPU kernels' arguments with the tuples unpacked (``spec``
minus its kind, ``lk``, ``uni``): numba.cuda launches take arrays and scalars.
Jagged rows (``model.inputs: jagged``) are compacted on the device rather than
written directly: a thread's row position in the values would need the kept counts
of every row before it, known only after the walk. The rows are encoded padded
into scratch as above, then ``row_kept`` counts each row's indices, the host turns
the counts into offsets (it needs them there anyway, to slice micro-batches), and
``compact_rows`` copies each row's indices to its place.

Importing this module needs no GPU: kernels compile at their first launch. The
host side (uploads, launches, caches) is ``dscore.encoding_cuda``.
"""

from __future__ import annotations

from numba import cuda

from . import walk
from .walk import DELIMITED, DELIMITED_SEQ, KINDS, LIST, SCALAR

# The walk compiled for CUDA, once per kind (``W[kind]``; the kernels call it as ``w``).
W = {kind: walk.compile_for("cuda", kind, cuda.jit(device=True), cuda.jit(device=True), True) for kind in KINDS}


@cuda.jit(device=True)
def _add_counts(counts, tokens, kept, oov, truncated):
    """Add a thread's counts to the launch's ``counts``: one atomic per counter."""
    if tokens > 0:  # kept, oov and truncated are 0 too otherwise
        cuda.atomic.add(counts, 0, tokens)
        cuda.atomic.add(counts, 1, kept)
        cuda.atomic.add(counts, 2, oov)
        cuda.atomic.add(counts, 3, truncated)


# Each kernel is made by a function of ``source`` (walk.SOURCE), which it keeps in its
# closure so that numba's cache key changes with the walk's files (see walk.SOURCE),
# beside ``w``, the walk compiled for its kind (a module: pickled by name in the key).
def _encode_rows(kind, source):
    w = W[kind]

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
        first_bad, tokens, kept, oov, truncated = w.encode_rows(
            cuda.grid(1), starts.shape[0], cuda.gridsize(1),
            starts, stops, row_valid, row_valid_off, offsets, data, valid, valid_off,
            (max_len, tail, pad_left, lower, strip, replace, 0), sep, buckets, slots, arena,
            (low, exp_offsets, expansions, flags), keys, key_off, out, row_tokens,
            key_off, key_off, slots[0],  # no key list: each key is looked up at once
        )  # fmt: skip
        if first_bad >= 0:
            cuda.atomic.min(counts, 4, first_bad)
        _add_counts(counts, tokens, kept, oov, truncated)

    return encode_rows


def _gather_rows(source):
    w = W[DELIMITED]

    @cuda.jit(cache=True)
    def gather_rows(codes, valid, valid_off, dict_out, dict_tokens, out, counts):
        """Fill ``out`` from per-dictionary-entry rows: ``out[i] = dict_out[codes[i]]``."""
        source  # noqa: B018
        tokens = kept = oov = truncated = 0
        for i in range(cuda.grid(1), codes.shape[0], cuda.gridsize(1)):
            t, k, o = w.gather_row(i, codes, valid, valid_off, dict_out, dict_tokens, out)
            tokens += t
            kept += k
            oov += o
            truncated += t > out.shape[1]
        _add_counts(counts, tokens, kept, oov, truncated)

    return gather_rows


@cuda.jit(cache=True)
def row_kept(out, kept):
    """``kept[i]``: how many indices row ``i`` of the right-padded ``out`` holds (its cells before the first PAD)."""
    for i in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        k = 0
        while k < out.shape[1] and out[i, k] != 0:  # 0: PAD
            k += 1
        kept[i] = k


@cuda.jit(cache=True)
def compact_rows(out, row_offsets, values):
    """Row ``i`` of the right-padded ``out``, without its padding, to ``values[row_offsets[i]:row_offsets[i + 1]]``."""
    for i in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        at = row_offsets[i]
        for c in range(row_offsets[i + 1] - at):
            values[at + c] = out[i, c]


ENCODE_ROWS = {kind: _encode_rows(kind, walk.SOURCE) for kind in KINDS}
gather_rows = _gather_rows(walk.SOURCE)

__all__ = ["DELIMITED", "DELIMITED_SEQ", "ENCODE_ROWS", "LIST", "SCALAR", "compact_rows", "gather_rows", "row_kept"]
