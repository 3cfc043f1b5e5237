"""The worker runtime: models run inside Dask workers as fast as in a plain process."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.cluster


def _page_faults_per_call(calls: int = 50) -> float:
    """Minor page faults of one micro-batch through an embedding model, the shape whose
    (batch, positions, dim) intermediate is what malloc thresholds decide."""
    import resource

    import torch

    torch.set_num_threads(1)
    emb = torch.nn.Embedding(50_000, 32)
    ids = torch.randint(0, 50_000, (256, 64))
    with torch.inference_mode():
        for _ in range(5):
            (emb(ids) * 2.0).sum(1)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(calls):
            (emb(ids) * 2.0).sum(1)
        return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls


def test_plugin_gives_workers_plain_process_malloc(client):
    from dscore.pipeline import register

    if not any(v.get("MALLOC_TRIM_THRESHOLD_") for v in client.run(lambda: dict(os.environ)).values()):
        pytest.skip("this distributed's nanny no longer sets MALLOC_TRIM_THRESHOLD_")
    # The nanny's setting: each call maps, zero-fills and unmaps its intermediates.
    assert client.submit(_page_faults_per_call, pure=False).result() > 200
    register(client)
    faults = client.gather([client.submit(_page_faults_per_call, workers=[w], pure=False) for w in client.nthreads()])
    assert max(faults) < 100, faults  # heap memory reused (one-off growth aside), as in a plain process
