"""Numba CPU kernels: Arrow buffers in, padded int32 index matrices out.

Everything here takes numpy arrays and scalars only (see ``dscore.encoding`` for the
wrappers that pull the arrays out of Arrow). Conventions shared by all kernels:

* A string array arrives as ``offsets`` (int32 or int64, absolute positions in
  ``data``), ``data`` (uint8) and a validity bitmap ``valid`` with its bit offset;
  an empty ``valid`` means "no nulls". Rows are ``starts``/``stops`` pairs (see
  ``encode_rows``).
* ``spec`` is ``(kind, max_len, tail, pad_left, lower, strip, replace)`` as int64s;
  ``replace`` (``on_invalid_utf8: replace``) reads each invalid UTF-8 sequence as
  U+FFFD, as ``bytes.decode("utf-8", "replace")`` does; without it a row holding
  invalid UTF-8 stops the kernel and is reported (``bad``).
* ``lk`` is the exact lookup ``(slots, arena)`` from ``build_table``; ``buckets > 0``
  selects hashing mode and ``lk`` is not read.
* ``uni`` is ``dscore.kernels.unicode.tables()``.
* ``counts`` accumulates ``[tokens, kept, oov, truncated_rows]``: ``tokens`` are
  the non-empty tokens before truncation, ``kept`` those written to the output.

The entry points release the GIL (``nogil=True``) so that Dask threads sharing a
process encode in parallel. Kernels compile lazily with ``cache=True`` rather than
from explicit signatures:
offsets come as int32 or int64 on each of up to two levels, and compiling every
combination eagerly would cost a fresh machine tens of seconds at import for
variants most jobs never use. Read-only (Arrow-backed) arrays are handled by
numba's dispatcher as their own types.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic


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


DELIMITED = 0  # separated by one byte
LIST = 1
SCALAR = 2
DELIMITED_SEQ = 3  # separated by a multi-byte sequence

PAD = 0
OOV = 1
FIRST_INDEX = 2

_SPACE = 1
_IGNORABLE = 2
_CASED = 4

_REPLACEMENT = 0xFFFD  # what invalid UTF-8 decodes to with on_invalid_utf8: replace

# ---------------------------------------------------------------- xxHash64
# The documented token hash (dscore.hash_token): XXH64 with seed 0 over the
# normalized token's UTF-8 bytes. All arithmetic is uint64 so it wraps.
_P1 = np.uint64(11400714785074694791)
_P2 = np.uint64(14029467366897019727)
_P3 = np.uint64(1609587929392839161)
_P4 = np.uint64(9650029242287828579)
_P5 = np.uint64(2870177450012600261)
_ZERO = np.uint64(0)


@njit(cache=True, inline="always")
def _rotl(x, r):
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


# Hot loads and stores index with unsigned integers: numba wraps negative signed
# indices around, which costs a compare and cmov per byte and stops LLVM from
# merging eight byte loads into one 64-bit load (measured: 2x on the encode kernel).
@njit(cache=True, inline="always")
def _u(i):
    return np.uint64(i)


@njit(cache=True, inline="always")
def _read64(b, p):
    q = _u(p)
    return (
        np.uint64(b[q])
        | (np.uint64(b[q + _u(1)]) << np.uint64(8))
        | (np.uint64(b[q + _u(2)]) << np.uint64(16))
        | (np.uint64(b[q + _u(3)]) << np.uint64(24))
        | (np.uint64(b[q + _u(4)]) << np.uint64(32))
        | (np.uint64(b[q + _u(5)]) << np.uint64(40))
        | (np.uint64(b[q + _u(6)]) << np.uint64(48))
        | (np.uint64(b[q + _u(7)]) << np.uint64(56))
    )


@njit(cache=True, inline="always")
def _read32(b, p):
    q = _u(p)
    return (
        np.uint64(b[q])
        | (np.uint64(b[q + _u(1)]) << np.uint64(8))
        | (np.uint64(b[q + _u(2)]) << np.uint64(16))
        | (np.uint64(b[q + _u(3)]) << np.uint64(24))
    )


@njit(cache=True, inline="always")
def _xxround(acc, lane):
    acc = acc + lane * _P2
    acc = _rotl(acc, 31)
    return acc * _P1


@njit(cache=True, inline="always")
def _xxmerge(acc, v):
    acc = acc ^ _xxround(_ZERO, v)
    return acc * _P1 + _P4


@njit(cache=True, inline="always")
def _xxh64(buf, start, length):
    p = start
    end = start + length
    if length >= 32:
        v1 = _P1 + _P2
        v2 = _P2
        v3 = _ZERO
        v4 = _ZERO - _P1
        while p + 32 <= end:
            v1 = _xxround(v1, _read64(buf, p))
            v2 = _xxround(v2, _read64(buf, p + 8))
            v3 = _xxround(v3, _read64(buf, p + 16))
            v4 = _xxround(v4, _read64(buf, p + 24))
            p += 32
        h = _rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)
        h = _xxmerge(h, v1)
        h = _xxmerge(h, v2)
        h = _xxmerge(h, v3)
        h = _xxmerge(h, v4)
    else:
        h = _P5
    h = h + np.uint64(length)
    while p + 8 <= end:
        h = h ^ _xxround(_ZERO, _read64(buf, p))
        h = _rotl(h, 27) * _P1 + _P4
        p += 8
    if p + 4 <= end:
        h = h ^ (_read32(buf, p) * _P1)
        h = _rotl(h, 23) * _P2 + _P3
        p += 4
    while p < end:
        h = h ^ (np.uint64(buf[_u(p)]) * _P5)
        h = _rotl(h, 11) * _P1
        p += 1
    h = h ^ (h >> np.uint64(33))
    h = h * _P2
    h = h ^ (h >> np.uint64(29))
    h = h * _P3
    h = h ^ (h >> np.uint64(32))
    return h


@njit(cache=True)
def xxh64(buf, start, length):
    """XXH64 (seed 0) of ``buf[start:start + length]`` as uint64."""
    return _xxh64(buf, start, length)


# ---------------------------------------------------------------- UTF-8 and normalization


@njit(cache=True)
def _decode(data, p, end):
    """``(code point, byte length, invalid)`` of the character at ``data[p]``.

    Invalid UTF-8 decodes as Python's ``bytes.decode("utf-8", "replace")`` does:
    U+FFFD for each maximal subpart of an ill-formed sequence (Unicode's Table 3-7:
    overlong forms, surrogates, code points above U+10FFFF, truncated sequences and
    lone continuation bytes), with ``invalid`` set. A maximal subpart never swallows
    an ASCII or lead byte, so splitting on separators before decoding agrees with
    decoding whole cells.
    """
    b0 = np.int64(data[p])
    if b0 < 0x80:
        return b0, 1, False
    if b0 < 0xC2 or b0 > 0xF4:
        return _REPLACEMENT, 1, True
    lo = 0x80
    hi = 0xBF
    if b0 < 0xE0:
        need = 1
        cp = b0 & 0x1F
    elif b0 < 0xF0:
        need = 2
        cp = b0 & 0x0F
        if b0 == 0xE0:
            lo = 0xA0  # overlong
        elif b0 == 0xED:
            hi = 0x9F  # surrogates
    else:
        need = 3
        cp = b0 & 0x07
        if b0 == 0xF0:
            lo = 0x90  # overlong
        elif b0 == 0xF4:
            hi = 0x8F  # above U+10FFFF
    q = p + 1
    for _ in range(need):
        if q >= end:
            return _REPLACEMENT, q - p, True
        b = np.int64(data[q])
        if b < lo or b > hi:
            return _REPLACEMENT, q - p, True
        cp = (cp << 6) | (b & 0x3F)
        lo = 0x80
        hi = 0xBF
        q += 1
    return cp, q - p, False


@njit(cache=True)
def _decode_before(data, s, p):
    """``(code point, start, invalid)`` of the character that ends at ``data[p]`` (``p > s``),
    within a string that starts at ``s``, decoded as ``_decode`` decodes forwards."""
    k = p - 1
    while k > s and k > p - 4 and (data[k] & 0xC0) == 0x80:
        k -= 1
    cp, n, bad = _decode(data, k, p)
    if k + n != p:  # bytes after a complete character (or its ill-formed start): one U+FFFD ends there
        return _REPLACEMENT, p - 1, True
    return cp, k, bad


@njit(cache=True)
def _put(out, q, cp):
    if cp < 0x80:
        out[q] = cp
        return q + 1
    if cp < 0x800:
        out[q] = 0xC0 | (cp >> 6)
        out[q + 1] = 0x80 | (cp & 0x3F)
        return q + 2
    if cp < 0x10000:
        out[q] = 0xE0 | (cp >> 12)
        out[q + 1] = 0x80 | ((cp >> 6) & 0x3F)
        out[q + 2] = 0x80 | (cp & 0x3F)
        return q + 3
    out[q] = 0xF0 | (cp >> 18)
    out[q + 1] = 0x80 | ((cp >> 12) & 0x3F)
    out[q + 2] = 0x80 | ((cp >> 6) & 0x3F)
    out[q + 3] = 0x80 | (cp & 0x3F)
    return q + 4


@njit(cache=True, inline="always")
def _is_ascii_space(b):
    # Python's str.strip() also removes the ASCII separators 0x1C-0x1F.
    return b == 32 or (9 <= b <= 13) or (28 <= b <= 31)


# Hot-path helpers marked inline="always" are leaves: they call nothing that is
# compiled out of line. An inlined helper that does call out holds references to
# its array arguments across the call, and numba then increfs/decrefs every array
# on every token (atomics: 3-4x slower overall, measured). The rare non-ASCII paths
# are therefore separate functions called from the kernel bodies themselves.
@njit(cache=True, inline="always")
def _strip_ascii(data, s, e):
    while s < e and data[_u(s)] < 0x80 and _is_ascii_space(data[_u(s)]):
        s += 1
    while e > s and data[_u(e - 1)] < 0x80 and _is_ascii_space(data[_u(e - 1)]):
        e -= 1
    return s, e


@njit(cache=True)
def _strip_unicode(data, s, e, flags):
    """Narrow ``[s, e)`` to drop leading and trailing ``str.isspace`` characters
    (invalid UTF-8 reads as U+FFFD, which is not a space)."""
    while s < e:
        b = data[s]
        if b < 0x80:
            if not _is_ascii_space(b):
                break
            s += 1
        else:
            cp, n, bad = _decode(data, s, e)
            if bad or not (flags[cp] & _SPACE):
                break
            s += n
    while e > s:
        b = data[e - 1]
        if b < 0x80:
            if not _is_ascii_space(b):
                break
            e -= 1
        else:
            cp, k, bad = _decode_before(data, s, e)
            if bad or not (flags[cp] & _SPACE):
                break
            e = k
    return s, e


@njit(cache=True)
def _final_sigma(data, s, e, p, n, flags):
    """CPython's Final_Sigma test for the 'Σ' at ``p`` within the token ``[s, e)``."""
    j = p
    cased_before = False
    while j > s:
        cp, k, _ = _decode_before(data, s, j)
        f = flags[cp]
        if f & _IGNORABLE:
            j = k
            continue
        cased_before = (f & _CASED) != 0
        break
    if not cased_before:
        return False
    j = p + n
    while j < e:
        cp, m, _ = _decode(data, j, e)
        f = flags[cp]
        if f & _IGNORABLE:
            j += m
            continue
        return (f & _CASED) == 0
    return True


