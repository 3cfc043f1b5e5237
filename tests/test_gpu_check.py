"""benchmarks/gpu_check.sh and gpu_check.py, run here without a GPU: every step on the
CPU (--cpu), and the GPU steps' numba.cuda code on numba's simulator, on tiny data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--sample", "500", "--encode-rows", "1000", "--model-rows", "1024", "--seconds", "0.2", "--threads", "1"]

pytestmark = pytest.mark.cluster


def _env(**extra):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    return {**env, **extra}


def test_gpu_check_sh_dry_run_on_the_cpu(tmp_path):
    (tmp_path / "wheels").mkdir()
    (tmp_path / "out").mkdir()
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--skip-pytest", "--cpu", "--rows", "6000",
         "--workdir", str(tmp_path / "work"), *SMALL],
        env=_env(PYTHON=sys.executable, WHEELS=str(tmp_path / "wheels"), SITE=str(tmp_path / "site"),
                 OUT=str(tmp_path / "out")),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    for part in ("no wheels in", "nvidia-smi", "==== versions", "pytest tests/gpu: skipped", "rows missing: 0",
                 "model-only ceiling", "gpu_check: all steps passed", "gpu_check.sh: all parts passed"):  # fmt: skip
        assert part in out, part
    results = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert results["failed"] == [] and results["devices"] == {"model": "cpu", "encode": "cpu"}
    assert results["diff"]["fp32"]["table"]["max"] == 0.0  # CPU against CPU
    assert results["end_to_end"]["rows"] == 6000 and results["model_only"]["rows_per_s"] > 0


def test_gpu_check_gpu_steps_on_the_simulator(tmp_path):
    """The GPU code of every step (encoding on the simulator, the model on the CPU);
    without dask-cuda here, the end-to-end step falls back to a LocalCluster."""
    json_path = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--no-versions", "--rows", "300", "--workdir",
         str(tmp_path / "work"), "--json", str(json_path), *SMALL[:-2], "--sample", "100", "--encode-rows", "100",
         "--model-rows", "128"],
        cwd=ROOT, env=_env(NUMBA_ENABLE_CUDASIM="1", DASK_DSCORE__CUDA__THREADS_PER_BLOCK="32", DASK_DSCORE__CUDA__MAX_BLOCKS="4"),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    results = json.loads(json_path.read_text())
    assert results["devices"] == {"model": "auto", "encode": "cuda"}
    assert results["diff"]["encode_mismatched_rows"] == {"device_name": 0, "device_model": 0, "apps": 0, "campaigns": 0}
    assert results["diff"]["fp32"]["table"]["max"] == 0.0  # the model on the CPU both times
    assert "apps (delimited, max_len 64) | cuda" in results["encode"]
    (worker,) = results["end_to_end"]["workers"].values()
    assert worker["gpu_encode"] is True and results["end_to_end"]["rows"] == 300


def test_wheel_list():
    names = {}
    for line in (ROOT / "benchmarks" / "gpu_wheels.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and name and version, line
            assert name not in names, f"{name} twice"
            names[name] = version
    assert {"dask", "distributed", "dask-cuda", "tornado", "zict", "tblib", "partd", "locket", "toolz", "msgpack",
            "cloudpickle", "sortedcontainers", "click", "pyyaml", "psutil", "fsspec"} <= set(names)  # fmt: skip
    assert names["dask"] == names["distributed"]  # released together; distributed pins dask
