"""Unicode tables that let the kernels reproduce ``token.strip().lower()`` exactly.

The tables are derived from the running interpreter's own ``str`` methods, so the
kernels agree with Python's Unicode database version by construction rather than
by a hand-written copy of it.

``lower``   int32[0x110000]: the lowercase code point, or ``-(k + 1)`` when the
            lowercase is several code points (``'İ'.lower() == 'i̇'``), whose code
            points are ``expansions[exp_offsets[k]:exp_offsets[k + 1]]``.
``flags``   uint8[0x110000]: SPACE (removed by ``str.strip()``), and the two
            properties that decide the context-dependent lowercase of capital sigma
            (Python lowers 'Σ' to final 'ς' at the end of a word, else to 'σ'):
            IGNORABLE (Unicode Case_Ignorable) and CASED.
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
import unicodedata

import numpy as np

SPACE = 1
IGNORABLE = 2
CASED = 4

_N = 0x110000
_SURROGATES = range(0xD800, 0xE000)


def _derive():
    lower = np.arange(_N, dtype=np.int32)
    flags = np.zeros(_N, dtype=np.uint8)
    exp_offsets = [0]
    expansions: list[int] = []
    for c in range(_N):
        if c in _SURROGATES:  # never present in valid UTF-8
            continue
        ch = chr(c)
        low = ch.lower()
        if len(low) == 1:
            lower[c] = ord(low)
        else:
            lower[c] = -(len(exp_offsets))
            expansions.extend(ord(x) for x in low)
            exp_offsets.append(len(expansions))
        if not ch.strip():
            flags[c] |= SPACE
        # CPython exposes Case_Ignorable and Cased only through the sigma rule
        # (\p{cased}\p{case-ignorable}* Σ !(\p{case-ignorable}* \p{cased})), so ask it:
        # 'A' is cased, '1' is neither; see Objects/unicodeobject.c:handle_capital_sigma.
        final_after = ("A" + ch + "Σ").lower()[-1] == "ς"
        final_before = ("AΣ" + ch).lower()[1] == "ς"
        if final_after and final_before:
            flags[c] |= IGNORABLE
        elif ("1" + ch + "Σ").lower()[-1] == "ς":
            flags[c] |= CASED
    return (
        lower,
        np.asarray(exp_offsets, dtype=np.int32),
        np.asarray(expansions, dtype=np.int32),
        flags,
    )


def _cache_path() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    tag = f"py{sys.version_info[0]}{sys.version_info[1]}-ucd{unicodedata.unidata_version}"
    return os.path.join(base, "dscore", f"unicode-{tag}.npz")


@functools.cache
def tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(lower, exp_offsets, expansions, flags)``, read-only.

    Deriving them takes about a second, so they are cached on disk per Python
    version and Unicode database version; an unwritable cache is not an error.
    """
    path = _cache_path()
    result = None
    try:
        with np.load(path) as z:
            result = (z["lower"], z["exp_offsets"], z["expansions"], z["flags"])
    except (OSError, KeyError, ValueError):
        result = _derive()
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".npz")
            with os.fdopen(fd, "wb") as f:
                np.savez(f, lower=result[0], exp_offsets=result[1], expansions=result[2], flags=result[3])
            os.replace(tmp, path)
        except OSError:
            pass
    for a in result:
        a.flags.writeable = False
    return result
