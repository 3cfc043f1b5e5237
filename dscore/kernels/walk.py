"""The token walk, written once for the CPU and the CUDA kernels: a row's tokens to indices.

This module (rows: split, strip, count, truncate, emit, pad), ``table`` (XXH64, the
lookup table) and ``text`` (UTF-8, strip, lower, keys) are plain Python over numpy
arrays and scalars (no decorator, no numba import), whose functions call each other
by their global names. ``compile_for`` makes one module of them for a target: a
copy of each function whose globals are that module's, compiled by the target's
compiler, so that the calls between them resolve to the same target's compiled
versions. ``cpu.py`` and ``cuda.py`` hold only their kernels (the loops over rows)
and call what is here as ``w.name``.

Where the targets must differ, each variant is a small leaf and the target chooses:
``u`` (the index cast, see ``table``), ``copy_key`` and ``find_byte`` (eight bytes
at a time on the CPU, bytes on CUDA), ``emit`` (the CPU notes a row's keys to look
them up in a pass of their own; a CUDA thread looks each up at once) and
``prefetch``. The modules' defaults are the CUDA choices, so the plain functions
also run as they are (slowly) in Python.

Conventions (the kernels' arguments, see ``dscore.kernel_args``):

* A string array arrives as ``offsets`` (int32 or int64, absolute positions in
  ``data``), ``data`` (uint8) and a validity bitmap ``valid`` with its bit offset;
  an empty ``valid`` means "no nulls". Row ``i`` is ``starts[i]:stops[i]``: child
  strings for LIST, the bytes of the cell for the other kinds.
* ``uni`` is ``dscore.kernels.unicode.tables()``: ``(lower, exp_offsets,
  expansions, flags)``.
* Invalid UTF-8 reads as U+FFFD per maximal subpart, as Python's
  ``bytes.decode("utf-8", "replace")``; without ``replace`` a row holding it is
  reported, never encoded.

Hot-path leaves (all but ``_CALLS``) are inlined into their callers on the CPU and
call nothing compiled out of line: an inlined helper that does call out holds
references to its array arguments across the call, and numba then increfs and
decrefs every array on every token (atomics: 3-4x slower overall, measured). The
rare non-ASCII paths and the walk of a row are therefore out-of-line functions.
"""

from __future__ import annotations

import hashlib
import sys
import types
from pathlib import Path

import numpy as np

from . import table, text
from .table import OOV, PAD, index_of, read64, u, xxh64
from .text import (
    HIGHS,
    copy_key,
    is_ascii,
    key_unicode,
    non_ascii_ends,
    strip_ascii,
    strip_unicode,
    utf8_invalid,
)

DELIMITED = 0  # separated by one byte
LIST = 1
SCALAR = 2
DELIMITED_SEQ = 3  # separated by a multi-byte sequence
KINDS = (DELIMITED, LIST, SCALAR, DELIMITED_SEQ)

ONES = np.uint64(0x0101010101010101)


def prefetch_none(arr, idx):
    return None


# ---------------------------------------------------------------- keys to indices
def emit_store(sink, k, keys, o, m, h):
    """The CPU's ``emit``: note the row's ``k``-th key for ``lookup_keys``; 0 (no OOV yet).

    ``sink`` is ``(key_start, key_len, hashes, slots, buckets)``. The probe comes
    after the row's last key: the key's home slot starts loading now.
    """
    key_start, key_len, hashes, slots, buckets = sink
    key_start[u(k)] = o
    key_len[u(k)] = m
    hashes[u(k)] = h
    if buckets == 0:
        prefetch(slots, np.int64((h & np.uint64(slots.shape[0] - 1)) * np.uint64(2)))
    return 0


def emit_lookup(sink, k, keys, o, m, h):
    """CUDA's ``emit``: write the index of the row's ``k``-th key at once; 1 when it is OOV.

    ``sink`` is ``(out, row, slots, arena, buckets)``. A GPU hides the probe's
    latency with other warps, so there is no second pass to prefetch for.
    """
    out, row, slots, arena, buckets = sink
    x = index_of(keys, o, m, h, buckets, slots, arena)
    out[row, k] = x
    return 1 if x == OOV else 0


def lookup_keys(out, row, k, keys, sink, arena):
    """The CPU's second pass over a row's ``k`` keys noted by ``emit_store``: write their
    indices to ``out[row]``; return how many are OOV.

    Looking the keys up in a pass of their own, their slots prefetched when hashed,
    is 1.3x faster on a 200k vocabulary than probing each key as soon as it is
    hashed, which waits on a cache miss per rare token (measured).
    """
    key_start, key_len, hashes, slots, buckets = sink
    if buckets == 0:
        # The home slots are in cache by now: start loading the tokens they point
        # at, so that the compares below wait on fewer arena misses.
        mask = np.uint64(slots.shape[0] - 1)
        for c in range(u(k)):
            j = hashes[c] & mask
            if slots[j, 0] == hashes[c]:
                prefetch(arena, np.int64(slots[j, 1] & np.uint64(0xFFFFFFFF)))
    oov = 0
    for c in range(u(k)):
        x = index_of(keys, key_start[c], key_len[c], hashes[c], buckets, slots, arena)
        out[row, c] = x
        oov += x == OOV
    return oov