_ONES = np.uint64(0x0101010101010101)
_HIGHS = np.uint64(0x8080808080808080)
_LOW7 = np.uint64(0x7F7F7F7F7F7F7F7F)


@njit(cache=True, inline="always")
def _write64(b, p, w):
    q = _u(p)
    for c in range(8):
        b[q + _u(c)] = np.uint8((w >> np.uint64(8 * c)) & np.uint64(0xFF))


@njit(cache=True, inline="always")
def _lower_word(w):
    """Eight bytes with every ASCII 'A'-'Z' lowered; other bytes (non-ASCII too) unchanged.

    Per byte on its low seven bits, so no carry crosses bytes: +0x3F sets the high
    bit from 'A' up, +0x25 from 'Z' + 1 up.
    """
    h = w & _LOW7
    upper = (h + np.uint64(0x3F3F3F3F3F3F3F3F)) & ~(h + np.uint64(0x2525252525252525)) & ~w & _HIGHS
    return w | (upper >> np.uint64(2))


@njit(cache=True, inline="always")
def _copy_key(data, s, e, lower, out, o):
    """Copy ``data[s:e]`` to ``out[o:]``, ASCII-lowercased if ``lower``.

    Returns True when a non-ASCII byte was seen: the key must then be redone by
    ``_key_unicode``. Eight bytes at a time, the last word overlapping the one
    before it, so a token of 8+ bytes costs no byte loop (measured: the byte loop,
    though vectorized, cost 2x on 20-byte tokens: too short for its vector body).
    """
    n = e - s
    seen = np.uint64(0)
    if n >= 8:
        c = 0
        while c + 8 < n:
            w = _read64(data, s + c)
            seen |= w
            _write64(out, o + c, _lower_word(w) if lower else w)
            c += 8
        w = _read64(data, e - 8)
        seen |= w
        _write64(out, o + n - 8, _lower_word(w) if lower else w)
        return (seen & _HIGHS) != 0
    shift = _u(o) - _u(s)
    for p in range(_u(s), _u(e)):
        b = data[p]
        seen |= np.uint64(b)
        out[shift + p] = b + np.uint8(32) if lower and np.uint8(b - 65) < 26 else b
    return seen >= 0x80


