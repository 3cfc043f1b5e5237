"""XXH64 and the exact lookup table, as the kernels compute them: plain Python.

Compiled for each target together with the rest of the token walk
(``dscore.kernels.walk.compile_for``, whose docstring says how); callable as they
are in Python too. ``u`` is the index cast every hot load goes through: on the CPU
unsigned (``index_unsigned``): numba wraps negative signed indices around, which
costs a compare and cmov per byte and stops LLVM from merging eight byte loads into
one 64-bit load (measured: 2x on the encode kernel); on CUDA, where mixing uint64
and int64 would promote to float, unchanged (``index_same``, the default here).
"""

from __future__ import annotations

import numpy as np

# The index space: 0 pads, 1 is out of vocabulary, the vocabulary starts at 2.
PAD = 0
OOV = 1
FIRST_INDEX = 2

# The documented token hash (dscore.hash_token): XXH64 with seed 0 over the
# normalized token's UTF-8 bytes. All arithmetic is uint64 so it wraps.
P1 = np.uint64(11400714785074694791)
P2 = np.uint64(14029467366897019727)
P3 = np.uint64(1609587929392839161)
P4 = np.uint64(9650029242287828579)
P5 = np.uint64(2870177450012600261)
ZERO = np.uint64(0)


def index_unsigned(i):
    return np.uint64(i)


def index_same(i):
    return i


u = index_same


# ---------------------------------------------------------------- xxHash64
def rotl(x, r):
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


def read64(b, p):
    q = u(p)
    return (
        np.uint64(b[q])
        | (np.uint64(b[q + u(1)]) << np.uint64(8))
        | (np.uint64(b[q + u(2)]) << np.uint64(16))
        | (np.uint64(b[q + u(3)]) << np.uint64(24))
        | (np.uint64(b[q + u(4)]) << np.uint64(32))
        | (np.uint64(b[q + u(5)]) << np.uint64(40))
        | (np.uint64(b[q + u(6)]) << np.uint64(48))
        | (np.uint64(b[q + u(7)]) << np.uint64(56))
    )


def read32(b, p):
    q = u(p)
    x = np.uint64(0)
    for c in range(4):
        x |= np.uint64(b[q + u(c)]) << np.uint64(8 * c)
    return x


def xxround(acc, lane):
    acc = acc + lane * P2
    acc = rotl(acc, 31)
    return acc * P1


def xxmerge(acc, v):
    acc = acc ^ xxround(ZERO, v)
    return acc * P1 + P4


def xxh64(buf, start, length):
    """XXH64 (seed 0) of ``buf[start:start + length]`` as uint64."""
    p = start
    end = start + length
    if length >= 32:
        v1 = P1 + P2
        v2 = P2
        v3 = ZERO
        v4 = ZERO - P1
        while p + 32 <= end:
            v1 = xxround(v1, read64(buf, p))
            v2 = xxround(v2, read64(buf, p + 8))
            v3 = xxround(v3, read64(buf, p + 16))
            v4 = xxround(v4, read64(buf, p + 24))
            p += 32
        h = rotl(v1, 1) + rotl(v2, 7) + rotl(v3, 12) + rotl(v4, 18)
        h = xxmerge(h, v1)
        h = xxmerge(h, v2)
        h = xxmerge(h, v3)
        h = xxmerge(h, v4)
    else:
        h = P5
    h = h + np.uint64(length)
    while p + 8 <= end:
        h = h ^ xxround(ZERO, read64(buf, p))
        h = rotl(h, 27) * P1 + P4
        p += 8
    if p + 4 <= end:
        h = h ^ (read32(buf, p) * P1)
        h = rotl(h, 23) * P2 + P3
        p += 4
    while p < end:
        h = h ^ (np.uint64(buf[u(p)]) * P5)
        h = rotl(h, 11) * P1
        p += 1
    h = h ^ (h >> np.uint64(33))
    h = h * P2
    h = h ^ (h >> np.uint64(29))
    h = h * P3
    h = h ^ (h >> np.uint64(32))
    return h


# ---------------------------------------------------------------- exact lookup table
# Linear probing over 16-byte slots ``(hash, index << 32 | arena offset)``; the
# arena holds each token as a 4-byte little-endian length and its bytes, in table
# order. A hit touches one slot and one arena line, and fitted tables are in
# descending frequency, so the arena of the frequent tokens stays in cache.
# (Slots pointing at separate offsets/bytes/values arrays cost four misses per
# cold token and ran at a third of the speed.)
def find_slot(key, koff, n, h, slots, arena):
    """Slot holding ``key[koff:koff + n]`` (hash ``h``) or the empty slot where it would go."""
    mask = np.uint64(slots.shape[0] - 1)
    j = h & mask
    while True:
        w = slots[j, 1]
        if w == 0:
            break
        if slots[j, 0] == h:
            a = np.int64(w & np.uint64(0xFFFFFFFF))
            length = np.int64(read32(arena, a))
            if length == n:
                same = True
                if n >= 8:  # by words, the last one overlapping the one before it
                    c = 0
                    while c + 8 < n:
                        if read64(arena, a + 4 + c) != read64(key, koff + c):
                            same = False
                            break
                        c += 8
                    same = same and read64(arena, a + 4 + n - 8) == read64(key, koff + n - 8)
                else:
                    for c in range(n):
                        if arena[u(a + 4 + c)] != key[u(koff + c)]:
                            same = False
                            break
                if same:
                    break
        j = (j + np.uint64(1)) & mask
    return j


def index_of(keys, o, m, h, buckets, slots, arena):
    """The index of the key ``keys[o:o + m]`` (hash ``h``): hashed into ``buckets``, else
    looked up in the table ``(slots, arena)`` (OOV when absent)."""
    if buckets > 0:
        return FIRST_INDEX + np.int64(h % np.uint64(buckets))
    w = slots[find_slot(keys, o, m, h, slots, arena), 1]
    if w != 0:
        return np.int64(w >> np.uint64(32))
    return OOV