# ---------------------------------------------------------------- rows of tokens
# One iteration scheme serves every kind. For LIST, row i is the child strings
# ``starts[i]:stops[i]`` (``offsets``/``data``/``valid`` describe the child); for
# DELIMITED and SCALAR, row i is the cell ``data[starts[i]:stops[i]]``. Start/stop
# pairs cover list, list-view and fixed-size-list layouts, and plain string
# columns pass ``offsets[:-1], offsets[1:]`` without a copy.
def is_valid(valid, valid_off, i):
    if valid.shape[0] == 0:
        return True
    k = valid_off + i
    return (valid[k >> 3] >> (k & 7)) & 1 == 1


def find_byte_words(data, p, e, c):
    """First position of byte ``c`` in ``data[p:e]``, or ``e``.

    Eight bytes at a time: a word's bytes equal to ``c`` become zero bytes, and
    ``(x - 0x01..) & ~x & 0x80..`` is non-zero exactly when one is.
    """
    pattern = np.uint64(c) * ONES
    while p + 8 <= e:
        x = read64(data, p) ^ pattern
        if ((x - ONES) & ~x & HIGHS) != 0:
            break
        p += 8
    while p < e:
        if data[u(p)] == c:
            return p
        p += 1
    return e


def find_byte_bytes(data, p, e, c):
    """``find_byte_words`` a byte at a time."""
    while p < e:
        if data[p] == c:
            return p
        p += 1
    return e


def find_seq(data, p, e, sep):
    """First position of the byte string ``sep`` in ``data[p:e]``, or ``e``."""
    m = sep.shape[0]
    while p + m <= e:
        same = True
        for i in range(m):
            if data[u(p + i)] != sep[i]:
                same = False
                break
        if same:
            return p
        p += 1
    return e


def more(kind, p, e0):
    """Whether the cursor ``p`` of a row ending at ``e0`` has a token left: a list
    element, or (the other kinds) a place in the cell where one starts, ``e0`` itself
    included (an empty cell or a trailing separator leaves an empty token)."""
    if kind == LIST:
        return p < e0
    return p <= e0


def next_span(kind, p, e0, offsets, data, valid, valid_off, sep, strip):
    """``(s, e, cursor after)`` of the token at the cursor ``p``, ASCII white space
    stripped if ``strip``; ``s == e`` for a null or empty one.

    The one-byte separator search must stay a loop of its own: with the general
    search in the same inlined body, the token loop measured 2x slower. ``kind`` is
    a compile-time constant wherever this is inlined, so the other kinds' branches
    vanish (measured: up to 1.5x).
    """
    if kind == LIST:
        if not is_valid(valid, valid_off, p):
            return 0, 0, p + 1
        s = offsets[p]
        e = offsets[p + 1]
        p += 1
    else:
        s = p
        if kind == DELIMITED:
            e = find_byte(data, p, e0, sep[0])
        elif kind == DELIMITED_SEQ:
            e = find_seq(data, p, e0, sep)
        else:
            e = e0
        p = e + sep.shape[0]  # past e0 after the last token
    if strip:
        s, e = strip_ascii(data, s, e)
    return s, e, p


def count_tokens(kind, p, e0, offsets, data, valid, valid_off, sep, strip, flags):
    """Non-empty tokens of the row ``p:e0`` (tail truncation must know how many to skip)."""
    t = 0
    while more(kind, p, e0):
        s, e, p = next_span(kind, p, e0, offsets, data, valid, valid_off, sep, strip)
        if strip and non_ascii_ends(data, s, e):
            s, e = strip_unicode(data, s, e, flags)
        t += s < e
    return t


