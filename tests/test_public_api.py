"""The declared public surface (httpx-style): adding or removing a name is a decision."""

import subprocess
import sys

import dscore


def test_exported_members():
    assert dscore.__all__ == [
        "Field", "JobSpec", "ModelSpec", "Scorer", "Vocabulary", "__version__",
        "bucket_index", "encode", "hash_token", "run",
    ]  # fmt: skip
    for name in dscore.__all__:
        assert getattr(dscore, name) is not None


def test_import_is_light():
    """`dask worker` imports dscore.cli via the dask_cli entry point: no numba/torch there."""
    code = "import sys, dscore.cli; print(sorted(m for m in ('numba', 'torch', 'pyarrow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
