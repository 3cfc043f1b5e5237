"""Synthetic data shaped like the ads-intelligence case, for examples, tests and benchmarks.

Columns: ``device_name`` and ``device_model`` (one token each), ``apps`` (comma-
separated package names, ~40 per row from a Zipf vocabulary of ~200k, with mixed
case, stray spaces, empty and null cells and some never-seen tokens) and
``campaigns`` (``list<string>``); optionally (``make_table(numeric=True)``) a
numeric ``sessions_per_day`` (float64, with nulls and NaN) for ``NUMERIC_FIELD`` and
the Wide & Deep-style ``WideDeepModel``. Everything is vectorized through Arrow so that
millions of rows take seconds.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from .spec import Field

_TLDS = np.array(["com", "org", "net", "io", "app", "co"])
_WORDS = np.array(
    [
        "acme",
        "blue",
        "bolt",
        "cloud",
        "core",
        "data",
        "delta",
        "echo",
        "fast",
        "fire",
        "flow",
        "fox",
        "game",
        "go",
        "happy",
        "hyper",
        "jet",
        "joy",
        "kite",
        "lab",
        "leaf",
        "line",
        "link",
        "lite",
        "luna",
        "map",
        "max",
        "mint",
        "moon",
        "nova",
        "omni",
        "pix",
        "play",
        "pulse",
        "quick",
        "ray",
        "red",
        "rock",
        "sky",
        "snap",
        "solar",
        "spark",
        "star",
        "sun",
        "swift",
        "tap",
        "tiny",
        "top",
        "trip",
        "vast",
        "wave",
        "web",
        "wild",
        "wise",
        "zen",
        "zip",
    ]
)


def package_names(n: int, seed: int = 0, prefix: str = "", words: int = 2) -> pa.Array:
    """``n`` distinct Android-style package names of ``words`` words after the domain
    (``com.swift.game123``; 15 bytes on average in the demo's Zipf draws, 19 with 3 words)."""
    rng = np.random.default_rng(seed)
    parts = [_TLDS[rng.integers(0, len(_TLDS), n)]] + [_WORDS[rng.integers(0, len(_WORDS), n)] for _ in range(words)]
    return pa.array([f"{prefix}{'.'.join(p)}{i}" for i, p in enumerate(zip(*parts))], pa.string())


def zipf_ids(rng, n_samples: int, n_tokens: int, exponent: float = 1.05) -> np.ndarray:
    """Token ids in ``[0, n_tokens)``, id 0 the most frequent."""
    p = 1.0 / np.arange(1, n_tokens + 1) ** exponent
    cdf = np.cumsum(p)
    cdf /= cdf[-1]
    return np.searchsorted(cdf, rng.random(n_samples)).astype(np.int64)


def _delimited(rng, rows, vocab, mean_tokens, oov_rate, messy_rate, null_rate, sep):
    """``(column, ids, lengths, in_vocab)``: see ``delimited_column``."""
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
    token_ids = np.where(oov, rng.integers(0, len(unseen), total), ids)
    variant[oov] = 3
    pool = pa.concat_arrays([vocab, pc.utf8_upper(vocab), pc.binary_join_element_wise(" ", vocab, " ", ""), unseen])
    starts = np.array([0, n, 2 * n, 3 * n])
    flat = pool.take(pa.array(starts[variant] + token_ids))
    offsets = np.zeros(rows + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    mask = rng.random(rows) < null_rate
    joined = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), flat), sep)
    column = pc.if_else(pa.array(mask), pa.scalar(None, pa.string()), joined)
    return column, ids, lengths, ~oov & ~np.repeat(mask, lengths)


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
    return _delimited(rng, rows, vocab, mean_tokens, oov_rate, messy_rate, null_rate, sep)[0]


# ---------------------------------------------------------------- the demo dataset
FIELDS = (
    Field("device_name", kind="scalar"),
    Field("device_model", kind="scalar"),
    Field("apps", kind="delimited", sep=",", max_len=64),
    Field("campaigns", kind="list", max_len=16),
)
# The optional dense input: off by default, so the demo's data and model stay as they were.
NUMERIC_FIELD = Field("sessions_per_day", kind="numeric", fill=-1.0)
APPS = 200_000
CAMPAIGNS = 5000
_BRANDS = np.array(
    "Samsung Apple Xiaomi Oppo Vivo Huawei Realme OnePlus Motorola Google Nokia Sony LG Tecno Infinix "
    "Honor ZTE Lenovo Asus Alcatel".split()
)