def walk_row(kind, p, e0, rule, offsets, data, valid, valid_off, sep, uni, keys, o, sink):
    """Normalize, key and hash the tokens of the row ``p:e0``, handing each kept key to
    ``emit``; the keys are built one after another from ``keys[o]`` on.

    ``rule`` is ``(max_len, tail, lower, strip, replace)``: the first ``max_len``
    non-empty tokens are kept, or the last with ``tail``. Returns ``(kept, tokens,
    oov, invalid)``: ``oov`` is what ``emit`` counted; ``invalid`` that the row holds
    invalid UTF-8 and ``replace`` is off (the walk stops there). A dropped token must
    be valid UTF-8 too, as Arrow's validation demands.
    """
    max_len, tail, lower, strip, replace = rule
    flags = uni[3]
    skip = 0
    if tail:
        skip = count_tokens(kind, p, e0, offsets, data, valid, valid_off, sep, strip, flags) - max_len
    k = 0
    t = 0
    oov = 0
    while more(kind, p, e0):
        s, e, p = next_span(kind, p, e0, offsets, data, valid, valid_off, sep, strip)
        if strip and non_ascii_ends(data, s, e):
            s, e = strip_unicode(data, s, e, flags)
        if s >= e:
            continue
        t += 1
        if t <= skip or k >= max_len:
            if not replace and not is_ascii(data, s, e) and utf8_invalid(data, s, e):
                return k, t, oov, True
            continue
        m = e - s
        if copy_key(data, s, e, lower, keys, o):
            m, invalid = key_unicode(data, s, e, uni, lower, keys, o)
            if invalid and not replace:
                return k, t, oov, True
        oov += emit(sink, k, keys, o, m, xxh64(keys, o, m))
        o += m
        k += 1
    return k, t, oov, False


def scratch_size(kind, starts, stops, offsets):
    """Bytes that the keys of the longest row can need (``key_unicode``: at most 3 per input byte)."""
    longest = 0
    for i in range(starts.shape[0]):
        if kind == LIST:
            longest = max(longest, offsets[stops[i]] - offsets[starts[i]] if stops[i] > starts[i] else 0)
        else:
            longest = max(longest, stops[i] - starts[i])
    return 3 * longest + 8


def pad_row(out, i, k, max_len, pad_left):
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


def gather_row(i, codes, valid, valid_off, dict_out, dict_tokens, out):
    """``out[i] = dict_out[codes[i]]`` (PAD for a null row); returns the row's ``(tokens, kept, oov)``."""
    max_len = out.shape[1]
    if not is_valid(valid, valid_off, i):
        for m in range(max_len):
            out[i, m] = PAD
        return 0, 0, 0
    c = codes[i]
    k = 0
    oov = 0
    for m in range(max_len):
        v = dict_out[c, m]
        out[i, m] = v
        k += v != PAD
        oov += v == OOV
    return dict_tokens[c], k, oov


def add_row(counts, max_len, tokens, kept, oov):
    """Add a row to ``counts``: ``[tokens, kept, oov, truncated rows]``."""
    counts[0] += tokens
    counts[1] += kept
    counts[2] += oov
    counts[3] += tokens > max_len


# ---------------------------------------------------------------- targets
find_byte = find_byte_bytes
emit = emit_lookup
prefetch = prefetch_none

_SOURCES = (table, text, sys.modules[__name__])
# Out of line on the CPU: the rare paths, and the walk of a row (it calls them).
_CALLS = frozenset(
    {"decode", "decode_before", "put", "strip_unicode", "final_sigma", "key_unicode", "utf8_invalid",
     "count_tokens", "walk_row", "scratch_size"}
)  # fmt: skip

# numba's cache checks only the file that defines a cached kernel, not the files of
# the functions it inlines: the kernels keep this fingerprint of the walk's files in
# their closures, which numba's cache key includes, so that an edit here recompiles them.
SOURCE = int.from_bytes(
    hashlib.sha256(b"".join(Path(m.__file__).read_bytes() for m in _SOURCES)).digest()[:8], "little"
)


def compile_for(target: str, leaf, call, **chosen) -> types.ModuleType:
    """The walk's functions (this module's, ``table``'s and ``text``'s) compiled for one
    target, as the module ``dscore.kernels.walk.<target>``.

    ``leaf`` compiles the hot-path leaves (e.g. ``numba.njit(inline="always")``),
    ``call`` the out-of-line functions (``_CALLS``); on CUDA both are
    ``cuda.jit(device=True)``. ``chosen`` maps a target leaf's name (``u``,
    ``copy_key``, ``find_byte``, ``emit``, ``prefetch``) to the variant this target
    uses: a function of these modules, or one compiled already (``prefetch``'s
    intrinsic).
    """
    mod = types.ModuleType(f"{__name__}.{target}", f"``{__name__}`` compiled for {target}")
    mod.__file__ = __file__
    ns = mod.__dict__
    own = {}
    for source in _SOURCES:
        for k, v in vars(source).items():
            if isinstance(v, types.FunctionType) and v.__module__ == source.__name__:
                own[k] = v  # a function of the walk, or a target leaf's default (``u = index_same``)
            elif not k.startswith("__"):
                ns.setdefault(k, v)  # constants (and names imported, compiled below)
    del own["compile_for"]
    for name, f in own.items():
        f = chosen.get(name, f)
        if not isinstance(f, types.FunctionType):  # compiled already
            ns[name] = f
            continue
        copy = types.FunctionType(f.__code__, ns, name, f.__defaults__, f.__closure__)
        ns[name] = (call if name in _CALLS else leaf)(copy)
    sys.modules[mod.__name__] = mod
    return mod