@njit(cache=True)
def _key_unicode(data, s, e, uni, lower, out, o):
    """Key of a token with non-ASCII bytes into ``out[o:]``: its characters, each
    invalid sequence as U+FFFD, lowercased as Python's ``str.lower`` (through the
    Unicode tables) if ``lower``.

    Returns ``(length, invalid)``; the length is at most ``3 * (e - s)`` (a lone
    invalid byte becomes U+FFFD's three bytes; lowercasing grows UTF-8 <= 1.5x).
    """
    low, exp_offsets, expansions, flags = uni
    q = o
    p = s
    invalid = False
    while p < e:
        b = data[p]
        if b < 0x80:
            out[q] = b + 32 if lower and 65 <= b <= 90 else b
            q += 1
            p += 1
            continue
        cp, n, bad = _decode(data, p, e)
        invalid |= bad
        if not lower:
            lc = cp
        elif cp == 0x3A3:
            lc = 0x3C2 if _final_sigma(data, s, e, p, n, flags) else 0x3C3
        else:
            lc = low[cp]
        if lc >= 0:
            q = _put(out, q, lc)
        else:
            k = -lc - 1
            for j in range(exp_offsets[k], exp_offsets[k + 1]):
                q = _put(out, q, expansions[j])
        p += n
    return q - o, invalid