def _scalar_column(rng, rows, values: np.ndarray, null_rate=0.01, messy_rate=0.05):
    ids = zipf_ids(rng, rows, len(values), 1.2)
    cells = values[ids].astype(object)
    messy = rng.random(rows) < messy_rate
    cells[messy] = [f"  {c.upper()} " for c in cells[messy]]
    cells[rng.random(rows) < null_rate] = None
    return pa.array(cells, pa.string()), ids


def device_names(n: int = len(_BRANDS)) -> np.ndarray:
    """``n`` device names: the brands, then numbered variants of them (``Samsung-1``)."""
    extra = [f"{_BRANDS[i % len(_BRANDS)]}-{i // len(_BRANDS)}" for i in range(len(_BRANDS), n)]
    return np.array([*_BRANDS, *extra])[:n]


def device_models() -> np.ndarray:
    return np.array([f"{b[:2].upper()}-{m:04d}" for b in _BRANDS for m in range(250)])


def campaign_names(n: int = CAMPAIGNS) -> np.ndarray:
    return np.array([f"cmp-{i:05d}" for i in range(n)], dtype=object)


def _campaigns(rng, rows, n=CAMPAIGNS):
    lengths = rng.integers(0, 9, rows)
    ids = zipf_ids(rng, int(lengths.sum()), n, 1.1)
    flat = campaign_names(n)[ids]
    flat[rng.random(len(flat)) < 0.01] = None  # null list elements
    offsets = np.zeros(rows + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.string())), ids, lengths


def make_table(rows: int, seed: int = 0, first_id: int = 0, apps: pa.Array | None = None, *,
               campaigns: int = CAMPAIGNS, devices: int = len(_BRANDS), app_words: int = 2,
               numeric: bool = False) -> pa.Table:  # fmt: skip
    """``rows`` rows of the demo dataset with a ``label`` that depends on the tokens:
    car-related apps and campaigns and premium devices raise the chance of 1.

    ``numeric`` adds ``sessions_per_day`` (float64, ~5% null, ~2% NaN), drawn from its
    own generator so the other columns are the same with or without it.

    ``campaigns`` and ``devices`` size the campaign and device-name vocabularies
    (``campaign_names``, ``device_names``); 5,000 device models; ``apps`` (default
    ``APPS`` package names of ``app_words`` words) for the apps.
    """
    rng = np.random.default_rng(seed)
    apps = package_names(APPS, words=app_words) if apps is None else apps
    device_name, brand = _scalar_column(rng, rows, device_names(devices))
    device_model, _ = _scalar_column(rng, rows, device_models())
    app_col, app_ids, lengths, seen = _delimited(rng, rows, apps, 40, 0.02, 0.05, 0.01, ",")
    camp_col, camp_ids, camp_len = _campaigns(rng, rows, campaigns)
    car_apps = np.random.default_rng(99).choice(APPS, 3000, replace=False)
    row_of_app = np.repeat(np.arange(rows), lengths)
    car = np.bincount(row_of_app[np.isin(app_ids, car_apps) & seen], minlength=rows)
    car_camp = np.bincount(np.repeat(np.arange(rows), camp_len)[camp_ids % 97 == 0], minlength=rows)
    logit = 1.2 * car + 1.5 * (car_camp > 0) + 0.8 * (brand < 3) - 2.0
    label = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    table = pa.table(
        {
            "user_id": pa.array(np.arange(first_id, first_id + rows, dtype=np.int64)),
            "device_name": device_name,
            "device_model": device_model,
            "apps": app_col,
            "campaigns": camp_col,
            "label": label,
        }
    )
    if numeric:
        num = np.random.default_rng([seed, 7])
        sessions = num.gamma(2.0, 3.0, rows)
        sessions[num.random(rows) < 0.02] = np.nan
        table = table.append_column("sessions_per_day", pa.array(sessions, mask=num.random(rows) < 0.05))
    return table


