"""The CUDA kernels, checked on a machine without a GPU.

tests/gpu holds the real tests (CUDA == CPU == naive); the simulator must be on
before numba is imported, so they run here in a child process. PTX compilation
catches what the simulator cannot: type errors of the CUDA target.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dask.config
import pyarrow as pa
import pytest

from dscore import Field
from dscore import encoding_cuda as gpu
from dscore.encoding import encode_table
from dscore.errors import SpecError

ROOT = Path(__file__).resolve().parent.parent


def _run(args, **env):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), **env}
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    return proc, proc.stdout + proc.stderr


def test_gpu_tests_pass_on_the_simulator():
    proc, out = _run(
        ["-m", "pytest", "tests/gpu", "-q", "-p", "no:cacheprovider"],
        NUMBA_ENABLE_CUDASIM="1", DASK_DSCORE__CUDA__THREADS_PER_BLOCK="4", DASK_DSCORE__CUDA__MAX_BLOCKS="2",
    )  # fmt: skip
    assert proc.returncode == 0, out
    assert " passed" in out and "skipped" not in out, out


def test_kernels_compile_for_the_device():
    proc, out = _run(["tests/gpu/compile_ptx.py"])
    assert proc.returncode == 0, out
    if out.startswith("SKIP"):
        pytest.skip(out.strip())


@pytest.mark.skipif(gpu.cuda_available(), reason="a CUDA device is present")
def test_no_device_is_a_clear_error():
    table = pa.table({"f": ["a"]})
    with pytest.raises(
        RuntimeError, match=r"needs a CUDA device, and numba.cuda found none \(.+\).*encode_device: cpu"
    ):
        encode_table(table, [Field("f", buckets=3)], device="cuda")


def test_launch_settings_from_the_config():
    assert gpu.launch_geometry() == (256, 65535)
    with dask.config.set({"dscore.cuda.threads-per-block": 32, "dscore.cuda.max-blocks": 4}):
        assert gpu.launch_geometry() == (32, 4)
    for bad in (0, 2048, "many", 1.5):
        with (
            dask.config.set({"dscore.cuda.threads-per-block": bad}),
            pytest.raises(
                SpecError,
                match=r"dscore.cuda.threads-per-block is .*; expected an integer from 1 to 1024: .*"
                "DASK_DSCORE__CUDA__THREADS_PER_BLOCK",
            ),
        ):
            gpu.launch_geometry()
    # what the simulator run above uses: dask's environment variables
    env = dict(DASK_DSCORE__CUDA__THREADS_PER_BLOCK="4", DASK_DSCORE__CUDA__MAX_BLOCKS="2")
    proc, out = _run(["-c", "from dscore.encoding_cuda import launch_geometry; print(launch_geometry())"], **env)
    assert proc.returncode == 0 and out.strip().endswith("(4, 2)"), out
