"""Synthetic data shaped like the ads-intelligence case, for examples, tests and benchmarks.

Columns: ``device_name`` and ``device_model`` (one token each), ``apps`` (comma-
separated package names, ~40 per row from a Zipf vocabulary of ~200k, with mixed
case, stray spaces, empty and null cells and some never-seen tokens) and
``campaigns`` (``list<string>``). Everything is vectorized through Arrow so that
millions of rows take seconds.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_TLDS = np.array(["com", "org", "net", "io", "app", "co"])
_WORDS = np.array(
    ["acme", "blue", "bolt", "cloud", "core", "data", "delta", "echo", "fast", "fire", "flow", "fox", "game", "go", "happy", "hyper", "jet", "joy", "kite", "lab", "leaf", "line", "link", "lite", "luna", "map", "max", "mint", "moon", "nova", "omni", "pix", "play", "pulse", "quick", "ray", "red", "rock", "sky", "snap", "solar", "spark", "star", "sun", "swift", "tap", "tiny", "top", "trip", "vast", "wave", "web", "wild", "wise", "zen", "zip"]
)


def package_names(n: int, seed: int = 0, prefix: str = "") -> pa.Array:
    """``n`` distinct Android-style package names (``com.swift.game123``)."""
    rng = np.random.default_rng(seed)
    tld = _TLDS[rng.integers(0, len(_TLDS), n)]
    a = _WORDS[rng.integers(0, len(_WORDS), n)]
    b = _WORDS[rng.integers(0, len(_WORDS), n)]
    return pa.array([f"{prefix}{t}.{x}.{y}{i}" for i, (t, x, y) in enumerate(zip(tld, a, b))], pa.string())


def zipf_ids(rng, n_samples: int, n_tokens: int, exponent: float = 1.05) -> np.ndarray:
    """Token ids in ``[0, n_tokens)``, id 0 the most frequent."""
    p = 1.0 / np.arange(1, n_tokens + 1) ** exponent
    cdf = np.cumsum(p)
    cdf /= cdf[-1]
    return np.searchsorted(cdf, rng.random(n_samples)).astype(np.int64)


def delimited_column(
    rng,
    rows: int,
    vocab: pa.Array,
    *,
    mean_tokens: float = 40,
    oov_rate: float = 0.02,
    messy_rate: float = 0.05,
    null_rate: float = 0.01,
    sep: str = ",",
) -> pa.Array:
    """A string column of ``sep``-joined tokens drawn from ``vocab`` by Zipf frequency.

    ``oov_rate`` of the tokens come from a disjoint never-seen set; ``messy_rate`` of
    them are upper-cased or padded with spaces (they normalize to vocabulary
    tokens); ``null_rate`` of the cells are null and as many are empty.
    """
    n = len(vocab)
    lengths = rng.poisson(mean_tokens, rows).astype(np.int64)
    lengths[rng.random(rows) < null_rate] = 0
    total = int(lengths.sum())
    ids = zipf_ids(rng, total, n)
    unseen = package_names(max(1000, n // 10), seed=1, prefix="x")
    variant = np.zeros(total, dtype=np.int64)
    r = rng.random(total)
    variant[r < messy_rate] = 1
    variant[r < messy_rate / 2] = 2
    oov = rng.random(total) < oov_rate
    ids = np.where(oov, rng.integers(0, len(unseen), total), ids)
    variant[oov] = 3
    pool = pa.concat_arrays(
        [vocab, pc.utf8_upper(vocab), pc.binary_join_element_wise(" ", vocab, " ", ""), unseen]
    )
    starts = np.array([0, n, 2 * n, 3 * n])
    flat = pool.take(pa.array(starts[variant] + ids))
    offsets = np.zeros(rows + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    mask = rng.random(rows) < null_rate
    lists = pa.ListArray.from_arrays(pa.array(offsets), flat)
    joined = pc.binary_join(lists, sep)
    return pc.if_else(pa.array(mask), pa.scalar(None, pa.string()), joined)
