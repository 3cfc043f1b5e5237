"""ONNX models: run by ONNX Runtime, scored as eager PyTorch scores the same rows."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
import yaml
from onnx import TensorProto, helper

from dscore import ModelSpec, config
from dscore import optimize as opt
from dscore.demo import FIELDS
from dscore.model import Model, ModelError
from dscore.onnx_model import OnnxModule, _providers, export

from .helpers import captured_logs, check_exactly_once, demo_arrays, eager_scores


@pytest.fixture(scope="module")
def onnx_path(demo, tmp_path_factory):
    """The demo's reference model exported with torch.onnx.export (inputs named after the fields)."""
    return export(demo["eager"], str(tmp_path_factory.mktemp("onnx") / "model.onnx"), FIELDS)


@pytest.fixture(scope="module")
def arrays(demo):
    return demo_arrays(demo)


@pytest.mark.parametrize("call", ["positional", "keyword"])
def test_onnx_scores_as_eager_and_torchscript(demo, arrays, onnx_path, call):
    model = Model.load(ModelSpec(onnx_path, call=call, batch_size=700), FIELDS)
    assert isinstance(model.module, OnnxModule) and model.output_names == ["score"]
    got = model.predict(arrays)
    assert got.shape == (1500, 1) and got.dtype == np.float32
    assert np.abs(got[:, 0] - eager_scores(demo, arrays)).max() <= 1e-6
    script = Model.load(ModelSpec(str(demo["root"] / "model.pt"), batch_size=700), FIELDS).predict(arrays)
    assert np.abs(got - script).max() <= 1e-6


def test_session_follows_the_worker_threads(onnx_path):
    """Intra-op threads are torch's threads in the process (what set_threads chose for the worker)."""
    model = Model.load(ModelSpec(onnx_path), FIELDS)
    options = model.module.session.get_session_options()
    assert options.intra_op_num_threads == torch.get_num_threads()
    assert options.inter_op_num_threads == 1
    assert model.module.session.get_providers() == ["CPUExecutionProvider"]
    two = OnnxModule.load(open(onnx_path, "rb").read(), ModelSpec(onnx_path), "cpu", threads=2)
    assert two.session.get_session_options().intra_op_num_threads == 2


def _threads_of_a_session(path):
    model = Model.load(ModelSpec(path), FIELDS)
    return model.module.session.get_session_options().intra_op_num_threads, torch.get_num_threads()


@pytest.mark.cluster
def test_workers_sessions_get_the_workers_torch_threads(client, onnx_path):
    from dscore.pipeline import register

    register(client, 2)  # torch threads per worker process, as model.threads: 2 sets them
    assert set(client.run(_threads_of_a_session, onnx_path).values()) == {(2, 2)}
    register(client, 1)


