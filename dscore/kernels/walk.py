"""The token walk, written once for the CPU and the CUDA kernels: a row's tokens to indices.

This module (rows: split, strip, truncate, look up, pad), ``table`` (XXH64, the
lookup table) and ``text`` (UTF-8, strip, lower, keys) are plain Python over numpy
arrays and scalars (no decorator, no numba import), whose functions call each other
by their global names. ``compile_for`` makes one module of them for a target: a
copy of each function whose globals are that module's, compiled by the target's
compiler, so that the calls between them resolve to the same target's compiled
versions. ``cpu.py`` and ``cuda.py`` hold only their kernels' entry points, which
call ``w.encode_rows`` (the encode loop of both targets) and the leaves here.

Where the targets must differ, each variant is a small leaf and the target chooses:
``u`` (the index cast, see ``table``), ``copy_key`` and ``find_byte`` (eight bytes
at a time on the CPU, bytes on CUDA) and ``prefetch``; ``LOOKUP_AT_ONCE`` says
whether a key is looked up as soon as it is hashed (CUDA) or a row's keys in a pass
of their own (CPU). The modules' defaults are the CUDA choices, so the plain functions
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
rare non-ASCII paths are therefore out-of-line functions, called from
``encode_rows``, which is itself called once per kernel (per row, it measured up
to 6x slower on one-token rows). Even a small leaf can cost: the token loop is
spelled out in ``encode_rows`` because the same loop through a cursor helper, or
its edge test through a one-line helper, measured 1.3-1.5x slower.
"""

from __future__ import annotations

import hashlib
import sys
import types
from pathlib import Path

import numpy as np

from . import table, text
from .table import FIRST_INDEX, OOV, PAD, find_slot, index_of, read64, u, xxh64
from .text import (
    HIGHS,
    copy_key,
    is_ascii,
    key_unicode,
    strip_ascii,
    strip_unicode,
    utf8_invalid,
)

DELIMITED = 0  # separated by one byte
LIST = 1
SCALAR = 2
DELIMITED_SEQ = 3  # separated by a multi-byte sequence
KINDS = (DELIMITED, LIST, SCALAR, DELIMITED_SEQ)
# The kind of the rows the walk reads: a constant of each compiled module
# (``compile_for``), so that the other kinds' branches vanish from the token loop
# (measured: up to 1.5x; a ``kind`` argument, even a literal one, measured 2x slower).
KIND = DELIMITED
# Whether the walk writes jagged rows (``encode_rows``): a module constant for the
# same reason, so that the padded kernels compile exactly as before (CPU only).
JAGGED = False

ONES = np.uint64(0x0101010101010101)


def prefetch_none(arr, idx):
    return None


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


