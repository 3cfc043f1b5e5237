"""dscore: out-of-core batch scoring of multi-field categorical PyTorch models on Dask."""

from .encode import encode
from .pipeline import Scorer, run
from .spec import Field, JobSpec, ModelSpec
from .vocab import Vocabulary, bucket_index, hash_token

__version__ = "0.1.0"

__all__ = [
    "Field",
    "JobSpec",
    "ModelSpec",
    "Scorer",
    "Vocabulary",
    "__version__",
    "bucket_index",
    "encode",
    "hash_token",
    "run",
]
