"""Plain-Python twins of the kernels: slow, obvious, and the definition of correct.

They live in ``dscore.verify`` (``dscore verify`` scores against them too) and
share no code with the kernels.
"""

from dscore.verify import OOV, PAD, reference_encode, reference_keys, reference_numeric, xxh64

FIRST = 2
keys = reference_keys


def index(key: str, field, mapping) -> int:
    if field.buckets is not None:
        return FIRST + xxh64(key.encode("utf-8")) % field.buckets
    return mapping.get(key, OOV)


def encode(values, field, mapping=None):
    """``(out, [tokens, kept, oov, truncated])`` for a list of Python cell values."""
    return reference_encode(values, field, mapping)


def numeric(values, field):
    """``(float32 (rows, size), filled)`` for a list of Python cell values of a numeric field."""
    return reference_numeric(values, field)


__all__ = ["OOV", "PAD", "encode", "index", "keys", "numeric", "xxh64"]