def encode_rows(
    first, stop, step, starts, stops, row_valid, row_valid_off, offsets, data, valid, valid_off,
    rule, sep, buckets, slots, arena, uni, keys, key_off, out, row_tokens, key_start, key_len, hashes,
):  # fmt: skip
    """Encode rows ``first, first + step, ...`` (below ``stop``) into ``out``: the body of
    both targets' encode kernels, called once per kernel (CPU) or thread (CUDA), so
    that the token loop is compiled into the loop over rows with the kernel's own arrays.

    ``rule`` is ``(max_len, tail, pad_left, lower, strip, replace, lookup)``: the first
    ``max_len`` non-empty tokens are kept, or the last with ``tail``. Each kept key is
    looked up at once on CUDA (``LOOKUP_AT_ONCE``); on the CPU it is noted in
    ``key_start``, ``key_len``, ``hashes``, and, with ``lookup``, the row's keys are
    looked up after its last; without, every row's keys stay noted there, one row's
    after another's, for the caller to read. Row
    ``i`` builds its keys from ``keys[key_off[i]]`` on (from ``keys[0]`` when
    ``key_off`` is empty: one scratch reused by every row). ``out`` is padded to its
    width; ``row_tokens``, when non-empty, receives each row's token count.

    Jagged (``JAGGED``, CPU only): ``out`` is ``(1, capacity)`` and row ``i``'s kept
    indices are written one row after another from ``out[0, row_tokens[first]]``,
    without padding; ``row_tokens`` receives the offsets instead of the counts
    (``row_tokens[i + 1]`` is where row ``i`` ends). No scratch matrix and no second
    pass: the CPU's lookup pass writes each index where it belongs.

    Returns ``(bad, tokens, kept, oov, truncated_rows)``: ``bad`` is the first row
    holding invalid UTF-8 when ``replace`` is off (the rows stop there; a dropped
    token must be valid UTF-8 too, as Arrow's validation demands), else -1.
    """
    max_len, tail, pad_left, lower, strip, replace, lookup = rule
    flags = uni[3]
    c0 = sep[0]
    nsep = sep.shape[0]
    mask = np.uint64(slots.shape[0] - 1)
    base = 0  # where the row's keys are noted: 0, or after the rows before when not ``lookup``
    pos = row_tokens[first] if JAGGED else 0  # JAGGED: where the next row's indices go in out[0]
    tokens = 0
    kept = 0
    oov = 0
    truncated = 0
    for i in range(first, stop, step):
        k = 0
        t = 0
        if is_valid(row_valid, row_valid_off, i):
            # With ``tail`` a first pass counts the row's tokens: the last ``max_len`` are kept.
            counting = tail
            skip = 0
            while True:
                o = key_off[i] if key_off.shape[0] > 0 else 0
                p = starts[i]
                e0 = stops[i]
                j = p
                done = False
                t = 0
                while True:
                    if KIND == LIST:
                        if j >= e0:
                            break
                        ok = is_valid(valid, valid_off, j)
                        s = offsets[j]
                        e = offsets[j + 1]
                        j += 1
                        if not ok:
                            continue
                    else:
                        if done:
                            break
                        s = p
                        # The one-byte search must stay a loop of its own: with the general
                        # search in the same body, the token loop measured 2x slower.
                        if KIND == DELIMITED:
                            e = find_byte(data, p, e0, c0)
                        elif KIND == DELIMITED_SEQ:
                            e = find_seq(data, p, e0, sep)
                        else:
                            e = e0
                        if e >= e0:
                            done = True
                        else:
                            p = e + nsep
                    if strip:
                        # (spelled out: through a helper, the token loop measured 1.5x slower)
                        s, e = strip_ascii(data, s, e)
                        if s < e and (data[u(s)] >= 0x80 or data[u(e - 1)] >= 0x80):
                            s, e = strip_unicode(data, s, e, flags)
                    if s >= e:
                        continue
                    t += 1
                    if counting:
                        continue
                    if t <= skip or k >= max_len:
                        if not replace and not is_ascii(data, s, e) and utf8_invalid(data, s, e):
                            return i, tokens, kept, oov, truncated
                        continue
                    m = e - s
                    if copy_key(data, s, e, lower, keys, o):
                        m, invalid = key_unicode(data, s, e, uni, lower, keys, o)
                        if invalid and not replace:
                            return i, tokens, kept, oov, truncated
                    h = xxh64(keys, o, m)
                    if LOOKUP_AT_ONCE:  # a GPU hides the probe's latency with other warps
                        x = index_of(keys, o, m, h, buckets, slots, arena)
                        out[i, k] = x
                        oov += x == OOV
                    else:  # look the row's keys up after its last: start loading each key's home slot
                        key_start[u(base + k)] = o
                        key_len[u(base + k)] = m
                        hashes[u(base + k)] = h
                        if buckets == 0:
                            prefetch(slots, np.int64((h & mask) * np.uint64(2)))
                    o += m
                    k += 1
                if not counting:
                    break
                counting = 0
                skip = t - max_len
            if LOOKUP_AT_ONCE or not lookup:
                pass
            elif buckets > 0:
                row = u(i)
                for c in range(u(k)):
                    if JAGGED:
                        out[0, u(pos + c)] = FIRST_INDEX + np.int64(hashes[c] % np.uint64(buckets))
                    else:
                        out[row, c] = FIRST_INDEX + np.int64(hashes[c] % np.uint64(buckets))
            else:
                # A pass of its own, the slots prefetched when hashed: probing each key
                # as soon as it is hashed waits on a cache miss per rare token (1.3x
                # slower on a 200k vocabulary, measured). The home slots are in cache by
                # now: start loading the tokens they point at, so that the compares
                # below wait on fewer arena misses.
                row = u(i)
                for c in range(u(k)):
                    home = hashes[c] & mask
                    if slots[home, 0] == hashes[c]:
                        prefetch(arena, np.int64(slots[home, 1] & np.uint64(0xFFFFFFFF)))
                for c in range(u(k)):
                    w = slots[find_slot(keys, key_start[c], key_len[c], hashes[c], slots, arena), 1]
                    # (the padded stores spelled as before: its machine code stays the same)
                    if w != 0:
                        if JAGGED:
                            out[0, u(pos + c)] = np.int64(w >> np.uint64(32))
                        else:
                            out[row, c] = np.int64(w >> np.uint64(32))
                    else:
                        if JAGGED:
                            out[0, u(pos + c)] = OOV
                        else:
                            out[row, c] = OOV
                        oov += 1
        if JAGGED:
            pos += k
            row_tokens[i + 1] = pos
        else:
            pad_row(out, u(i), k, out.shape[1], pad_left)
        tokens += t
        kept += k
        truncated += t > max_len
        if not JAGGED and row_tokens.shape[0] > 0:
            row_tokens[i] = t
        if not lookup:
            base += k
    return -1, tokens, kept, oov, truncated


