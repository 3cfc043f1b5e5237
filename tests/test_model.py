"""Model loading: formats, call conventions, outputs, devices, and the errors for each."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dscore import ModelSpec
from dscore.demo import FIELDS
from dscore.model import Model, ModelError, resolve_device

from .helpers import demo_arrays, eager_scores


@pytest.fixture(scope="module")
def arrays(demo):
    return demo_arrays(demo)


@pytest.mark.parametrize(
    "options",
    [
        {"path": "model.pt"},
        {"path": "model.pt2"},
        {"path": "state.pt", "factory": "dscore.demo:build_model", "factory_kwargs": "sizes"},
        {"path": "model.pt", "format": "torchscript", "batch_size": 7},
    ],
    ids=["torchscript", "torch.export", "state_dict", "tiny-batches"],
)
def test_formats_match_eager(demo, arrays, options):
    options = dict(options, path=str(demo["root"] / options["path"]))
    if options.get("factory_kwargs") == "sizes":
        options["factory_kwargs"] = {"vocab_sizes": demo["sizes"], "dim": 8, "hidden": [16]}
    model = Model.load(ModelSpec(**options), FIELDS)
    assert model.output_names == ["score"] and model.device == "cpu"
    got = model.predict(arrays)
    assert got.shape == (1500, 1) and got.dtype == np.float32
    np.testing.assert_allclose(got[:, 0], eager_scores(demo, arrays), atol=1e-6, rtol=0)


class Named(torch.nn.Module):
    """Keyword call, two outputs per row."""

    def forward(self, apps, device_name, campaigns, device_model):
        s = apps.float().mean(1) + device_name.float()[:, 0]
        return torch.stack([s, campaigns.float().sum(1) - device_model.float()[:, 0]], dim=1)


def test_keyword_call_and_named_outputs(tmp_path, arrays):
    path = tmp_path / "named.pt"
    torch.jit.save(torch.jit.script(Named()), str(path))
    model = Model.load(ModelSpec(str(path), call="keyword", outputs=("a", "b")), FIELDS)
    got = model.predict(arrays, batch_size=400)
    assert model.output_names == ["a", "b"]
    np.testing.assert_allclose(got[:, 0], arrays["apps"].mean(1) + arrays["device_name"][:, 0], rtol=1e-6)
    unnamed = Model.load(ModelSpec(str(path), call="keyword"), FIELDS)
    assert unnamed.output_names == ["score_0", "score_1"]
    with pytest.raises(ModelError, match=r"returns 2 scores per row but model.outputs names 3"):
        Model.load(ModelSpec(str(path), call="keyword", outputs=("a", "b", "c")), FIELDS)


def test_pickled_module_needs_trust(tmp_path, demo, arrays):
    path = tmp_path / "pickled.pt"
    torch.save(demo["eager"], str(path))
    with pytest.raises(ModelError, match=r"pickled.pt is a pickled model .* set model.trust_model: true"):
        Model.load(ModelSpec(str(path)), FIELDS)
    trusted = Model.load(ModelSpec(str(path), trust_model=True), FIELDS)
    np.testing.assert_allclose(trusted.predict(arrays)[:, 0], eager_scores(demo, arrays), atol=1e-6)


class BadShape(torch.nn.Module):
    def forward(self, a, b, c, d):
        return a.float().unsqueeze(2).repeat(1, 1, 2)


def test_model_errors(tmp_path, demo):
    with pytest.raises(ModelError, match=r"model file '.*nope.pt' does not exist"):
        Model.load(ModelSpec(str(tmp_path / "nope.pt")), FIELDS)
    bad = tmp_path / "bad.pt"
    torch.jit.save(torch.jit.script(BadShape()), str(bad))
    with pytest.raises(ModelError, match=r"returned shape \(1, 1, 2\) for 1 rows; expected \(1,\) or \(1, k\)"):
        Model.load(ModelSpec(str(bad)), FIELDS)
    with pytest.raises(ModelError, match=r"a state_dict needs model.factory"):
        Model.load(ModelSpec(str(demo["root"] / "state.pt"), format="state_dict"), FIELDS)
    with pytest.raises(ModelError, match=r"model.factory 'nowhere:build' cannot be imported"):
        Model.load(ModelSpec(str(demo["root"] / "state.pt"), factory="nowhere:build"), FIELDS)
    with pytest.raises(ModelError, match=r"expected 'package.module:function'"):
        Model.load(ModelSpec(str(demo["root"] / "state.pt"), factory="dscore.demo.build_model"), FIELDS)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"PK\x03\x04 definitely not a model")
    with pytest.raises(ModelError, match=r"garbage.pt"):
        Model.load(ModelSpec(str(garbage)), FIELDS)
    with pytest.raises(ModelError, match=r"model file '.*model.pt' changed while the job was running"):
        Model.load(ModelSpec(str(demo["root"] / "model.pt")), FIELDS, expect="sha256:" + "0" * 64)


def test_devices():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match=r"model.device is 'cuda:1' but torch sees no CUDA device"):
            resolve_device("cuda:1")


def test_threads_are_set_in_a_fresh_process():
    """set_threads sets torch's and numba's pools (Dask's nanny starts workers with OMP_NUM_THREADS=1)."""
    import subprocess
    import sys

    code = (
        "import torch, numba\n"
        "from dscore.model import set_threads\n"
        "set_threads(2)\n"
        "print(torch.get_num_threads(), torch.get_num_interop_threads(), numba.get_num_threads())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert out == ["2", "1", "2"]