def generate(path: str, rows: int, *, files: int = 4, row_group_size: int = 65_536, seed: int = 0,
             storage_options: dict | None = None, **sizes) -> list[str]:  # fmt: skip
    """Write the demo dataset as ``files`` parquet files under ``path``; return their URLs.

    ``sizes``: ``campaigns``, ``devices`` and ``app_words``, as ``make_table`` takes them.
    """
    import pyarrow.parquet as pq

    from . import io

    fs, root = io.url_to_fs(path, storage_options)
    fs.makedirs(root, exist_ok=True)
    apps = package_names(APPS, words=sizes.get("app_words", 2))
    urls, first = [], 0
    per_file = -(-rows // files)
    for i in range(files):
        n = min(per_file, rows - first)
        if n <= 0:
            break
        table = make_table(n, seed=seed * 1000 + i, first_id=first, apps=apps,
                           **{k: v for k, v in sizes.items() if k != "app_words"})  # fmt: skip
        target = f"{root.rstrip('/')}/part-{i:03d}.parquet"
        with fs.open(target, "wb") as f:
            pq.write_table(table, f, row_group_size=row_group_size)
        urls.append(io.full_url(fs, target))
        first += n
    return urls


# ---------------------------------------------------------------- the reference model
class DemoModel(torch.nn.Module):
    """The reference model: per-field embeddings (padding index 0), masked mean over
    real tokens, concatenation, MLP, sigmoid. Inputs in ``FIELDS`` order; output (B,)."""

    def __init__(self, vocab_sizes, dim: int = 32, hidden=(64, 32)):
        super().__init__()
        nn = torch.nn
        self.device_name = nn.Embedding(vocab_sizes[0], dim, padding_idx=0)
        self.device_model = nn.Embedding(vocab_sizes[1], dim, padding_idx=0)
        self.apps = nn.Embedding(vocab_sizes[2], dim, padding_idx=0)
        self.campaigns = nn.Embedding(vocab_sizes[3], dim, padding_idx=0)
        layers, width = [], 4 * dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.mlp = nn.Sequential(*layers, nn.Linear(width, 1))

    @staticmethod
    def pool(emb: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        count = (ids != 0).sum(dim=1, keepdim=True).clamp(min=1).to(emb.dtype)
        return emb.sum(dim=1) / count  # the padding row of each table is zero

    def forward(self, device_name, device_model, apps, campaigns):
        x = torch.cat(
            [
                self.pool(self.device_name(device_name), device_name),
                self.pool(self.device_model(device_model), device_model),
                self.pool(self.apps(apps), apps),
                self.pool(self.campaigns(campaigns), campaigns),
            ],
            dim=1,
        )
        return torch.sigmoid(self.mlp(x)).squeeze(1)


def _pool(emb: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    count = (ids != 0).sum(dim=1, keepdim=True).clamp(min=1).to(emb.dtype)
    return emb.sum(dim=1) / count


class WideDeepModel(torch.nn.Module):
    """A ``DemoModel`` (``deep``) plus a wide linear term on the numeric
    ``sessions_per_day``, summed before the sigmoid. Inputs: ``FIELDS`` then
    ``NUMERIC_FIELD`` (float32 ``(B, 1)``); output (B,). Holds the deep part rather
    than subclassing it: TorchScript does not script a subclass that changes forward."""

    def __init__(self, vocab_sizes, dim: int = 32, hidden=(64, 32)):
        super().__init__()
        self.deep = DemoModel(vocab_sizes, dim, hidden)
        self.wide = torch.nn.Linear(1, 1)

    def forward(self, device_name, device_model, apps, campaigns, sessions_per_day):
        d = self.deep
        x = torch.cat(
            [
                _pool(d.device_name(device_name), device_name),
                _pool(d.device_model(device_model), device_model),
                _pool(d.apps(apps), apps),
                _pool(d.campaigns(campaigns), campaigns),
            ],
            dim=1,
        )
        return torch.sigmoid(d.mlp(x) + self.wide(sessions_per_day)).squeeze(1)


def build_model(vocab_sizes, dim: int = 32, hidden=(64, 32)) -> DemoModel:
    """A ``DemoModel``; also the factory for state_dict loading
    (``model.factory: dscore.demo:build_model``)."""
    return DemoModel(vocab_sizes, dim, tuple(hidden))


def full_vocabulary(*, campaigns: int = CAMPAIGNS, devices: int = len(_BRANDS), app_words: int = 2):
    """Mapping tables of every token the generator draws from (normalized), numbered
    from 2 in its frequency order: the tables a team that keeps its own brings, with
    all ``APPS`` apps, 5,000 device models and the given campaigns and devices (a
    fitted vocabulary drops what the data shows fewer than ``min_count`` times)."""
    from .vocab import Vocabulary

    def table(tokens) -> pa.Table:
        tokens = pc.utf8_lower(pa.array(tokens, pa.string()))
        return pa.table({"token": tokens, "index": pa.array(np.arange(2, len(tokens) + 2, dtype=np.int32))})

    return Vocabulary({
        "device_name": table(device_names(devices)),
        "device_model": table(device_models()),
        "apps": table(package_names(APPS, words=app_words)),
        "campaigns": table(campaign_names(campaigns)),
    }, source="demo.full_vocabulary")  # fmt: skip


def vocab_sizes(vocab, fields=FIELDS) -> list[int]:
    """Embedding rows per field: the largest index + 1 (buckets + 2 in hashing mode)."""
    sizes = []
    for f in fields:
        if f.buckets is not None:
            sizes.append(f.buckets + 2)
        else:
            idx = vocab[f.name].column("index")
            sizes.append(int(pa.compute.max(idx).as_py() or 1) + 1)
    return sizes


def train(model, table: pa.Table, vocab, *, epochs: int = 2, batch_size: int = 512, lr: float = 3e-3, seed: int = 0):
    """A short supervised training loop on ``table`` (encoded with dscore); returns the final loss."""
    from .encoding import encode

    torch.manual_seed(seed)
    arrays = encode(table, FIELDS, vocab)
    inputs = [torch.from_numpy(arrays[f.name]).long() for f in FIELDS]
    y = torch.tensor(table.column("label").to_numpy(), dtype=torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = torch.nn.BCELoss()
    model.train()
    loss = torch.tensor(0.0)
    for _ in range(epochs):
        perm = torch.randperm(len(y))
        for start in range(0, len(y), batch_size):
            idx = perm[start : start + batch_size]
            opt.zero_grad()
            loss = loss_fn(model(*(x[idx] for x in inputs)), y[idx])
            loss.backward()
            opt.step()
    model.eval()
    return loss.item()


def export_torchscript(model, path: str) -> str:
    torch.jit.save(torch.jit.script(model), path)
    return path


def job_dict(workdir: str, model_path: str) -> dict:
    """The demo job (the mapping a ``job.yaml`` holds)."""
    import os

    return {
        "input": os.path.join(workdir, "data", "*.parquet"),
        "output": os.path.join(workdir, "scores"),
        "id_columns": ["user_id"],
        "vocab": os.path.join(workdir, "vocab"),
        "fields": [f.to_dict(compact=True) for f in FIELDS],
        "model": {"path": model_path, "device": "auto"},
        "cluster": "local",
    }


def build_example(workdir: str, rows: int = 200_000, *, train_rows: int = 40_000, log=print) -> str:
    """Generate data, fit the vocabulary, train and export the model, write ``job.yaml``.

    Returns the job file's path.
    """
    import json
    import os
    import time

    import dask
    import pyarrow.parquet as pq
    import yaml

    from .vocab import Vocabulary

    os.makedirs(workdir, exist_ok=True)
    t = time.perf_counter()
    generate(os.path.join(workdir, "data"), rows)
    log(f"generated {rows:,} rows of demo data in {time.perf_counter() - t:.1f}s")
    t = time.perf_counter()
    with dask.config.set(scheduler="threads"):
        vocab = Vocabulary.fit(os.path.join(workdir, "data"), FIELDS, min_count=2)
    vocab.save(os.path.join(workdir, "vocab"))
    log(f"fitted the vocabulary in {time.perf_counter() - t:.1f}s: {vocab}")
    t = time.perf_counter()
    first = pq.ParquetFile(os.path.join(workdir, "data", "part-000.parquet"))
    sample = first.read_row_groups(range(first.num_row_groups)).slice(0, train_rows)
    model = build_model(vocab_sizes(vocab))
    loss = train(model, sample, vocab)
    model_path = export_torchscript(model, os.path.join(workdir, "model.pt"))
    # The same weights as a state_dict, for model.factory: dscore.demo:build_model
    # with model.json as factory_kwargs (eager execution, torch.compile).
    torch.save(model.state_dict(), os.path.join(workdir, "state.pt"))
    with open(os.path.join(workdir, "model.json"), "w") as f:
        json.dump({"vocab_sizes": vocab_sizes(vocab)}, f)
    log(f"trained the reference model on {sample.num_rows:,} rows in {time.perf_counter() - t:.1f}s "
        f"(loss {loss:.3f}); TorchScript at {model_path}")  # fmt: skip
    job_path = os.path.join(workdir, "job.yaml")
    with open(job_path, "w") as f:
        yaml.safe_dump(job_dict(workdir, model_path), f, sort_keys=False)
    return job_path
