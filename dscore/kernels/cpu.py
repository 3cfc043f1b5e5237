"""The CPU kernels: Arrow buffers in, padded int32 index matrices (or jagged rows) out (numba, one thread each).

Thin entry points: the encode loop itself (split, strip, lower, key, hash, look up,
pad) is ``dscore.kernels.walk.encode_rows`` (with ``table`` and ``text``), compiled
here for the CPU once per kind as ``W[kind]``; ``dscore.kernel_args`` makes the
arguments from Arrow arrays.
``spec`` is ``dscore.kernel_args.KernelSpec`` as a plain tuple; ``lk`` the exact
lookup ``(slots, arena)`` from ``build_table`` (not read when ``buckets > 0``,
hashing mode); ``counts`` accumulates ``[tokens, kept, oov, truncated_rows]``:
``tokens`` the non-empty tokens before truncation, ``kept`` those written.

The kernels release the GIL (``nogil=True``) so that Dask threads sharing a
process encode in parallel. They compile lazily with ``cache=True`` rather than
from explicit signatures: offsets come as int32 or int64 on each of up to two
levels, and compiling every combination eagerly would cost a fresh machine tens
of seconds at import for variants most jobs never use. Read-only (Arrow-backed)
arrays are handled by numba's dispatcher as their own types. ``ENCODE_ROWS`` and
``TOKENIZE_ROWS`` hold one kernel per kind, each on its kind's ``W[kind]``.

Jagged rows (``model.inputs: jagged``): ``ENCODE_ROWS_JAGGED`` runs the same walk
compiled with ``JAGGED`` on (``WJ[kind]``), which writes each kept index straight
into a flat values array and each row's end into ``offsets``: no padded matrix, no
compaction pass. The values array is sized for ``rows * max_len`` (never more can
be kept) and only the used prefix is touched, so an ``np.empty`` of it costs
address space, not pages. ``gather_rows_jagged`` does the same for dictionary
columns from their entries' padded rows (one per entry, few).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import table, text, walk
from .table import FIRST_INDEX, OOV, PAD
from .walk import DELIMITED, DELIMITED_SEQ, KINDS, LIST, SCALAR


@intrinsic
def _prefetch(typingctx, arr, idx):
    """Ask the CPU to start loading the cache line of ``arr.flat[idx]`` (llvm.prefetch)."""
    if not isinstance(arr, types.Array):
        return None

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        base = builder.bitcast(ary.data, ir.IntType(8).as_pointer())
        ptr = builder.gep(base, [builder.mul(args[1], context.get_constant(types.intp, aryty.dtype.bitwidth // 8))])
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer(), i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
        builder.call(fn, [ptr, i32(0), i32(3), i32(1)])  # read, keep in all cache levels, data
        return context.get_dummy_value()

    return types.void(arr, idx), codegen


# The walk compiled for the CPU, once per kind (``W[kind]``; the kernels call it as ``w``).
W = {
    kind: walk.compile_for(
        "cpu", kind, njit(inline="always"), njit, lookup_at_once=False,
        u=table.index_unsigned, copy_key=text.copy_key_words, find_byte=walk.find_byte_words, prefetch=_prefetch,
    )
    for kind in KINDS
}  # fmt: skip
# The same with ``JAGGED`` on: rows written one after another, unpadded (``encode_rows_jagged``).
WJ = {
    kind: walk.compile_for(
        "cpu", kind, njit(inline="always"), njit, lookup_at_once=False, jagged=True,
        u=table.index_unsigned, copy_key=text.copy_key_words, find_byte=walk.find_byte_words, prefetch=_prefetch,
    )
    for kind in KINDS
}  # fmt: skip


_NO_KEY_OFFSETS = np.empty(0, dtype=np.int64)  # one scratch for every row's keys (see walk.encode_rows)
_TOKENIZE_CHUNK = 1 << 20
_NO_ARENA = np.empty(0, dtype=np.uint8)


# Each kernel is made by a function of ``source`` (walk.SOURCE), which it keeps in its
# closure so that numba's cache key changes with the walk's files (see walk.SOURCE),
# beside ``w``, the walk compiled for its kind (a module: pickled by name in the key).
def _xxh64(source):
    w = W[DELIMITED]

    @njit(cache=True)
    def xxh64(buf, start, length):
        """XXH64 (seed 0) of ``buf[start:start + length]`` as uint64."""
        source  # noqa: B018
        return w.xxh64(buf, start, length)

    return xxh64


def _build_table(source):
    w = W[DELIMITED]

    @njit(cache=True, nogil=True)
    def build_table(token_offsets, token_bytes, values, capacity):
        """Lookup table over tokens ``token_bytes[token_offsets[i]:token_offsets[i + 1]]``.

        Returns ``(slots, arena, duplicate)``: ``duplicate`` is the first token equal to
        an earlier one, or -1.
        """
        source  # noqa: B018
        n = token_offsets.shape[0] - 1
        slots = np.zeros((capacity, 2), dtype=np.uint64)
        arena = np.empty(4 * n + (token_offsets[n] - token_offsets[0]), dtype=np.uint8)
        pos = 0
        for i in range(n):
            a = token_offsets[i]
            length = token_offsets[i + 1] - a
            h = w.xxh64(token_bytes, a, length)
            j = w.find_slot(token_bytes, a, length, h, slots, arena)
            if slots[j, 1] != 0:
                return slots, arena, i
            for c in range(4):
                arena[pos + c] = (length >> (8 * c)) & 0xFF
            arena[pos + 4 : pos + 4 + length] = token_bytes[a : a + length]
            slots[j, 0] = h
            slots[j, 1] = (np.uint64(values[i]) << np.uint64(32)) | np.uint64(pos)
            pos += 4 + length
        return slots, arena, -1

    return build_table


def _encode_rows(kind, source):
    w = W[kind]

    @njit(cache=True, nogil=True)
    def encode_rows(
        starts, stops, row_valid, row_valid_off,
        offsets, data, valid, valid_off,
        spec, sep, buckets, lk, uni, out, row_tokens, counts, bad,
    ):  # fmt: skip
        """Encode rows of tokens into ``out`` (rows, max_len); every cell is written.

        ``row_tokens``, when non-empty, receives each row's token count (used to gather
        per-row statistics for dictionary-encoded columns). Without ``replace``, the
        first row holding invalid UTF-8 goes to ``bad[0]`` and the kernel stops there.
        """
        source  # noqa: B018
        _, max_len, tail, pad_left, lower, strip, replace = spec
        slots, arena = lk
        keys = np.empty(w.scratch_size(starts, stops, offsets), dtype=np.uint8)
        key_start = np.empty(max_len, dtype=np.int64)
        key_len = np.empty(max_len, dtype=np.int64)
        hashes = np.empty(max_len, dtype=np.uint64)
        first_bad, tokens, kept, oov, truncated = w.encode_rows(
            0, starts.shape[0], 1, starts, stops, row_valid, row_valid_off, offsets, data, valid, valid_off,
            (max_len, tail, pad_left, lower, strip, replace, 1), sep, buckets, slots, arena, uni,
            keys, _NO_KEY_OFFSETS, out, row_tokens, key_start, key_len, hashes,
        )  # fmt: skip
        counts[0] += tokens
        counts[1] += kept
        counts[2] += oov
        counts[3] += truncated
        if first_bad >= 0:
            bad[0] = first_bad

    return encode_rows


def _encode_rows_jagged(kind, source):
    w = WJ[kind]

    @njit(cache=True, nogil=True)
    def encode_rows_jagged(
        starts, stops, row_valid, row_valid_off,
        offsets, data, valid, valid_off,
        spec, sep, buckets, lk, uni, values, row_offsets, counts, bad,
    ):  # fmt: skip
        """Encode rows of tokens into ``values`` (1-D, room for ``rows * max_len``),
        unpadded: row ``i`` is ``values[row_offsets[i]:row_offsets[i + 1]]``.

        ``row_offsets`` has ``rows + 1`` entries; the caller sets ``row_offsets[0]``
        (where the first row starts: chunks follow each other), the kernel the rest.
        Counts and ``bad`` as ``encode_rows``.
        """
        source  # noqa: B018
        _, max_len, tail, _, lower, strip, replace = spec
        slots, arena = lk
        keys = np.empty(w.scratch_size(starts, stops, offsets), dtype=np.uint8)
        key_start = np.empty(max_len, dtype=np.int64)
        key_len = np.empty(max_len, dtype=np.int64)
        hashes = np.empty(max_len, dtype=np.uint64)
        first_bad, tokens, kept, oov, truncated = w.encode_rows(
            0, starts.shape[0], 1, starts, stops, row_valid, row_valid_off, offsets, data, valid, valid_off,
            (max_len, tail, 0, lower, strip, replace, 1), sep, buckets, slots, arena, uni,
            keys, _NO_KEY_OFFSETS, values.reshape((1, values.shape[0])), row_offsets, key_start, key_len, hashes,
        )  # fmt: skip
        counts[0] += tokens
        counts[1] += kept
        counts[2] += oov
        counts[3] += truncated
        if first_bad >= 0:
            bad[0] = first_bad

    return encode_rows_jagged


def _gather_rows_jagged(source):
    w = W[DELIMITED]

    @njit(cache=True, nogil=True)
    def gather_rows_jagged(codes, valid, valid_off, dict_out, dict_tokens, values, row_offsets, counts):
        """``gather_rows`` into jagged rows: row ``i`` is ``dict_out[codes[i]]`` without its
        padding (an entry's kept indices come first: its rows are padded on the right),
        written from ``values[row_offsets[0]]`` on; ``row_offsets`` as ``encode_rows_jagged``."""
        source  # noqa: B018
        max_len = dict_out.shape[1]
        pos = row_offsets[0]
        for i in range(codes.shape[0]):
            tokens = kept = oov = 0
            if w.is_valid(valid, valid_off, i):
                c = codes[i]
                tokens = dict_tokens[c]
                for m in range(max_len):
                    v = dict_out[c, m]
                    if v == PAD:
                        break
                    values[pos + kept] = v
                    kept += 1
                    oov += v == OOV
            pos += kept
            row_offsets[i + 1] = pos
            w.add_row(counts, max_len, tokens, kept, oov)

    return gather_rows_jagged


def _gather_rows(source):
    w = W[DELIMITED]

    @njit(cache=True, nogil=True)
    def gather_rows(codes, valid, valid_off, dict_out, dict_tokens, out, counts):
        """Fill ``out`` from per-dictionary-entry rows: ``out[i] = dict_out[codes[i]]``."""
        source  # noqa: B018
        for i in range(codes.shape[0]):
            tokens, kept, oov = w.gather_row(i, codes, valid, valid_off, dict_out, dict_tokens, out)
            w.add_row(counts, out.shape[1], tokens, kept, oov)

    return gather_rows


def _tokenize_rows(kind, source):
    w = W[kind]

    @njit(cache=True, nogil=True)
    def tokenize_rows(starts, stops, row_valid, row_valid_off, offsets, data, valid, valid_off, spec, sep, uni):
        """Every key of every row (no truncation), with its row; see ``encode_rows``.

        Returns ``(tok_offsets, tok_bytes, tok_rows, ntok, bad)``; arrays are
        over-allocated; ``bad`` is the first row holding invalid UTF-8 (then the keys
        stop there) or -1 (always -1 with ``replace``).
        """
        source  # noqa: B018
        lower, strip, replace = spec[4], spec[5], spec[6]
        n = starts.shape[0]
        no_table = np.zeros((1, 2), dtype=np.uint64)
        no_out = np.empty((n, 0), dtype=np.int32)
        key_off = np.zeros(n, dtype=np.int64)
        row_tokens = np.zeros(n, dtype=np.int64)
        cap = 16 + n
        tok_offsets = np.zeros(cap + 1, dtype=np.int64)
        tok_rows = np.empty(cap, dtype=np.int64)
        tok_bytes = np.empty(1024, dtype=np.uint8)
        ntok = 0
        a = 0
        while a < n:
            # Rows a:b, each with scratch for its keys (3 per input byte, see text.key_unicode),
            # about 1 MiB of them in all: one call encodes them all.
            b = a
            size = 0
            while b < n and (b == a or size < _TOKENIZE_CHUNK):
                key_off[b] = size
                if w.KIND == LIST:
                    size += 3 * (offsets[stops[b]] - offsets[starts[b]] if stops[b] > starts[b] else 0) + 8
                else:
                    size += 3 * max(stops[b] - starts[b], 0) + 8
                b += 1
            scratch = np.empty(size, dtype=np.uint8)
            key_start = np.empty(size, dtype=np.int64)  # a non-empty token has a byte at least
            key_len = np.empty(size, dtype=np.int64)
            first_bad, _, _, _, _ = w.encode_rows(
                a, b, 1, starts, stops, row_valid, row_valid_off, offsets, data, valid, valid_off,
                (size, 0, 0, lower, strip, replace, 0), sep, 1, no_table, _NO_ARENA, uni, scratch, key_off, no_out,
                row_tokens, key_start, key_len, np.empty(size, dtype=np.uint64),
            )  # fmt: skip
            if first_bad >= 0:
                return tok_offsets, tok_bytes, tok_rows, ntok, first_bad
            c = 0
            for i in range(a, b):
                for _ in range(row_tokens[i]):
                    if ntok >= tok_rows.shape[0]:  # grow: capacity is len(tok_rows) == len(tok_offsets) - 1
                        grown = np.empty(2 * tok_rows.shape[0] + 1, dtype=np.int64)
                        grown[: ntok + 1] = tok_offsets[: ntok + 1]
                        tok_offsets = grown
                        rows = np.empty(2 * tok_rows.shape[0], dtype=np.int64)
                        rows[:ntok] = tok_rows[:ntok]
                        tok_rows = rows
                    m = key_len[c]
                    pos = tok_offsets[ntok]
                    if pos + m > tok_bytes.shape[0]:
                        more = np.empty(2 * tok_bytes.shape[0] + m, dtype=np.uint8)
                        more[:pos] = tok_bytes[:pos]
                        tok_bytes = more
                    tok_bytes[pos : pos + m] = scratch[key_start[c] : key_start[c] + m]
                    tok_offsets[ntok + 1] = pos + m
                    tok_rows[ntok] = i
                    ntok += 1
                    c += 1
            a = b
        return tok_offsets, tok_bytes, tok_rows, ntok, -1

    return tokenize_rows


xxh64 = _xxh64(walk.SOURCE)
build_table = _build_table(walk.SOURCE)
ENCODE_ROWS = {kind: _encode_rows(kind, walk.SOURCE) for kind in KINDS}
gather_rows = _gather_rows(walk.SOURCE)
ENCODE_ROWS_JAGGED = {kind: _encode_rows_jagged(kind, walk.SOURCE) for kind in KINDS}
gather_rows_jagged = _gather_rows_jagged(walk.SOURCE)
TOKENIZE_ROWS = {kind: _tokenize_rows(kind, walk.SOURCE) for kind in KINDS}

__all__ = [
    "DELIMITED", "DELIMITED_SEQ", "ENCODE_ROWS", "ENCODE_ROWS_JAGGED", "FIRST_INDEX", "LIST", "OOV", "PAD", "SCALAR", "TOKENIZE_ROWS",
    "build_table", "gather_rows", "gather_rows_jagged", "xxh64",
]  # fmt: skip
