"""Typed, validated option objects: ``Field`` (and the job specs built on it).

Every error names the field and the key at fault, says what was found and what is
allowed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import KW_ONLY, dataclass

KINDS = ("delimited", "list", "scalar")
TRUNCATE = ("head", "tail")
PAD = ("right", "left")
# Indices are int32 and 0/1 are reserved, so buckets must leave 2 + (buckets - 1) < 2**31.
MAX_BUCKETS = 2**31 - 2


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class Field:
    """One categorical input of the model.

    Parameters
    ----------
    name : str
        The field's name: the model's input of that name and the vocabulary table
        ``<vocab>/<name>.parquet``.
    column : str, optional
        Input column; defaults to ``name``.
    kind : {"delimited", "list", "scalar"}
        ``delimited``: a string cell of tokens separated by ``sep``; ``list``: an
        Arrow ``list<string>`` cell, one token per element; ``scalar``: the whole cell
        is one token. Integer columns (and lists of integers) work too: the token is
        the integer's decimal text.
    sep : str
        Separator of ``delimited`` fields.
    max_len : int
        Tokens kept per row; the output has shape ``(rows, max_len)``.
    truncate : {"head", "tail"}
        Keep the first or the last ``max_len`` tokens.
    pad : {"right", "left"}
        Side on which rows shorter than ``max_len`` are padded with 0.
    lower, strip : bool
        Normalization: a token's key is exactly Python's ``token.strip().lower()``
        (each step only when enabled). Tokens empty after normalization are dropped;
        a null cell, list or list element contributes no token.
    buckets : int, optional
        Hashing mode: index ``2 + hash_token(key) % buckets`` instead of a
        vocabulary table.

    Encoding convention: 0 is padding, 1 is out of vocabulary, vocabulary tokens
    have indices from 2.
    """

    name: str
    _: KW_ONLY
    column: str | None = None
    kind: str = "delimited"
    sep: str = ","
    max_len: int = 1
    truncate: str = "head"
    pad: str = "right"
    lower: bool = True
    strip: bool = True
    buckets: int | None = None

    def __post_init__(self):
        def bad(key, found, expected, exc=ValueError):
            raise exc(f"field {self.name!r}: {key} is {found!r}; expected {expected}")

        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"field name must be a non-empty string, got {self.name!r}")
        if "/" in self.name or "\\" in self.name:
            bad("name", self.name, "a name without path separators (it names the file <vocab>/<name>.parquet)")
        if self.column is None:
            object.__setattr__(self, "column", self.name)
        elif not isinstance(self.column, str) or not self.column:
            bad("column", self.column, "a column name (string)", TypeError)
        if self.kind not in KINDS:
            bad("kind", self.kind, f"one of {', '.join(KINDS)}")
        if not isinstance(self.sep, str) or not self.sep:
            bad("sep", self.sep, "a non-empty string", TypeError)
        if not _is_int(self.max_len):
            bad("max_len", self.max_len, "a positive integer", TypeError)
        if self.max_len < 1:
            bad("max_len", self.max_len, "a positive integer")
        if self.truncate not in TRUNCATE:
            bad("truncate", self.truncate, f"one of {', '.join(TRUNCATE)}")
        if self.pad not in PAD:
            bad("pad", self.pad, f"one of {', '.join(PAD)}")
        for key in ("lower", "strip"):
            if not isinstance(getattr(self, key), bool):
                bad(key, getattr(self, key), "true or false", TypeError)
        if self.buckets is not None:
            if not _is_int(self.buckets):
                bad("buckets", self.buckets, "a positive integer or null", TypeError)
            if not 1 <= self.buckets <= MAX_BUCKETS:
                bad("buckets", self.buckets, f"an integer from 1 to {MAX_BUCKETS}")

    def normalize(self, token: str) -> str:
        """The key of ``token``: ``token.strip().lower()`` as this field configures it."""
        if self.strip:
            token = token.strip()
        if self.lower:
            token = token.lower()
        return token

    def to_dict(self) -> dict:
        """Plain mapping of every option (the form job files and manifests use)."""
        return dataclasses.asdict(self)
