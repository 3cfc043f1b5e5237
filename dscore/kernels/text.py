"""UTF-8 and ``token.strip().lower()`` as the kernels compute them: plain Python.

Decoding (invalid UTF-8 reads as U+FFFD per maximal subpart, as Python's
``bytes.decode("utf-8", "replace")``), stripping, final sigma, and the key of a
token. Compiled for each target together with the rest of the token walk
(``dscore.kernels.walk.compile_for``). ``copy_key`` is a target leaf: eight bytes at
a time on the CPU (``copy_key_words``), a byte at a time on CUDA (the default here).
"""

from __future__ import annotations

import numpy as np

from .table import read64, u
from .unicode import CASED, IGNORABLE, SPACE

REPLACEMENT = 0xFFFD  # what invalid UTF-8 decodes to with on_invalid_utf8: replace
HIGHS = np.uint64(0x8080808080808080)
LOW7 = np.uint64(0x7F7F7F7F7F7F7F7F)


def decode(data, p, end):
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
        return REPLACEMENT, 1, True
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
            return REPLACEMENT, q - p, True
        b = np.int64(data[q])
        if b < lo or b > hi:
            return REPLACEMENT, q - p, True
        cp = (cp << 6) | (b & 0x3F)
        lo = 0x80
        hi = 0xBF
        q += 1
    return cp, q - p, False


def decode_before(data, s, p):
    """``(code point, start, invalid)`` of the character that ends at ``data[p]`` (``p > s``),
    within a string that starts at ``s``, decoded as ``decode`` decodes forwards."""
    k = p - 1
    while k > s and k > p - 4 and (data[k] & 0xC0) == 0x80:
        k -= 1
    cp, n, bad = decode(data, k, p)
    if k + n != p:  # bytes after a complete character (or its ill-formed start): one U+FFFD ends there
        return REPLACEMENT, p - 1, True
    return cp, k, bad


def put(out, q, cp):
    """Write ``cp`` as UTF-8 at ``out[q]``; return the position after it."""
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


def is_ascii_space(b):
    # Python's str.strip() also removes the ASCII separators 0x1C-0x1F.
    return b == 32 or (9 <= b <= 13) or (28 <= b <= 31)


def strip_ascii(data, s, e):
    while s < e and data[u(s)] < 0x80 and is_ascii_space(data[u(s)]):
        s += 1
    while e > s and data[u(e - 1)] < 0x80 and is_ascii_space(data[u(e - 1)]):
        e -= 1
    return s, e


def strip_unicode(data, s, e, flags):
    """Narrow ``[s, e)`` to drop leading and trailing ``str.isspace`` characters
    (invalid UTF-8 reads as U+FFFD, which is not a space)."""
    while s < e:
        b = data[s]
        if b < 0x80:
            if not is_ascii_space(b):
                break
            s += 1
        else:
            cp, n, bad = decode(data, s, e)
            if bad or not (flags[cp] & SPACE):
                break
            s += n
    while e > s:
        b = data[e - 1]
        if b < 0x80:
            if not is_ascii_space(b):
                break
            e -= 1
        else:
            cp, k, bad = decode_before(data, s, e)
            if bad or not (flags[cp] & SPACE):
                break
            e = k
    return s, e


def final_sigma(data, s, e, p, n, flags):
    """CPython's Final_Sigma test for the 'Σ' at ``p`` within the token ``[s, e)``."""
    j = p
    cased_before = False
    while j > s:
        cp, k, _ = decode_before(data, s, j)
        f = flags[cp]
        if f & IGNORABLE:
            j = k
            continue
        cased_before = (f & CASED) != 0
        break
    if not cased_before:
        return False
    j = p + n
    while j < e:
        cp, m, _ = decode(data, j, e)
        f = flags[cp]
        if f & IGNORABLE:
            j += m
            continue
        return (f & CASED) == 0
    return True


def write64(b, p, w):
    q = u(p)
    for c in range(8):
        b[q + u(c)] = np.uint8((w >> np.uint64(8 * c)) & np.uint64(0xFF))


def lower_word(w):
    """Eight bytes with every ASCII 'A'-'Z' lowered; other bytes (non-ASCII too) unchanged.

    Per byte on its low seven bits, so no carry crosses bytes: +0x3F sets the high
    bit from 'A' up, +0x25 from 'Z' + 1 up.
    """
    h = w & LOW7
    upper = (h + np.uint64(0x3F3F3F3F3F3F3F3F)) & ~(h + np.uint64(0x2525252525252525)) & ~w & HIGHS
    return w | (upper >> np.uint64(2))


def copy_key_words(data, s, e, lower, out, o):
    """Copy ``data[s:e]`` to ``out[o:]``, ASCII-lowercased if ``lower``.

    Returns True when a non-ASCII byte was seen: the key must then be redone by
    ``key_unicode``. Eight bytes at a time, the last word overlapping the one
    before it, so a token of 8+ bytes costs no byte loop (measured on the CPU: the
    byte loop, though vectorized, cost 2x on 20-byte tokens: too short for its
    vector body).
    """
    n = e - s
    seen = np.uint64(0)
    if n >= 8:
        c = 0
        while c + 8 < n:
            w = read64(data, s + c)
            seen |= w
            write64(out, o + c, lower_word(w) if lower else w)
            c += 8
        w = read64(data, e - 8)
        seen |= w
        write64(out, o + n - 8, lower_word(w) if lower else w)
        return (seen & HIGHS) != 0
    shift = u(o) - u(s)
    for p in range(u(s), u(e)):
        b = data[p]
        seen |= np.uint64(b)
        out[shift + p] = b + np.uint8(32) if lower and np.uint8(b - 65) < 26 else b
    return seen >= 0x80


def copy_key_bytes(data, s, e, lower, out, o):
    """``copy_key_words`` a byte at a time."""
    seen = 0
    for p in range(s, e):
        b = data[p]
        seen |= b
        if lower and 65 <= b <= 90:
            b += 32
        out[o + p - s] = b
    return seen >= 0x80


def key_unicode(data, s, e, uni, lower, out, o):
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
        cp, n, bad = decode(data, p, e)
        invalid |= bad
        if not lower:
            lc = cp
        elif cp == 0x3A3:
            lc = 0x3C2 if final_sigma(data, s, e, p, n, flags) else 0x3C3
        else:
            lc = low[cp]
        if lc >= 0:
            q = put(out, q, lc)
        else:
            k = -lc - 1
            for j in range(exp_offsets[k], exp_offsets[k + 1]):
                q = put(out, q, expansions[j])
        p += n
    return q - o, invalid


def utf8_invalid(data, s, e):
    """True when ``data[s:e]`` is not valid UTF-8."""
    p = s
    while p < e:
        if data[p] < 0x80:
            p += 1
            continue
        _, n, bad = decode(data, p, e)
        if bad:
            return True
        p += n
    return False


def is_ascii(data, s, e):
    seen = np.uint8(0)
    for p in range(u(s), u(e)):
        seen |= data[p]
    return seen < 0x80


copy_key = copy_key_bytes