def _graph(path, inputs, outputs=("score",), in_type=TensorProto.INT32) -> str:
    """A graph scoring each row as the sum of its first input (cast to float); the
    other inputs are declared and unused. ``outputs`` beyond the first repeat it."""
    nodes = [
        helper.make_node("Cast", [inputs[0]], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["f", "axes"], [outputs[0]], keepdims=0),
    ] + [helper.make_node("Identity", [outputs[0]], [o]) for o in outputs[1:]]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, in_type, ["B", "L"]) for n in inputs],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["B"]) for o in outputs],
        initializer=[helper.make_tensor("axes", TensorProto.INT64, [1], [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def test_inputs_get_the_types_the_graph_declares(tmp_path, arrays):
    """An int32 graph is fed int32 (dscore calls models with int64), by name or by position."""
    apps = [f for f in FIELDS if f.name == "apps"]
    path = _graph(tmp_path / "int32.onnx", ["apps"])
    for call in ("keyword", "positional"):
        got = Model.load(ModelSpec(path, call=call), apps).predict(arrays, batch_size=256)
        np.testing.assert_array_equal(got[:, 0], arrays["apps"].sum(1).astype(np.float32))


def test_onnx_errors(tmp_path, onnx_path, monkeypatch):
    with pytest.raises(ModelError, match=r"model file '.*absent.onnx' does not exist"):
        Model.load(ModelSpec(str(tmp_path / "absent.onnx")), FIELDS)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"definitely not a graph")
    with pytest.raises(ModelError, match=r"cannot load model '.*garbage.onnx' as an ONNX model: .*torch.onnx.export"):
        Model.load(ModelSpec(str(garbage)), FIELDS)
    outside = tmp_path / "outside.onnx"
    onnx.save(onnx.load(onnx_path), str(outside), save_as_external_data=True, size_threshold=0)
    with pytest.raises(ModelError, match=r"'.*outside.onnx' keeps its weights in external data files"):
        Model.load(ModelSpec(str(outside)), FIELDS)
    renamed = _graph(tmp_path / "renamed.onnx", ["in_0", "in_1", "in_2", "in_3"], in_type=TensorProto.INT64)
    with pytest.raises(
        ModelError,
        match=r"'.*renamed.onnx' takes the inputs \['in_0', 'in_1', 'in_2', 'in_3'\] but model.call: keyword passes "
        r"the fields \['device_name', 'device_model', 'apps', 'campaigns'\]",
    ):
        Model.load(ModelSpec(renamed, call="keyword"), FIELDS)
    Model.load(ModelSpec(renamed), FIELDS)  # positional: the graph's input order, whatever its names
    with pytest.raises(ModelError, match=r"'.*model.onnx' takes 4 inputs \(device_name, .*\) but the job has 2 fields"):
        Model.load(ModelSpec(onnx_path), FIELDS[:2])
    two = _graph(tmp_path / "two.onnx", ["apps"], outputs=("a", "b"))
    with pytest.raises(ModelError, match=r"'.*two.onnx' has 2 outputs \(a, b\); expected one"):
        Model.load(ModelSpec(two), FIELDS[2:3])
    booleans = _graph(tmp_path / "bool.onnx", ["apps"], in_type=TensorProto.BOOL)
    with pytest.raises(ModelError, match=r"bool.onnx' has inputs of types dscore cannot feed \(apps: tensor\(bool\)"):
        Model.load(ModelSpec(booleans), FIELDS[2:3])
    with pytest.raises(ModelError, match=r"model.precision is 'bf16', but '.*model.onnx' is an ONNX model"):
        Model.load(ModelSpec(onnx_path, precision="bf16"), FIELDS)
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(ModelError, match=r"'m.onnx' is to run on cuda:1, but this ONNX Runtime has no CUDA"):
            _providers(onnxruntime, "m.onnx", "cuda:1", False)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(ModelError, match=r"'.*model.onnx' is an ONNX model, and running it needs ONNX Runtime"):
        Model.load(ModelSpec(onnx_path), FIELDS)


@pytest.mark.parametrize("optimize", ["auto", "freeze", "compile"])
def test_optimize_modes_skip_onnx_and_batches_are_tuned(demo, arrays, onnx_path, optimize):
    model = Model.load(ModelSpec(onnx_path, optimize=optimize), FIELDS)
    with captured_logs("dscore.optimize", logging.INFO) as records:
        info = opt.prepare(model, arrays, rows_hint=10**12)  # long enough that auto would compile a torch model
    assert model.mode == "none" and model.runner is None
    assert model.batch_size == info["batch_size"]
    assert set(info["batch_rates"]) <= {str(b) for b in config.get("tune.batches")}
    warned = [r for r in records if r.levelno == logging.WARNING]
    if optimize == "auto":
        assert not warned and "optimize_note" not in info
    else:
        assert opt.ONNX_NOTE in info["optimize_note"] and len(warned) == 1
    assert np.abs(model.predict(arrays)[:, 0] - eager_scores(demo, arrays)).max() <= 1e-6


@pytest.mark.cluster
def test_score_an_onnx_model_with_the_cli(demo, tmp_path, onnx_path):
    """``dscore score`` on a local cluster: every row once, within 1e-6 of eager PyTorch."""
    job = {**demo["job"], "output": str(tmp_path / "out"), "model": {"path": onnx_path, "batch_size": "auto"}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    r = subprocess.run(
        [sys.executable, "-m", "dscore.cli", "score", str(tmp_path / "job.yaml"), "--no-progress",
         "--set", "workers=2", "--set", "threads_per_worker=1"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    check_exactly_once(demo, str(tmp_path / "out"), demo["data"], 6000)
    report = json.load(open(tmp_path / "out" / "_report.json"))
    assert report["model"]["path"] == onnx_path and report["model"]["fingerprint"].startswith("sha256:")
    assert all(e.endswith(", none") for e in report["model"]["execution"])
