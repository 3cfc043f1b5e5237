"""Device choices on a machine without a GPU: encode_device, local-cuda, resources, tf32.

What runs on the GPU itself is in tests/gpu (on numba's simulator here).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest

from dscore import JobSpec
from dscore.encoding import resolve_encode_device
from dscore.spec import SpecError

from .helpers import captured_logs
from .test_spec import JOB


def _numba_cuda_usable() -> bool:
    from dscore import encoding_cuda as kc

    return kc.cuda_available()


no_gpu = pytest.mark.skipif("_numba_cuda_usable()", reason="numba.cuda finds a device here")


# ---------------------------------------------------------------- job keys
def test_defaults():
    job = JobSpec.from_dict(JOB)
    assert job.encode_device == "auto" and job.resources is None and job.model.tf32 is False
    job = JobSpec.from_dict(
        {**JOB, "encode_device": "cuda", "resources": {"GPU": 1}, "model": {"path": "m.pt", "tf32": True}}
    )
    assert job.encode_device == "cuda" and job.resources == {"GPU": 1} and job.model.tf32 is True
    assert JobSpec.from_dict(job.to_dict()) == job


@pytest.mark.parametrize(
    "change, match",
    [
        ({"encode_device": "gpu"}, r"^j.yaml: encode_device: expected one of auto, cpu, cuda, got 'gpu' \(str\)$"),
        ({"resources": {"GPU": 0}}, r"^j.yaml: resources: expected a mapping of resource name to a positive number"),
        ({"resources": ["GPU"]}, r"resources: expected a mapping .*, got \['GPU'\] \(list\)$"),
        (
            {"model": {"path": "m.pt", "tf32": "yes"}},
            r"^j.yaml: model.tf32: expected true or false, got 'yes' \(str\)$",
        ),
    ],
)
def test_bad_keys_name_the_key(change, match):
    with pytest.raises(SpecError, match=match):
        JobSpec.from_dict({**JOB, **change}, "j.yaml")


# ---------------------------------------------------------------- where a worker encodes
def test_auto_with_a_cpu_model_is_the_cpu_once_logged_and_imports_nothing_cuda():
    """In a fresh process (the once-per-process log line, and sys.modules, are per process)."""
    code = (
        "import json, logging, sys\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stdout, format='LOG %(levelname)s %(name)s: %(message)s')\n"
        "from dscore.encoding import resolve_encode_device\n"
        "got = [resolve_encode_device('auto', 'cpu') for _ in range(3)] + [resolve_encode_device('cpu', 'cuda')]\n"
        "mods = [m for m in ('numba.cuda', 'dscore.kernels.cuda', 'dscore.encoding_cuda') if m in sys.modules]\n"
        "print(json.dumps([got, mods]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert json.loads(out[-1]) == [["cpu"] * 4, []]
    logs = [line for line in out if line.startswith("LOG")]
    assert logs == ["LOG INFO dscore.encoding: encode_device auto: encoding on the CPU (the model is on cpu)"]


@no_gpu
def test_cuda_without_a_device_is_one_clear_error():
    with pytest.raises(
        RuntimeError,
        match=r"^encode_device is 'cuda' but numba.cuda finds no usable CUDA device on this worker \(.+\); "
        r"set encode_device: cpu \(or auto",
    ):
        resolve_encode_device("cuda", "cuda:0")


@no_gpu
def test_auto_with_a_cuda_model_but_no_numba_device_falls_back_once(monkeypatch):
    import logging

    from dscore import encoding

    monkeypatch.setattr(encoding, "_auto_logged", False)
    with captured_logs("dscore.encoding", logging.INFO) as records:
        assert [resolve_encode_device("auto", "cuda:1") for _ in range(2)] == ["cpu", "cpu"]
    assert len(records) == 1 and records[0].levelname == "WARNING"
    assert (
        records[0]
        .getMessage()
        .startswith("encode_device auto: the model is on cuda:1 but numba.cuda cannot run kernels (")
    )


def test_unknown_encode_device():
    with pytest.raises(ValueError, match=r"encode_device is 'gpu'; expected one of auto, cpu, cuda"):
        resolve_encode_device("gpu", "cpu")
    from dscore import Scorer
    from dscore.demo import FIELDS

    with pytest.raises(ValueError, match=r"encode_device is 'tpu'; expected one of auto, cpu, cuda"):
        Scorer("model.pt", FIELDS, "vocab/", encode_device="tpu")


def test_plan_carries_encode_device_and_cpu_never_loads_for_it(demo, tmp_path):
    from dscore import plan as planning
    from dscore import worker

    plan = planning.plan_job(JobSpec.from_dict({**demo["job"], "output": str(tmp_path / "o"), "encode_device": "cpu"}))
    assert plan.task.encode_device == "cpu"
    rt = worker.Runtime()
    assert rt.encode_device(plan.task) == "cpu" and rt.loads["model"] == 0  # no model needed to decide
    auto = dataclasses.replace(plan.task, encode_device="auto")
    assert rt.encode_device(auto) == "cpu" and rt.loads["model"] == 1  # torch without CUDA: model on cpu
    assert not rt.gpu_encode


@no_gpu
def test_a_cuda_task_on_a_worker_without_a_gpu_fails_clearly(demo, tmp_path):
    """What ``dscore.run`` reports from the worker's task (the score_piece -> score_table path)."""
    from dscore import pipeline, worker
    from dscore import plan as planning

    plan = planning.plan_job(JobSpec.from_dict({**demo["job"], "output": str(tmp_path / "o"), "encode_device": "cuda"}))
    table = pq.read_table(sorted(__import__("glob").glob(demo["data"]))[0])
    with pytest.raises(RuntimeError, match=r"encode_device is 'cuda' but .* set encode_device: cpu"):
        pipeline.score_table(table, plan.task, worker.Runtime())