@njit(cache=True)
def _utf8_invalid(data, s, e):
    """True when ``data[s:e]`` is not valid UTF-8."""
    p = s
    while p < e:
        if data[p] < 0x80:
            p += 1
            continue
        _, n, bad = _decode(data, p, e)
        if bad:
            return True
        p += n
    return False


@njit(cache=True, inline="always")
def _is_ascii(data, s, e):
    seen = np.uint8(0)
    for p in range(_u(s), _u(e)):
        seen |= data[p]
    return seen < 0x80


# ---------------------------------------------------------------- exact lookup table
# Linear probing over 16-byte slots ``(hash, index << 32 | arena offset)``; the
# arena holds each token as a 4-byte little-endian length and its bytes, in table
# order. A hit touches one slot and one arena line, and fitted tables are in
# descending frequency, so the arena of the frequent tokens stays in cache.
# (Slots pointing at separate offsets/bytes/values arrays cost four misses per
# cold token and ran at a third of the speed.)
@njit(cache=True, inline="always")
def _find_slot(key, koff, n, h, slots, arena):
    """Slot holding ``key[koff:koff + n]`` (hash ``h``) or the empty slot where it would go."""
    mask = np.uint64(slots.shape[0] - 1)
    j = h & mask
    while True:
        w = slots[j, 1]
        if w == 0:
            break
        if slots[j, 0] == h:
            a = np.int64(w & np.uint64(0xFFFFFFFF))
            length = np.int64(_read32(arena, a))
            if length == n:
                same = True
                if n >= 8:  # by words, the last one overlapping the one before it
                    c = 0
                    while c + 8 < n:
                        if _read64(arena, a + 4 + c) != _read64(key, koff + c):
                            same = False
                            break
                        c += 8
                    same = same and _read64(arena, a + 4 + n - 8) == _read64(key, koff + n - 8)
                else:
                    for c in range(n):
                        if arena[_u(a + 4 + c)] != key[_u(koff + c)]:
                            same = False
                            break
                if same:
                    break
        j = (j + np.uint64(1)) & mask
    return j


