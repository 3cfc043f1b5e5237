"""Benchmark models: the shapes of model users bring, for ``dscore bench --models``.

Written the way teams write them for training, not shaped for dscore: each takes the
demo fields as positional int64 tensors (device_name, device_model, apps, campaigns:
``demo.FIELDS`` order, padded with index 0) and returns probabilities.

* ``masked_mean``: per field ``nn.Embedding(V, 32, padding_idx=0)``, a float mask of
  the real tokens, masked mean, the four vectors concatenated, MLP 128-64-1, sigmoid.
* ``embedding_bag``: the same model with ``nn.EmbeddingBag(mode="mean",
  padding_idx=0)`` fed the padded index matrices (padding left out of each mean);
  its state_dict loads into ``masked_mean`` and gives the same scores.
* ``dlrm``: DLRM-like: sum-pooled embedding bags, pairwise dot products of the
  field vectors, top MLP 512-256-1.
* ``embedding_bag_jagged``: ``embedding_bag`` fed jagged rows (``model.inputs:
  jagged``): ``values, offsets`` per field, no padding; same state_dict. Not in
  ``MODELS`` (``dscore bench --models`` feeds padded rows): ``export`` writes it
  when named, and ``benchmarks/jagged.py`` races it against ``embedding_bag``.
* ``two_output``: a multi-task model: a shared masked-mean trunk and two heads,
  output (B, 2).

Each factory is importable by workers as ``model.factory: dscore.zoo:<name>`` with
``factory_kwargs: {vocab_sizes: [...]}``; ``export`` writes every model both as
TorchScript and as a state_dict for its factory.
"""

from __future__ import annotations

import os

import torch
from torch import nn