# ---------------------------------------------------------------- teardown
def test_teardown_frees_the_gpu_encoder_only_when_used(monkeypatch):
    from dscore import encoding_cuda as kc
    from dscore import worker

    calls = []
    monkeypatch.setattr(kc, "clear", lambda: calls.append(1))
    worker.Runtime().close()
    assert calls == []
    rt = worker.Runtime()
    rt.gpu_encode = True
    monkeypatch.setattr(worker, "_RUNTIME", rt)
    worker.DscorePlugin().teardown(None)
    assert calls == [1] and worker._RUNTIME is None and not rt.gpu_encode


def test_buffers_are_per_device():
    from dscore import worker

    rt = worker.Runtime()
    assert rt.buffers is rt.buffers_for("cpu") and rt.buffers_for("cuda:0") is not rt.buffers
    assert rt.buffers_for("cuda:0") is rt.buffers_for("cuda:0")


# ---------------------------------------------------------------- cluster and submit
def test_local_cuda_without_dask_cuda_is_a_clear_error(monkeypatch):
    from dscore import cluster

    monkeypatch.setitem(sys.modules, "dask_cuda", None)  # import fails, installed or not
    with pytest.raises(
        SpecError, match=r"cluster: local-cuda needs dask-cuda, which cannot be imported here .*dscore\[gpu\]"
    ):
        with cluster.connect("local-cuda"):
            pass
    with pytest.raises(SpecError, match=r"cluster: expected 'local', 'local-cuda' or a scheduler address"):
        with cluster.connect("gpu"):
            pass


def test_local_cuda_cluster_arguments(monkeypatch):
    from dscore import cluster, layout

    seen = {}
    monkeypatch.setitem(sys.modules, "dask_cuda", SimpleNamespace(LocalCUDACluster=lambda **kw: seen.update(kw)))
    monkeypatch.setitem(sys.modules, "dask_cuda.utils", SimpleNamespace(get_n_gpus=lambda: 4))
    monkeypatch.setattr(layout, "host_cores", lambda: 16)
    cluster.local_cuda_cluster()
    # n_workers: one per GPU (dask-cuda's default); the cores shared among the GPUs
    assert seen == {"threads_per_worker": 4, "memory_limit": "auto", "dashboard_address": ":0"}
    cluster.local_cuda_cluster(workers=2, threads_per_worker=3, memory_limit="8GB", resources={"GPU": 1})
    assert seen["n_workers"] == 2 and seen["threads_per_worker"] == 3 and seen["memory_limit"] == "8GB"
    assert seen["resources"] == {"GPU": 1}  # a cluster dscore starts offers what its tasks ask for
    assert layout.layout(16, gpus=8).threads == 2 and layout.layout(16, gpus=1).threads == 16


class _Workers:
    def __init__(self, *resources):
        self.info = {"workers": {f"tcp://w{i}": {"resources": r} for i, r in enumerate(resources)}}

    def scheduler_info(self, n_workers):
        return self.info


def test_resources_no_worker_offers_are_an_error():
    from dscore.cluster import check_resources
    from dscore.errors import JobError

    check_resources(_Workers({}, {"GPU": 1}), {"GPU": 1})
    check_resources(_Workers(), {"GPU": 1})  # no workers yet: the job waits for them
    check_resources(_Workers({}), None)
    with pytest.raises(
        JobError,
        match=r"resources: every task asks for \{'GPU': 2\}, but none of the 2 workers offers "
        r"that \(resources offered: \['GPU'\]\); start workers with e.g. `dask worker --resources GPU=1`",
    ):
        check_resources(_Workers({}, {"GPU": 1}), {"GPU": 2})


@pytest.mark.cluster
def test_a_local_cluster_offers_the_jobs_resources(demo, tmp_path):
    import dscore

    job = {**demo["job"], "output": str(tmp_path / "o"), "resources": {"GPU": 1}, "workers": 1,
           "threads_per_worker": 1, "partition_rows": 3000}  # fmt: skip
    report = dscore.run(job, progress=False)
    assert report.status == "complete" and report.rows == 6000


class _Stop(Exception):
    pass


class _RecordingClient:
    def map(self, fn, *iterables, **kwargs):
        self.kwargs = kwargs
        raise _Stop


@pytest.mark.parametrize("resources, expected", [({"GPU": 1}, {"GPU": 1}), (None, None)])
def test_resources_are_requested_at_submit_time(resources, expected):
    """Not as graph annotations: dask-expr drops those silently."""
    from dscore import pipeline

    spec = JobSpec.from_dict({**JOB, "resources": resources})
    client = _RecordingClient()
    with pytest.raises(_Stop):
        next(pipeline._submit(client, [SimpleNamespace(index=0)], None, spec, "token"))
    assert client.kwargs["resources"] == expected


# ---------------------------------------------------------------- tf32
def test_tf32_flags():
    import torch

    from dscore.model import set_tf32

    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        set_tf32(True)
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)
        set_tf32(False)
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, False)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
