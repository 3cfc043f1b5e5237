"""numba.cuda kernels with exactly the semantics of ``dscore.kernels.cpu``.

``ENCODE_ROWS[kind]`` and ``gather_rows`` compute what their CPU namesakes do, bit
for bit: same normalization (``token.strip().lower()`` through the same Unicode
tables, final sigma included), same XXH64, same ``(slots, arena)`` lookup table,
same truncation, padding and counts. A CUDA device function cannot call a CPU
``@njit`` function, so the device functions below mirror the CPU ones one for one,
with the same names, in the same order and with the same bodies as far as the
target allows: diff this file against ``cpu.py`` to review it. The differences,
all deliberate:

* One thread encodes one row (grid-stride loop). A row's keys go to its own slice
  of a global scratch buffer (CUDA kernels cannot allocate), at offsets the host
  computes from the row byte lengths (``_key_offsets``); each key is looked up as
  soon as it is hashed, since the CPU kernel's second pass exists only to
  prefetch slots, and a GPU hides that latency with other warps.
* Counts are summed per thread and added with one atomic per counter per thread.
* No unsigned-index or prefetch tricks: those are CPU codegen workarounds.
* A row with invalid UTF-8 (without ``replace``) is reported by lowering
  ``counts[4]`` atomically to its index (the CPU kernel stops at the first).

The host wrappers ``encode_rows_cuda`` and ``gather_rows_cuda`` take the CPU
kernels' numpy arguments and return the int32 ``(rows, max_len)`` result as a
numba device array (hand it to torch through ``__cuda_array_interface__``) and
the host counts ``[tokens, kept, oov, truncated_rows]``.

Importing this module needs no GPU: numba.cuda imports without a driver and
kernels compile at their first launch. The entry points raise ``RuntimeError``
when no device is usable. Under ``NUMBA_ENABLE_CUDASIM=1`` everything runs on
numba's simulator, which is how the tests check the kernels on machines
without a GPU (``tests/gpu``).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
from numba import cuda

from .cpu import (
    _CASED,
    _IGNORABLE,
    _P1,
    _P2,
    _P3,
    _P4,
    _P5,
    _REPLACEMENT,
    _SPACE,
    _ZERO,
    DELIMITED,
    DELIMITED_SEQ,
    FIRST_INDEX,
    LIST,
    OOV,
    PAD,
    SCALAR,
)


def _env_int(environ: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = environ.get(name, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = lo - 1
    if not lo <= value <= hi:
        raise ValueError(f"{name}={raw!r}: expected an integer from {lo} to {hi}; unset it for the default {default}")
    return value


# Launch geometry. The tests make both small (under the simulator) so that rows
# fall on block edges and threads loop over several rows.
THREADS_PER_BLOCK = _env_int(os.environ, "DSCORE_CUDA_THREADS", 256, 1, 1024)
MAX_BLOCKS = _env_int(os.environ, "DSCORE_CUDA_BLOCKS", 65535, 1, 2**31 - 1)


# ---------------------------------------------------------------- xxHash64
@cuda.jit(device=True)
def _rotl(x, r):
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


@cuda.jit(device=True)
def _read64(b, p):
    return (
        np.uint64(b[p])
        | (np.uint64(b[p + 1]) << np.uint64(8))
        | (np.uint64(b[p + 2]) << np.uint64(16))
        | (np.uint64(b[p + 3]) << np.uint64(24))
        | (np.uint64(b[p + 4]) << np.uint64(32))
        | (np.uint64(b[p + 5]) << np.uint64(40))
        | (np.uint64(b[p + 6]) << np.uint64(48))
        | (np.uint64(b[p + 7]) << np.uint64(56))
    )


@cuda.jit(device=True)
def _read32(b, p):
    return (
        np.uint64(b[p])
        | (np.uint64(b[p + 1]) << np.uint64(8))
        | (np.uint64(b[p + 2]) << np.uint64(16))
        | (np.uint64(b[p + 3]) << np.uint64(24))
    )


@cuda.jit(device=True)
def _xxround(acc, lane):
    acc = acc + lane * _P2
    acc = _rotl(acc, 31)
    return acc * _P1


@cuda.jit(device=True)
def _xxmerge(acc, v):
    acc = acc ^ _xxround(_ZERO, v)
    return acc * _P1 + _P4


@cuda.jit(device=True)
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
        h = h ^ (np.uint64(buf[p]) * _P5)
        h = _rotl(h, 11) * _P1
        p += 1
    h = h ^ (h >> np.uint64(33))
    h = h * _P2
    h = h ^ (h >> np.uint64(29))
    h = h * _P3
    h = h ^ (h >> np.uint64(32))
    return h


# ---------------------------------------------------------------- UTF-8 and normalization
@cuda.jit(device=True)
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


@cuda.jit(device=True)
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


@cuda.jit(device=True)
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


@cuda.jit(device=True)
def _is_ascii_space(b):
    # Python's str.strip() also removes the ASCII separators 0x1C-0x1F.
    return b == 32 or (9 <= b <= 13) or (28 <= b <= 31)


@cuda.jit(device=True)
def _strip_ascii(data, s, e):
    while s < e and data[s] < 0x80 and _is_ascii_space(data[s]):
        s += 1
    while e > s and data[e - 1] < 0x80 and _is_ascii_space(data[e - 1]):
        e -= 1
    return s, e


@cuda.jit(device=True)
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


@cuda.jit(device=True)
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


@cuda.jit(device=True)
def _copy_key(data, s, e, lower, out, o):
    """Copy ``data[s:e]`` to ``out[o:]``, ASCII-lowercased if ``lower``.

    Returns True when a non-ASCII byte was seen: the key must then be redone by
    ``_key_unicode``.
    """
    seen = 0
    for p in range(s, e):
        b = data[p]
        seen |= b
        if lower and 65 <= b <= 90:
            b += 32
        out[o + p - s] = b
    return seen >= 0x80


@cuda.jit(device=True)
def _key_unicode(data, s, e, low, exp_offsets, expansions, flags, lower, out, o):
    """Key of a token with non-ASCII bytes into ``out[o:]``: its characters, each
    invalid sequence as U+FFFD, lowercased as Python's ``str.lower`` (through the
    Unicode tables) if ``lower``.

    Returns ``(length, invalid)``; the length is at most ``3 * (e - s)`` (a lone
    invalid byte becomes U+FFFD's three bytes; lowercasing grows UTF-8 <= 1.5x).
    """
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


@cuda.jit(device=True)
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


@cuda.jit(device=True)
def _is_ascii(data, s, e):
    seen = 0
    for p in range(s, e):
        seen |= data[p]
    return seen < 0x80


# ---------------------------------------------------------------- exact lookup table
@cuda.jit(device=True)
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
                c = 0
                while c + 8 <= n:
                    if _read64(arena, a + 4 + c) != _read64(key, koff + c):
                        same = False
                        break
                    c += 8
                while same and c < n:
                    same = arena[a + 4 + c] == key[koff + c]
                    c += 1
                if same:
                    break
        j = (j + np.uint64(1)) & mask
    return j


# ---------------------------------------------------------------- rows of tokens
@cuda.jit(device=True)
def _valid(valid, valid_off, i):
    if valid.shape[0] == 0:
        return True
    k = valid_off + i
    return (valid[k >> 3] >> (k & 7)) & 1 == 1


@cuda.jit(device=True)
def _find_byte(data, p, e, c):
    """First position of byte ``c`` in ``data[p:e]``, or ``e``."""
    while p < e:
        if data[p] == c:
            return p
        p += 1
    return e


@cuda.jit(device=True)
def _find_seq(data, p, e, sep):
    """First position of the byte string ``sep`` in ``data[p:e]``, or ``e``."""
    m = sep.shape[0]
    while p + m <= e:
        same = True
        for i in range(m):
            if data[p + i] != sep[i]:
                same = False
                break
        if same:
            return p
        p += 1
    return e


@cuda.jit(device=True)
def _next_sep(data, p, e, kind, sep, c):
    """End of the token starting at ``p`` in cell ``data[:e]``."""
    if kind == DELIMITED:
        return _find_byte(data, p, e, c)
    if kind == DELIMITED_SEQ:
        return _find_seq(data, p, e, sep)
    return e


@cuda.jit(device=True)
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
    """``encode_rows`` specialized for one kind, as in cpu.py (``kind`` is a compile-time constant)."""

    @cuda.jit(cache=True)
    def encode_rows(
        starts, stops, row_valid, row_valid_off,
        offsets, data, valid, valid_off,
        max_len, tail, pad_left, lower, strip, replace, sep, buckets,
        slots, arena, low, exp_offsets, expansions, flags,
        keys, key_off, out, row_tokens, counts,
    ):  # fmt: skip
        """Encode rows of tokens into ``out`` (rows, max_len); every cell is written.

        The arguments are cpu.encode_rows's with the tuples unpacked (``spec`` minus
        its kind, ``lk``, ``uni``), plus the scratch ``keys`` where row ``i`` owns
        ``keys[key_off[i]:key_off[i + 1]]``. ``counts`` is added to atomically;
        ``counts[4]`` is lowered to the first row holding invalid UTF-8 (without
        ``replace``), whose thread then stops encoding it.
        """
        nsep = sep.shape[0]
        c0 = sep[0]
        tokens = 0
        kept = 0
        oov = 0
        truncated = 0
        for i in range(cuda.grid(1), starts.shape[0], cuda.gridsize(1)):
            k = 0
            t = 0
            if _valid(row_valid, row_valid_off, i):
                skip = 0
                if tail:
                    skip = _count_tokens(i, starts, stops, offsets, data, valid, valid_off, kind, sep, strip, flags)
                    skip = skip - max_len if skip > max_len else 0  # builtin max() fails to type on this target
                j = starts[i]
                p = starts[i]
                e0 = stops[i]
                done = False
                o = key_off[i]  # every key of the row is built here in turn
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
                        if s < e and (data[s] >= 0x80 or data[e - 1] >= 0x80):
                            s, e = _strip_unicode(data, s, e, flags)
                    if s >= e:
                        continue
                    t += 1
                    if t <= skip or k >= max_len:
                        # a dropped token must be valid UTF-8 too (as Arrow's validation demands)
                        if not replace and not _is_ascii(data, s, e) and _utf8_invalid(data, s, e):
                            cuda.atomic.min(counts, 4, i)
                            break
                        continue
                    m = e - s
                    if _copy_key(data, s, e, lower, keys, o):
                        m, invalid = _key_unicode(data, s, e, low, exp_offsets, expansions, flags, lower, keys, o)
                        if invalid and not replace:
                            cuda.atomic.min(counts, 4, i)
                            break
                    h = _xxh64(keys, o, m)
                    if buckets > 0:
                        out[i, k] = FIRST_INDEX + np.int64(h % np.uint64(buckets))
                    else:
                        w = slots[_find_slot(keys, o, m, h, slots, arena), 1]
                        if w != 0:
                            out[i, k] = np.int64(w >> np.uint64(32))
                        else:
                            out[i, k] = OOV
                            oov += 1
                    k += 1
            _pad_row(out, i, k, max_len, pad_left)
            tokens += t
            kept += k
            if t > max_len:
                truncated += 1
            if row_tokens.shape[0] > 0:
                row_tokens[i] = t
        if tokens > 0:  # kept, oov and truncated are 0 too otherwise
            cuda.atomic.add(counts, 0, tokens)
            cuda.atomic.add(counts, 1, kept)
            cuda.atomic.add(counts, 2, oov)
            cuda.atomic.add(counts, 3, truncated)

    return encode_rows


ENCODE_ROWS = {k: _make_encode_rows(k) for k in (DELIMITED, LIST, SCALAR, DELIMITED_SEQ)}


@cuda.jit(device=True)
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


@cuda.jit(cache=True)
def gather_rows(codes, valid, valid_off, dict_out, dict_tokens, out, counts):
    """Fill ``out`` from per-dictionary-entry rows: ``out[i] = dict_out[codes[i]]``."""
    max_len = out.shape[1]
    tokens = 0
    kept = 0
    oov = 0
    truncated = 0
    for i in range(cuda.grid(1), codes.shape[0], cuda.gridsize(1)):
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
                    oov += 1
        tokens += t
        kept += k
        if t > max_len:
            truncated += 1
    if tokens > 0:
        cuda.atomic.add(counts, 0, tokens)
        cuda.atomic.add(counts, 1, kept)
        cuda.atomic.add(counts, 2, oov)
        cuda.atomic.add(counts, 3, truncated)


# ================================================================ host side
def cuda_available() -> bool:
    """True when numba.cuda can run kernels: a CUDA GPU and driver, or the simulator."""
    return bool(cuda.is_available())


def unavailable_reason() -> str:
    """Why numba.cuda cannot run kernels here, in one line (for error and log messages)."""
    reason = cuda.cuda_error()
    if reason is None:
        from numba.cuda.cudadrv import nvvm

        reason = "no CUDA GPU is visible to this process" if nvvm.is_available() else "libNVVM is not installed"
    return " ".join(str(reason).split())


def _require_device() -> None:
    if cuda.is_available():
        return
    reason = unavailable_reason()
    raise RuntimeError(
        f"encoding on the GPU needs a CUDA device, and numba.cuda found none ({reason}). "
        "Install the NVIDIA driver (and numba-cuda) where the workers run, or set encode_device: cpu"
    )


# Lookup and Unicode tables are uploaded once per GPU and reused by every call.
# Keys are the host arrays' ids; an entry holds the host arrays themselves, so no
# id can be reused by a new array while its entry lives.
_TABLES: OrderedDict = OrderedDict()
_TABLES_LOCK = threading.Lock()
_TABLES_KEPT = 32


def device_tables(arrays: tuple) -> tuple:
    """Device copies of ``arrays`` (a lookup ``(slots, arena)`` or the Unicode tables).

    Uploaded on the first call for these host arrays and this GPU, then served from a
    small LRU cache. The host arrays must not change afterwards (vocabulary lookups
    and ``unicode.tables()`` are read-only).
    """
    _require_device()
    key = (cuda.current_context().device.uuid, *(id(a) for a in arrays))
    with _TABLES_LOCK:
        hit = _TABLES.get(key)
        if hit is not None:
            _TABLES.move_to_end(key)
            return hit[1]
    dev = tuple(cuda.to_device(np.ascontiguousarray(a)) for a in arrays)
    with _TABLES_LOCK:
        _TABLES[key] = (arrays, dev)
        while len(_TABLES) > _TABLES_KEPT:
            _TABLES.popitem(last=False)
    return dev


class _Workspace:
    """Per host thread: a stream and grow-only buffers reused across calls.

    Pinned host memory and device memory are slow to allocate (and allocation
    synchronizes the device), so one partition after another reuses them. Every
    call ends by synchronizing its stream, so no copy or kernel still uses them then.
    """

    def __init__(self):
        self.stream = None
        self.staging = None  # pinned host bytes: the inputs, packed
        self.inputs = None  # device bytes: the same, after one copy
        self.scratch = None  # device bytes: the encode kernel's keys
        self.counts = None  # pinned host int64[5]

    def setup(self):
        if self.stream is None:
            self.stream = cuda.stream()
            self.counts = cuda.pinned_array(5, np.int64)

    def upload(self, arrays):
        """Device views of the 1-D host ``arrays``, packed and copied in one transfer."""
        ends, pos = [], 0
        for a in arrays:
            pos = -(-pos // 8) * 8  # each view 8-byte aligned
            ends.append((pos, pos + a.nbytes))
            pos += a.nbytes
        total = max(pos, 8)
        if self.staging is None or self.staging.shape[0] < total:
            self.staging = cuda.pinned_array(total + total // 4, np.uint8)
            self.inputs = cuda.device_array(total + total // 4, np.uint8)
        for a, (lo, hi) in zip(arrays, ends):
            self.staging[lo:hi] = np.ascontiguousarray(a).view(np.uint8)
        self.inputs[:total].copy_to_device(self.staging[:total], stream=self.stream)
        return [self.inputs[lo:hi].view(a.dtype) for a, (lo, hi) in zip(arrays, ends)]

    def keys(self, nbytes):
        if self.scratch is None or self.scratch.shape[0] < nbytes:
            self.scratch = cuda.device_array(max(nbytes + nbytes // 4, 8), np.uint8)
        return self.scratch

    def finish(self, counts):
        host = self.counts[: counts.shape[0]]
        counts.copy_to_host(host, stream=self.stream)
        self.stream.synchronize()
        return host.copy()


# One workspace per host thread, in a plain dict rather than a threading.local, so
# that clear() (called at worker teardown, on another thread than the tasks ran on)
# can drop every thread's buffers.
_WORKSPACES: dict[int, _Workspace] = {}


def _workspace() -> _Workspace:
    _require_device()
    ws = _WORKSPACES.get(threading.get_ident())
    if ws is None:
        ws = _WORKSPACES.setdefault(threading.get_ident(), _Workspace())
    ws.setup()
    return ws


def _launch(kernel, n, ws, *args):
    if n > 0:  # a grid of 0 blocks is an error
        blocks = min(-(-n // THREADS_PER_BLOCK), MAX_BLOCKS)
        kernel[blocks, THREADS_PER_BLOCK, ws.stream](*args)


def _output(out, shape, ws):
    if out is None:
        return cuda.device_array(shape, np.int32, stream=ws.stream)
    if tuple(out.shape) != shape or out.dtype != np.int32:
        raise ValueError(f"out must be an int32 device array of shape {shape}; got {out.dtype} {tuple(out.shape)}")
    return out


def _key_offsets(kind, starts, stops, offsets):
    """Row ``i``'s keys fit in ``[key_off[i], key_off[i + 1])``: three times its bytes plus 8,
    as ``cpu._scratch_size`` allows for its longest row (``_key_unicode``'s bound)."""
    starts = starts.astype(np.int64)
    stops = stops.astype(np.int64)
    if kind == LIST:  # the row's child strings; indices of empty rows may point anywhere
        last = offsets.shape[0] - 1
        spans = offsets[np.minimum(stops, last)].astype(np.int64) - offsets[np.minimum(starts, last)]
        nbytes = np.where(stops > starts, spans, 0)
    else:
        nbytes = np.maximum(stops - starts, 0)
    key_off = np.zeros(starts.shape[0] + 1, dtype=np.int64)
    np.cumsum(3 * nbytes + 8, out=key_off[1:])
    return key_off


def encode_rows_cuda(
    starts, stops, row_valid, row_valid_off,
    offsets, data, valid, valid_off,
    spec, sep, buckets, lk, uni, *, out=None, row_tokens=None, bad=None,
):  # fmt: skip
    """``cpu.ENCODE_ROWS[spec[0]]`` on the GPU.

    Parameters
    ----------
    starts ... uni
        The CPU kernel's arguments, numpy arrays and scalars (see ``dscore.kernels.cpu``).
    out : numba device array, optional
        int32 ``(rows, max_len)`` to write into (e.g. a slice of a whole partition's
        output; wrap a torch tensor with ``numba.cuda.as_cuda_array``); allocated
        when not given.
    row_tokens : numba device array, optional
        int64 ``(rows,)`` that receives each row's token count, as ``gather_rows_cuda``
        needs for a dictionary's entries.
    bad : numpy array, optional
        int64 ``(1,)``: receives the first row holding invalid UTF-8 (the CPU kernel's
        ``bad``) when ``spec`` does not replace it; left as it is otherwise.

    Returns
    -------
    (out, counts)
        ``out`` the device array, ``counts`` a host int64 ``[tokens, kept, oov,
        truncated_rows]`` for these rows.

    Raises
    ------
    RuntimeError
        No CUDA device is usable.
    """
    ws = _workspace()
    kind, max_len, tail, pad_left, lower, strip, replace = (int(x) for x in spec)
    n = starts.shape[0]
    out = _output(out, (n, max_len), ws)
    key_off = _key_offsets(kind, starts, stops, offsets)
    end = int(offsets[-1]) if offsets.shape[0] else 0
    # data may be a whole shared buffer of which offsets use a prefix (sliced arrays)
    d_starts, d_stops, d_row_valid, d_offsets, d_data, d_valid, d_sep, d_key_off, d_counts = ws.upload(
        [starts, stops, row_valid, offsets, data[:end], valid, sep, key_off, np.array([0, 0, 0, 0, n], np.int64)]
    )
    slots, arena = device_tables(lk)
    low, exp_offsets, expansions, flags = device_tables(uni)
    if row_tokens is None:
        row_tokens = cuda.device_array(0, np.int64)  # empty: no allocation
    args = (
        d_starts, d_stops, d_row_valid, int(row_valid_off), d_offsets, d_data, d_valid, int(valid_off),
        max_len, tail, pad_left, lower, strip, replace, d_sep, int(buckets),
        slots, arena, low, exp_offsets, expansions, flags,
        ws.keys(int(key_off[-1])), d_key_off, out, row_tokens, d_counts,
    )  # fmt: skip
    _launch(ENCODE_ROWS[kind], n, ws, *args)
    counts = ws.finish(d_counts)
    if bad is not None and counts[4] < n:
        bad[0] = counts[4]
    return out, counts[:4]


def gather_rows_cuda(codes, valid, valid_off, dict_out, dict_tokens, *, out=None):
    """``cpu.gather_rows`` on the GPU: ``out[i] = dict_out[codes[i]]``, with counts.

    ``codes``, ``valid`` are host numpy arrays (a dictionary column's indices and
    validity); ``dict_out`` and ``dict_tokens`` are device arrays, as
    ``encode_rows_cuda(..., row_tokens=...)`` leaves them for the dictionary.
    Returns ``(out, counts)`` as ``encode_rows_cuda`` does.
    """
    ws = _workspace()
    n = codes.shape[0]
    out = _output(out, (n, dict_out.shape[1]), ws)
    d_codes, d_valid, d_counts = ws.upload([codes, valid, np.zeros(4, np.int64)])
    _launch(gather_rows, n, ws, d_codes, d_valid, int(valid_off), dict_out, dict_tokens, out, d_counts)
    return out, ws.finish(d_counts)


def clear() -> None:
    """Drop the cached device tables and every thread's buffers and stream (e.g. at
    worker teardown); a call in flight keeps its own until it returns."""
    with _TABLES_LOCK:
        _TABLES.clear()
    _WORKSPACES.clear()
    if cuda.is_available():
        # numba frees device memory in batches; hand what was just dropped back now
        try:
            cuda.current_context().deallocations.clear()
        except AttributeError:  # the simulator keeps no such list
            pass


__all__ = [
    "ENCODE_ROWS",
    "clear",
    "cuda_available",
    "device_tables",
    "encode_rows_cuda",
    "gather_rows",
    "gather_rows_cuda",
    "unavailable_reason",
]
