"""The worker runtime: models run inside Dask workers as fast as in a plain process."""

from __future__ import annotations

import os

import pytest

from .helpers import page_faults_per_call

pytestmark = pytest.mark.cluster


def test_plugin_gives_workers_plain_process_malloc(client):
    from dscore.cluster import register

    if not any(v.get("MALLOC_TRIM_THRESHOLD_") for v in client.run(lambda: dict(os.environ)).values()):
        pytest.skip("this distributed's nanny no longer sets MALLOC_TRIM_THRESHOLD_")
    # The nanny's setting: each call maps, zero-fills and unmaps its intermediates.
    assert client.submit(page_faults_per_call, pure=False).result() > 200
    register(client)
    faults = client.gather([client.submit(page_faults_per_call, workers=[w], pure=False) for w in client.nthreads()])
    assert max(faults) < 100, faults  # heap memory reused (one-off growth aside), as in a plain process


def _ready():
    from dscore.worker import runtime

    models = list(runtime().models.values())
    return bool(models) and all(m.prepared for m in models)


def _loads():
    from dscore.worker import runtime

    return dict(runtime().loads)


def test_workers_get_ready_for_a_job_before_its_first_task(client, demo, tmp_path):
    """Registered with a job to warm for, each worker loads the tables and the model and
    tunes it on the input's first rows by itself; the job's tasks then find all of it
    (the fingerprints the workers computed agree with the client's): nothing is loaded twice."""
    import time

    from dscore import cluster, pipeline, plan
    from dscore.spec import JobSpec

    spec = JobSpec.from_dict({**demo["job"], "output": str(tmp_path / "out")})
    inputs = plan.plan_inputs(spec)
    cluster.register(client)
    cluster.warm(client, plan.warm_task(spec), inputs.pieces[0])
    deadline = time.monotonic() + 120
    while not all(client.run(_ready).values()):
        assert time.monotonic() < deadline, "workers did not warm up in 120 s"
        time.sleep(0.2)
    before = client.run(_loads)
    assert all(v == {"model": 1, "vocab": 1} for v in before.values()), before
    report = pipeline.run(spec, client=client, progress=False)
    assert report.status == "complete"
    assert client.run(_loads) == before
    t = report.timeline
    assert 0 <= t["plan"] and 0 <= t["cluster"] and 0 <= t["start"] <= report.wall_seconds and t["finish"] >= 0
    assert "fixed time: start" in report.format()