@njit(cache=True, nogil=True)
def build_table(token_offsets, token_bytes, values, capacity):
    """Lookup table over tokens ``token_bytes[token_offsets[i]:token_offsets[i + 1]]``.

    Returns ``(slots, arena, duplicate)``: ``duplicate`` is the first token equal to
    an earlier one, or -1.
    """
    n = token_offsets.shape[0] - 1
    slots = np.zeros((capacity, 2), dtype=np.uint64)
    arena = np.empty(4 * n + (token_offsets[n] - token_offsets[0]), dtype=np.uint8)
    pos = 0
    for i in range(n):
        a = token_offsets[i]
        length = token_offsets[i + 1] - a
        h = _xxh64(token_bytes, a, length)
        j = _find_slot(token_bytes, a, length, h, slots, arena)
        if slots[j, 1] != 0:
            return slots, arena, i
        for c in range(4):
            arena[pos + c] = (length >> (8 * c)) & 0xFF
        arena[pos + 4 : pos + 4 + length] = token_bytes[a : a + length]
        slots[j, 0] = h
        slots[j, 1] = (np.uint64(values[i]) << np.uint64(32)) | np.uint64(pos)
        pos += 4 + length
    return slots, arena, -1


# ---------------------------------------------------------------- rows of tokens
# One iteration scheme serves every kind. For LIST, row i is the child strings
# ``starts[i]:stops[i]`` (``offsets``/``data``/``valid`` describe the child); for
# DELIMITED and SCALAR, row i is the cell ``data[starts[i]:stops[i]]``. Start/stop
# pairs cover list, list-view and fixed-size-list layouts, and plain string
# columns pass ``offsets[:-1], offsets[1:]`` without a copy.
@njit(cache=True, inline="always")
def _valid(valid, valid_off, i):
    if valid.shape[0] == 0:
        return True
    k = valid_off + i
    return (valid[k >> 3] >> (k & 7)) & 1 == 1


@njit(cache=True, inline="always")
def _find_byte(data, p, e, c):
    """First position of byte ``c`` in ``data[p:e]``, or ``e``.

    Eight bytes at a time: a word's bytes equal to ``c`` become zero bytes, and
    ``(x - 0x01..) & ~x & 0x80..`` is non-zero exactly when one is.
    """
    pattern = np.uint64(c) * _ONES
    while p + 8 <= e:
        x = _read64(data, p) ^ pattern
        if ((x - _ONES) & ~x & _HIGHS) != 0:
            break
        p += 8
    while p < e:
        if data[_u(p)] == c:
            return p
        p += 1
    return e


@njit(cache=True, inline="always")
def _find_seq(data, p, e, sep):
    """First position of the byte string ``sep`` in ``data[p:e]``, or ``e``."""
    m = sep.shape[0]
    while p + m <= e:
        same = True
        for i in range(m):
            if data[_u(p + i)] != sep[i]:
                same = False
                break
        if same:
            return p
        p += 1
    return e


@njit(cache=True, inline="always")
def _next_sep(data, p, e, kind, sep, c):
    """End of the token starting at ``p`` in cell ``data[:e]``.

    The one-byte case must stay a loop of its own: with the general search in
    the same inlined body, the token loop measured 2x slower. The encode kernels
    are specialized per kind so the branch folds away.
    """
    if kind == DELIMITED:
        return _find_byte(data, p, e, c)
    if kind == DELIMITED_SEQ:
        return _find_seq(data, p, e, sep)
    return e


@njit(cache=True)
def _scratch_size(starts, stops, offsets, kind):
    """Bytes that the keys of a row's tokens can need (``_key_unicode``: at most 3 per input byte)."""
    longest = 0
    for i in range(starts.shape[0]):
        if kind == LIST:
            longest = max(longest, offsets[stops[i]] - offsets[starts[i]] if stops[i] > starts[i] else 0)
        else:
            longest = max(longest, stops[i] - starts[i])
    return 3 * longest + 8


@njit(cache=True)
def _count_tokens(i, starts, stops, offsets, data, valid, valid_off, kind, sep, strip, flags):
    """Non-empty tokens of row ``i`` (tail truncation must know how many to skip)."""
    t = 0
    c0 = sep[0]
    j = starts[i]
    p = starts[i]
    e0 = stops[i]
    done = False
    while True:
        if kind == LIST:
            if j >= e0:
                break
            ok = _valid(valid, valid_off, j)
            s = offsets[j]
            e = offsets[j + 1]
            j += 1
        else:
            if done:
                break
            q = _next_sep(data, p, e0, kind, sep, c0)
            s = p
            e = q
            ok = True
            if q >= e0:
                done = True
            else:
                p = q + sep.shape[0]
        if not ok:
            continue
        if strip:
            s, e = _strip_ascii(data, s, e)
            if s < e and (data[s] >= 0x80 or data[e - 1] >= 0x80):
                s, e = _strip_unicode(data, s, e, flags)
        if s < e:
            t += 1
    return t


