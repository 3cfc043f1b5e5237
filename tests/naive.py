"""Plain-Python twins of the kernels: slow, obvious, and the definition of correct."""

from __future__ import annotations

import numpy as np

PAD, OOV, FIRST = 0, 1, 2
_M = (1 << 64) - 1
P1, P2, P3, P4, P5 = (
    11400714785074694791,
    14029467366897019727,
    1609587929392839161,
    9650029242287828579,
    2870177450012600261,
)


def _rotl(x, r):
    return ((x << r) | (x >> (64 - r))) & _M


def _round(acc, lane):
    return (_rotl((acc + lane * P2) & _M, 31) * P1) & _M


def xxh64(data: bytes) -> int:
    """XXH64, seed 0, straight from the specification."""
    n, p = len(data), 0
    word = lambda i, k: int.from_bytes(data[i : i + k], "little")
    if n >= 32:
        v = [(P1 + P2) & _M, P2, 0, (-P1) & _M]
        while p + 32 <= n:
            v = [_round(v[i], word(p + 8 * i, 8)) for i in range(4)]
            p += 32
        h = (_rotl(v[0], 1) + _rotl(v[1], 7) + _rotl(v[2], 12) + _rotl(v[3], 18)) & _M
        for x in v:
            h = ((h ^ _round(0, x)) * P1 + P4) & _M
    else:
        h = P5
    h = (h + n) & _M
    while p + 8 <= n:
        h = (_rotl(h ^ _round(0, word(p, 8)), 27) * P1 + P4) & _M
        p += 8
    if p + 4 <= n:
        h = (_rotl(h ^ ((word(p, 4) * P1) & _M), 23) * P2 + P3) & _M
        p += 4
    while p < n:
        h = (_rotl(h ^ ((data[p] * P5) & _M), 11) * P1) & _M
        p += 1
    h ^= h >> 33
    h = (h * P2) & _M
    h ^= h >> 29
    h = (h * P3) & _M
    return h ^ (h >> 32)


def keys(value, field) -> list[str]:
    """The normalized, non-empty tokens of one cell (Python value) in order."""
    if value is None:
        return []
    if field.kind == "list":
        raw = [str(x) for x in value if x is not None]
    elif field.kind == "delimited":
        raw = str(value).split(field.sep)
    else:
        raw = [str(value)]
    out = []
    for tok in raw:
        if field.strip:
            tok = tok.strip()
        if field.lower:
            tok = tok.lower()
        if tok:
            out.append(tok)
    return out


def index(key: str, field, mapping) -> int:
    if field.buckets is not None:
        return FIRST + xxh64(key.encode("utf-8")) % field.buckets
    return mapping.get(key, OOV)


def encode(values, field, mapping=None):
    """``(out, [tokens, kept, oov, truncated])`` for a list of Python cell values."""
    out = np.zeros((len(values), field.max_len), dtype=np.int32)
    counts = [0, 0, 0, 0]
    for i, v in enumerate(values):
        ks = keys(v, field)
        kept = ks[: field.max_len] if field.truncate == "head" else ks[-field.max_len :]
        row = [index(k, field, mapping) for k in kept]
        if field.pad == "left":
            out[i, field.max_len - len(row) :] = row
        else:
            out[i, : len(row)] = row
        counts[0] += len(ks)
        counts[1] += len(row)
        counts[2] += sum(1 for r in row if r == OOV)
        counts[3] += len(ks) > field.max_len
    return out, counts