def scratch_size(starts, stops, offsets):
    """Bytes that the keys of the longest row can need (``key_unicode``: at most 3 per input byte)."""
    longest = 0
    for i in range(starts.shape[0]):
        if KIND == LIST:
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
prefetch = prefetch_none
# On a GPU each key is looked up as soon as it is hashed; the CPU looks a row's keys
# up in a pass of their own, prefetched (see encode_rows). A module constant, so
# the other target's branch vanishes.
LOOKUP_AT_ONCE = True

_SOURCES = (table, text, sys.modules[__name__])
# Out of line on the CPU: the rare paths, and the kernels' bodies (they call them).
_CALLS = frozenset(
    {"decode", "decode_before", "put", "strip_unicode", "final_sigma", "key_unicode", "utf8_invalid",
     "encode_rows", "scratch_size"}
)  # fmt: skip

# numba's cache checks only the file that defines a cached kernel, not the files of
# the functions it inlines: the kernels keep this fingerprint of the walk's files in
# their closures, which numba's cache key includes, so that an edit here recompiles them.
SOURCE = int.from_bytes(
    hashlib.sha256(b"".join(Path(m.__file__).read_bytes() for m in _SOURCES)).digest()[:8], "little"
)


def compile_for(
    target: str, kind: int, leaf, call, lookup_at_once: bool, jagged: bool = False, **chosen
) -> types.ModuleType:
    """The walk's functions (this module's, ``table``'s and ``text``'s) compiled for one
    target and rows of one ``kind``, as the module ``dscore.kernels.walk.<target><kind>``
    (``<target>jagged<kind>`` with ``jagged``: ``JAGGED`` on, see ``encode_rows``).

    ``leaf`` compiles the hot-path leaves (e.g. ``numba.njit(inline="always")``),
    ``call`` the out-of-line functions (``_CALLS``); on CUDA both are
    ``cuda.jit(device=True)``. ``chosen`` maps a target leaf's name (``u``,
    ``copy_key``, ``find_byte``, ``prefetch``) to the variant this target
    uses: a function of these modules, or one compiled already (``prefetch``'s
    intrinsic).
    """
    suffix = f"{target}{'jagged' if jagged else ''}{kind}"
    mod = types.ModuleType(f"{__name__}.{suffix}", f"``{__name__}`` compiled for {target}, kind {kind}")
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
    ns["KIND"] = kind
    ns["LOOKUP_AT_ONCE"] = lookup_at_once
    ns["JAGGED"] = jagged
    for name, f in own.items():
        f = chosen.get(name, f)
        if not isinstance(f, types.FunctionType):  # compiled already
            ns[name] = f
            continue
        copy = types.FunctionType(f.__code__, ns, name, f.__defaults__, f.__closure__)
        ns[name] = (call if name in _CALLS else leaf)(copy)
    sys.modules[mod.__name__] = mod
    return mod