def _make_encode_rows(kind):
    """``encode_rows`` specialized for one kind: ``kind`` is a compile-time constant, so
    the other kinds' branches vanish from the hot loop (measured: up to 1.5x)."""

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
        _, max_len, tail, pad_left, lower, strip, replace = spec
        slots, arena = lk
        flags = uni[3]
        mask = np.uint64(slots.shape[0] - 1)
        n = starts.shape[0]
        keys = np.empty(_scratch_size(starts, stops, offsets, kind), dtype=np.uint8)
        key_start = np.empty(max_len, dtype=np.int64)
        key_len = np.empty(max_len, dtype=np.int64)
        hashes = np.empty(max_len, dtype=np.uint64)
        nsep = sep.shape[0]
        c0 = sep[0]
        for i in range(n):
            k = 0
            t = 0
            if _valid(row_valid, row_valid_off, i):
                skip = 0
                if tail:
                    skip = _count_tokens(i, starts, stops, offsets, data, valid, valid_off, kind, sep, strip, flags)
                    skip = max(0, skip - max_len)
                j = starts[i]
                p = starts[i]
                e0 = stops[i]
                done = False
                o = 0  # free space in keys
                while True:
                    if kind == LIST:
                        if j >= e0:
                            break
                        ok = _valid(valid, valid_off, j)
                        s = offsets[j]
                        e = offsets[j + 1]
                        j += 1
                        if not ok:
                            continue
                    else:
                        if done:
                            break
                        s = p
                        e = _next_sep(data, p, e0, kind, sep, c0)
                        if e >= e0:
                            done = True
                        else:
                            p = e + nsep
                    if strip:
                        s, e = _strip_ascii(data, s, e)
                        if s < e and (data[_u(s)] >= 0x80 or data[_u(e - 1)] >= 0x80):
                            s, e = _strip_unicode(data, s, e, flags)
                    if s >= e:
                        continue
                    t += 1
                    if t <= skip or k >= max_len:
                        # a dropped token must be valid UTF-8 too (as Arrow's validation demands)
                        if not replace and not _is_ascii(data, s, e) and _utf8_invalid(data, s, e):
                            bad[0] = i
                            return
                        continue
                    m = e - s
                    if _copy_key(data, s, e, lower, keys, o):
                        m, invalid = _key_unicode(data, s, e, uni, lower, keys, o)
                        if invalid and not replace:
                            bad[0] = i
                            return
                    key_start[_u(k)] = o
                    key_len[_u(k)] = m
                    h = _xxh64(keys, o, m)
                    hashes[_u(k)] = h
                    if buckets == 0:  # the probe comes after the row's last token: load its slot now
                        _prefetch(slots, np.int64((h & mask) * np.uint64(2)))
                    o += m
                    k += 1
                # Look the row's keys up in a pass of their own, their slots prefetched
                # when hashed: probing each key as soon as it is hashed waits on a cache
                # miss per rare token (1.3x slower on a 200k vocabulary, measured).
                row = _u(i)
                if buckets > 0:
                    for c in range(_u(k)):
                        out[row, c] = FIRST_INDEX + np.int64(hashes[c] % np.uint64(buckets))
                else:
                    # The home slots are in cache by now: start loading the tokens they
                    # point at, so that the compares below wait on fewer arena misses.
                    for c in range(_u(k)):
                        j = hashes[c] & mask
                        if slots[j, 0] == hashes[c]:
                            _prefetch(arena, np.int64(slots[j, 1] & np.uint64(0xFFFFFFFF)))
                    for c in range(_u(k)):
                        w = slots[_find_slot(keys, key_start[c], key_len[c], hashes[c], slots, arena), 1]
                        if w != 0:
                            out[row, c] = np.int64(w >> np.uint64(32))
                        else:
                            out[row, c] = OOV
                            counts[2] += 1
            _pad_row(out, _u(i), k, max_len, pad_left)
            counts[0] += t
            counts[1] += k
            if t > max_len:
                counts[3] += 1
            if row_tokens.shape[0] > 0:
                row_tokens[i] = t

    return encode_rows


ENCODE_ROWS = {k: _make_encode_rows(k) for k in (DELIMITED, LIST, SCALAR, DELIMITED_SEQ)}


