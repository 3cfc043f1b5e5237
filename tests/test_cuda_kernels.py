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

import numpy as np
import pyarrow as pa
import pytest

from dscore import Field
from dscore.encoding import _EMPTY_LOOKUP, _cell_rows, _sep, _spec
from dscore.kernels import cuda as kc
from dscore.kernels.unicode import tables

ROOT = Path(__file__).resolve().parent.parent


def _run(args, **env):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), **env}
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    return proc, proc.stdout + proc.stderr


def test_gpu_tests_pass_on_the_simulator():
    proc, out = _run(
        ["-m", "pytest", "tests/gpu", "-q", "-p", "no:cacheprovider"],
        NUMBA_ENABLE_CUDASIM="1", DSCORE_CUDA_THREADS="4", DSCORE_CUDA_BLOCKS="2",
    )  # fmt: skip
    assert proc.returncode == 0, out
    assert " passed" in out and "skipped" not in out, out


def test_kernels_compile_for_the_device():
    proc, out = _run(["tests/gpu/compile_ptx.py"])
    assert proc.returncode == 0, out
    if out.startswith("SKIP"):
        pytest.skip(out.strip())


@pytest.mark.skipif(kc.cuda_available(), reason="a CUDA device is present")
def test_no_device_is_a_clear_error():
    field = Field("f", buckets=3)
    args = (*_cell_rows(pa.array(["a"])), _spec(field), _sep(field), 3, _EMPTY_LOOKUP, tables())
    with pytest.raises(
        RuntimeError, match=r"needs a CUDA device, and numba.cuda found none \(.+\).*encode_device: cpu"
    ):
        kc.encode_rows_cuda(*args)
    with pytest.raises(RuntimeError, match="encode_device: cpu"):
        kc.gather_rows_cuda(np.zeros(1, np.int32), np.zeros(0, np.uint8), 0, None, None)


def test_launch_settings_from_the_environment():
    assert kc._env_int({}, "DSCORE_CUDA_THREADS", 256, 1, 1024) == 256
    assert kc._env_int({"DSCORE_CUDA_THREADS": "32"}, "DSCORE_CUDA_THREADS", 256, 1, 1024) == 32
    for bad in ("0", "2048", "many"):
        with pytest.raises(ValueError, match=rf"DSCORE_CUDA_THREADS='{bad}': expected an integer from 1 to 1024"):
            kc._env_int({"DSCORE_CUDA_THREADS": bad}, "DSCORE_CUDA_THREADS", 256, 1, 1024)
