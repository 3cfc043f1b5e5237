"""Jagged rows (``model.inputs: jagged``): a field's indices as ``(values, offsets)``.

What ``encode_table(..., inputs="jagged")`` returns per categorical field, and what
``dscore.model`` slices into micro-batches and feeds ``nn.EmbeddingBag``-style
models: row ``i`` is ``values[offsets[i]:offsets[i + 1]]``, its kept indices in
order (truncation applied, no padding: an empty or null row is an empty slice).
``offsets`` has ``rows + 1`` entries and stays a host numpy array on either encode
device (micro-batching reads it on the host, without a GPU synchronisation); the
model gets ``offsets[:-1]``, as ``EmbeddingBag.forward(input, offsets)`` takes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .kernels.table import PAD


@dataclass(frozen=True)
class Jagged:
    """One field's rows as ``values`` (int32, 1-D: numpy, or a CUDA device array after
    GPU encoding) and ``offsets`` (int64 numpy, ``rows + 1`` entries, ``offsets[0] == 0``).

    Unpacks as the pair (``values, offsets = arrays["apps"]``); ``shape[0]`` and
    ``len`` are the rows, and ``jagged[a:b]`` is rows ``a:b`` with their offsets
    rebased to 0 (``values`` a view), so that code that slices a padded matrix by
    rows (batch tuning, micro-batches) slices this the same way.
    """

    values: Any
    offsets: np.ndarray

    def __iter__(self):
        return iter((self.values, self.offsets))

    def __len__(self) -> int:
        return self.offsets.shape[0] - 1

    @property
    def shape(self) -> tuple:
        return (len(self),)

    def __getitem__(self, rows: slice) -> Jagged:
        if not isinstance(rows, slice) or rows.step not in (None, 1):
            raise TypeError(f"Jagged rows are sliced by a contiguous slice; got {rows!r}")
        start, stop, _ = rows.indices(len(self))
        stop = max(start, stop)
        o = self.offsets[start : stop + 1]
        return Jagged(self.values[o[0] : o[-1]], o - o[0])

    def rows(self) -> list[np.ndarray]:
        """Each row's indices (host numpy): for tests and error messages, not the hot path."""
        values = self.values if isinstance(self.values, np.ndarray) else self.values.copy_to_host()
        return [values[a:b] for a, b in zip(self.offsets[:-1], self.offsets[1:])]

    @classmethod
    def from_padded(cls, matrix: np.ndarray) -> Jagged:
        """The rows of a padded ``(rows, max_len)`` index matrix (either ``pad`` side)
        without their padding: ``dscore verify``'s reference encodes padded."""
        matrix = np.asarray(matrix)
        keep = matrix != PAD
        offsets = np.zeros(matrix.shape[0] + 1, dtype=np.int64)
        np.cumsum(keep.sum(axis=1), out=offsets[1:])
        return cls(np.ascontiguousarray(matrix[keep], dtype=np.int32), offsets)


def jagged_buffers(buffers, field, rows: int, empty) -> tuple:
    """``(values, offsets)`` for ``rows`` jagged rows of ``field``: ``values`` from
    ``empty(n)`` (host or device memory) with room for ``rows * max_len`` (the most that
    can be kept), ``offsets`` host int64 ``rows + 1``; reused from ``buffers`` (a dict
    the caller keeps, key ``(name, "jagged")``) when big enough."""
    cap = max(rows * field.max_len, 1)
    key = (field.name, "jagged")
    got = buffers.get(key) if buffers is not None else None
    if got is None or got[0].shape[0] < cap or got[1].shape[0] < rows + 1:
        got = (empty(cap), np.empty(rows + 1, dtype=np.int64))
        if buffers is not None:
            buffers[key] = got
    return got[0], got[1][: rows + 1]


__all__ = ["Jagged", "jagged_buffers"]
