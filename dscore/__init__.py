"""dscore: out-of-core batch scoring of multi-field categorical PyTorch models on Dask."""

from .encode import encode
from .spec import Field
from .vocab import Vocabulary, bucket_index, hash_token

__version__ = "0.1.0"

__all__ = [
    "Field",
    "Vocabulary",
    "__version__",
    "bucket_index",
    "encode",
    "hash_token",
]