@njit(cache=True, inline="always")
def _pad_row(out, i, k, max_len, pad_left):
    """Pad row ``i`` (whose first ``k`` cells hold its indices) with PAD on either side."""
    if pad_left and 0 < k < max_len:
        shift = max_len - k
        for c in range(k - 1, -1, -1):
            out[i, c + shift] = out[i, c]
        for c in range(shift):
            out[i, c] = PAD
    else:
        for c in range(k, max_len):
            out[i, c] = PAD


@njit(cache=True, nogil=True)
def gather_rows(codes, valid, valid_off, dict_out, dict_tokens, out, counts):
    """Fill ``out`` from per-dictionary-entry rows: ``out[i] = dict_out[codes[i]]``."""
    max_len = out.shape[1]
    for i in range(codes.shape[0]):
        if not _valid(valid, valid_off, i):
            for m in range(max_len):
                out[i, m] = PAD
            continue
        c = codes[i]
        t = dict_tokens[c]
        k = 0
        for m in range(max_len):
            v = dict_out[c, m]
            out[i, m] = v
            if v != PAD:
                k += 1
                if v == OOV:
                    counts[2] += 1
        counts[0] += t
        counts[1] += k
        if t > max_len:
            counts[3] += 1


# ---------------------------------------------------------------- tokenize (vocabulary fitting)
@njit(cache=True, nogil=True)
def tokenize_rows(starts, stops, row_valid, row_valid_off, offsets, data, valid, valid_off, spec, sep, uni):
    """Every key of every row (no truncation), with its row; see ``encode_rows``.

    Returns ``(tok_offsets, tok_bytes, tok_rows, ntok, bad)``; arrays are
    over-allocated; ``bad`` is the first row holding invalid UTF-8 (then the keys
    stop there) or -1 (always -1 with ``replace``).
    """
    kind, max_len, tail, pad_left, lower, strip, replace = spec
    flags = uni[3]
    n = starts.shape[0]
    scratch = np.empty(_scratch_size(starts, stops, offsets, kind), dtype=np.uint8)
    cap = 16 + n
    tok_offsets = np.zeros(cap + 1, dtype=np.int64)
    tok_rows = np.empty(cap, dtype=np.int64)
    tok_bytes = np.empty(1024, dtype=np.uint8)
    ntok = 0
    nsep = sep.shape[0]
    c0 = sep[0]
    for i in range(n):
        if not _valid(row_valid, row_valid_off, i):
            continue
        j = starts[i]
        p = starts[i]
        e0 = stops[i]
        done = False
        while True:
            if kind == LIST:
                if j >= e0:
                    break
                ok = _valid(valid, valid_off, j)
                s = offsets[j]
                e = offsets[j + 1]
                j += 1
            else:
                if done:
                    break
                q = _next_sep(data, p, e0, kind, sep, c0)
                s = p
                e = q
                ok = True
                if q >= e0:
                    done = True
                else:
                    p = q + nsep
            if not ok:
                continue
            if strip:
                s, e = _strip_ascii(data, s, e)
                if s < e and (data[s] >= 0x80 or data[e - 1] >= 0x80):
                    s, e = _strip_unicode(data, s, e, flags)
            if s >= e:
                continue
            m = e - s
            if _copy_key(data, s, e, lower, scratch, 0):
                m, invalid = _key_unicode(data, s, e, uni, lower, scratch, 0)
                if invalid and not replace:
                    return tok_offsets, tok_bytes, tok_rows, ntok, i
            if ntok >= tok_rows.shape[0]:  # grow: capacity is len(tok_rows) == len(tok_offsets) - 1
                grown = np.empty(2 * tok_rows.shape[0] + 1, dtype=np.int64)
                grown[: ntok + 1] = tok_offsets[: ntok + 1]
                tok_offsets = grown
                rows = np.empty(2 * tok_rows.shape[0], dtype=np.int64)
                rows[:ntok] = tok_rows[:ntok]
                tok_rows = rows
            pos = tok_offsets[ntok]
            if pos + m > tok_bytes.shape[0]:
                more = np.empty(2 * tok_bytes.shape[0] + m, dtype=np.uint8)
                more[:pos] = tok_bytes[:pos]
                tok_bytes = more
            tok_bytes[pos : pos + m] = scratch[:m]
            tok_offsets[ntok + 1] = pos + m
            tok_rows[ntok] = i
            ntok += 1
    return tok_offsets, tok_bytes, tok_rows, ntok, -1
