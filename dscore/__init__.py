"""dscore: out-of-core batch scoring of multi-field categorical PyTorch models on Dask."""

import importlib

__version__ = "0.1.0"

# Imported on first use: `dask scheduler` and `dask worker` import dscore.cli through
# the dask_cli entry point, and should not pay for numba, pyarrow and torch there.
_EXPORTS = {
    "DscoreError": "errors",
    "Field": "spec",
    "JobSpec": "spec",
    "ModelSpec": "spec",
    "Scorer": "scorer",
    "Vocabulary": "vocab",
    "bucket_index": "vocab",
    "encode": "encoding",
    "hash_token": "vocab",
    "run": "pipeline",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dscore' has no attribute {name!r}")


def __dir__():
    return __all__