def masked_mean_pool(emb: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    mask = (ids != 0).float()
    return (emb * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)


class MaskedMean(nn.Module):
    def __init__(self, vocab_sizes, dim: int = 32):
        super().__init__()
        self.device_name = nn.Embedding(vocab_sizes[0], dim, padding_idx=0)
        self.device_model = nn.Embedding(vocab_sizes[1], dim, padding_idx=0)
        self.apps = nn.Embedding(vocab_sizes[2], dim, padding_idx=0)
        self.campaigns = nn.Embedding(vocab_sizes[3], dim, padding_idx=0)
        self.mlp = nn.Sequential(nn.Linear(4 * dim, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, device_name, device_model, apps, campaigns):
        x = torch.cat(
            [
                masked_mean_pool(self.device_name(device_name), device_name),
                masked_mean_pool(self.device_model(device_model), device_model),
                masked_mean_pool(self.apps(apps), apps),
                masked_mean_pool(self.campaigns(campaigns), campaigns),
            ],
            dim=1,
        )
        return torch.sigmoid(self.mlp(x)).squeeze(-1)


class BagMean(nn.Module):
    def __init__(self, vocab_sizes, dim: int = 32):
        super().__init__()
        self.device_name = nn.EmbeddingBag(vocab_sizes[0], dim, mode="mean", padding_idx=0)
        self.device_model = nn.EmbeddingBag(vocab_sizes[1], dim, mode="mean", padding_idx=0)
        self.apps = nn.EmbeddingBag(vocab_sizes[2], dim, mode="mean", padding_idx=0)
        self.campaigns = nn.EmbeddingBag(vocab_sizes[3], dim, mode="mean", padding_idx=0)
        self.mlp = nn.Sequential(nn.Linear(4 * dim, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, device_name, device_model, apps, campaigns):
        # A 2-D input is one bag per row; padding_idx entries are left out of the mean.
        x = torch.cat(
            [
                self.device_name(device_name),
                self.device_model(device_model),
                self.apps(apps),
                self.campaigns(campaigns),
            ],
            dim=1,
        )
        return torch.sigmoid(self.mlp(x)).squeeze(-1)


class BagMeanJagged(BagMean):
    def forward(
        self,
        device_name_values,
        device_name_offsets,
        device_model_values,
        device_model_offsets,
        apps_values,
        apps_offsets,
        campaigns_values,
        campaigns_offsets,
    ):
        # One bag per offset; an empty bag's mean is zeros, as a row of padding above.
        x = torch.cat(
            [
                self.device_name(device_name_values, device_name_offsets),
                self.device_model(device_model_values, device_model_offsets),
                self.apps(apps_values, apps_offsets),
                self.campaigns(campaigns_values, campaigns_offsets),
            ],
            dim=1,
        )
        return torch.sigmoid(self.mlp(x)).squeeze(-1)


class DLRM(nn.Module):
    def __init__(self, vocab_sizes, dim: int = 32, top=(512, 256)):
        super().__init__()
        self.emb_l = nn.ModuleList(nn.EmbeddingBag(v, dim, mode="sum", padding_idx=0) for v in vocab_sizes)
        n = len(vocab_sizes)
        rows, cols = torch.tril_indices(n, n, offset=-1)
        self.register_buffer("li", rows, persistent=False)
        self.register_buffer("lj", cols, persistent=False)
        layers, width = [], n * dim + n * (n - 1) // 2
        for h in top:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.top_l = nn.Sequential(*layers, nn.Linear(width, 1))
        # DLRM's initialisation: small uniform embeddings, so that the sums of ~40
        # vectors and their dot products stay in the sigmoid's working range.
        with torch.no_grad():
            for v, emb in zip(vocab_sizes, self.emb_l):
                emb.weight.uniform_(-((1 / v) ** 0.5), (1 / v) ** 0.5)
                emb.weight[0].zero_()

    def forward(self, device_name, device_model, apps, campaigns):
        fields = [device_name, device_model, apps, campaigns]
        ly = [emb(fields[i]) for i, emb in enumerate(self.emb_l)]
        t = torch.stack(ly, dim=1)  # (B, fields, dim)
        z = torch.bmm(t, t.transpose(1, 2))[:, self.li, self.lj]  # each pair of fields once
        x = torch.cat([torch.cat(ly, dim=1), z], dim=1)
        return torch.sigmoid(self.top_l(x)).squeeze(-1)


class TwoOutput(nn.Module):
    def __init__(self, vocab_sizes, dim: int = 32):
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(v, dim, padding_idx=0) for v in vocab_sizes)
        self.shared = nn.Sequential(nn.Linear(len(vocab_sizes) * dim, 64), nn.ReLU())
        self.ctr = nn.Linear(64, 1)
        self.cvr = nn.Linear(64, 1)

    def forward(self, device_name, device_model, apps, campaigns):
        fields = [device_name, device_model, apps, campaigns]
        pooled = [masked_mean_pool(emb(fields[i]), fields[i]) for i, emb in enumerate(self.embeddings)]
        h = self.shared(torch.cat(pooled, dim=1))
        return torch.cat([torch.sigmoid(self.ctr(h)), torch.sigmoid(self.cvr(h))], dim=1)


def masked_mean(vocab_sizes, dim: int = 32) -> MaskedMean:
    return MaskedMean(vocab_sizes, dim)


def embedding_bag(vocab_sizes, dim: int = 32) -> BagMean:
    return BagMean(vocab_sizes, dim)


def embedding_bag_jagged(vocab_sizes, dim: int = 32) -> BagMeanJagged:
    return BagMeanJagged(vocab_sizes, dim)


def dlrm(vocab_sizes, dim: int = 32, top=(512, 256)) -> DLRM:
    return DLRM(vocab_sizes, dim, tuple(top))


def two_output(vocab_sizes, dim: int = 32) -> TwoOutput:
    return TwoOutput(vocab_sizes, dim)


MODELS = {"masked_mean": masked_mean, "embedding_bag": embedding_bag, "dlrm": dlrm, "two_output": two_output}
# Models fed jagged rows (model.inputs: jagged): ``export`` writes them only when named.
JAGGED_MODELS = {"embedding_bag_jagged": embedding_bag_jagged}


def export(directory: str, vocab_sizes, *, seed: int = 0, names=tuple(MODELS)) -> dict:
    """Initialise each model from ``seed`` (no training) and write it to ``directory``
    as TorchScript (``<name>.pt``) and as a state_dict (``<name>.state.pt``).

    Returns ``{name: {"torchscript": model keys, "eager": model keys}}``, the job's
    ``model`` keys (``path``, and ``factory`` and ``factory_kwargs`` for eager) that
    load each form.
    """
    os.makedirs(directory, exist_ok=True)
    kwargs = {"vocab_sizes": [int(v) for v in vocab_sizes]}
    out = {}
    for name in names:
        with torch.random.fork_rng(devices=[]):  # the caller's random state stays as it was
            torch.manual_seed(seed)
            model = {**MODELS, **JAGGED_MODELS}[name](**kwargs).eval()
        script, state = os.path.join(directory, f"{name}.pt"), os.path.join(directory, f"{name}.state.pt")
        torch.jit.save(torch.jit.script(model), script)
        torch.save(model.state_dict(), state)
        out[name] = {
            "torchscript": {"path": script},
            "eager": {"path": state, "factory": f"dscore.zoo:{name}", "factory_kwargs": kwargs},
        }
    return out
