"""The job's tunables (dscore.config): taken on the client when a job starts, carried in
its TaskSpec, and in force in every worker-side entry point, threads included."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import dask.config
import pytest

from dscore import cluster, config, pipeline, plan, scorer
from dscore.errors import JobError
from dscore.spec import JobSpec

JOB = {
    "input": "in/*.parquet",
    "output": "out/",
    "fields": [{"name": "a", "kind": "scalar", "buckets": 8}],
    "model": {"path": "model.pt"},
}


def test_a_task_carries_the_clients_settings():
    with dask.config.set({"dscore.no-workers-timeout": 7}):
        task = plan.warm_task(JobSpec.from_dict(JOB))
    assert task.settings["no-workers-timeout"] == 7
    assert "settings" not in repr(task)  # tasks are logged; settings are noise there
    assert config.get("no-workers-timeout") == 300  # the client's own value is back


def test_partition_bytes_falls_back_to_config_where_the_job_leaves_it_unset():
    with dask.config.set({"dscore.partition-bytes": "2MiB"}):
        job = JobSpec.from_dict(JOB)  # the setting is read when the spec is made
    assert plan.partition_bytes(job) == 2 * 2**20
    assert plan.partition_bytes(JobSpec.from_dict({**JOB, "partition_bytes": "1KiB"})) == 1024
    assert plan.partition_bytes(JobSpec.from_dict({**JOB, "partition_bytes": 5000})) == 5000


def _task(**settings):
    return SimpleNamespace(settings={**config.snapshot(), **settings})


def test_score_piece_runs_under_the_tasks_settings(monkeypatch):
    monkeypatch.setattr(pipeline, "_score_piece", lambda *a: config.get("stream.min-rows"))
    assert pipeline.score_piece(None, _task(stream={"min-rows": 11}), "out", False) == 11


def test_score_table_and_the_scorers_frames_run_under_the_tasks_settings(monkeypatch):
    monkeypatch.setattr(pipeline, "_score_table", lambda *a: config.get("stream.min-rows"))
    assert pipeline.score_table(None, _task(stream={"min-rows": 12}), rt=object()) == 12

    seen = []

    def fake(table, task):
        seen.append(config.get("stream.min-rows"))
        return SimpleNamespace(table=table)

    monkeypatch.setattr(scorer, "score_table", fake)
    import pandas as pd

    task = SimpleNamespace(settings=_task(stream={"min-rows": 13}).settings, id_columns=())
    scorer._score_frame(pd.DataFrame({"x": [1]}), task)
    assert seen == [13]


def test_the_warm_up_thread_runs_under_the_tasks_settings(monkeypatch):
    done = threading.Event()
    seen = []

    def warm(task, piece):
        seen.append(config.get("stream.min-rows"))
        done.set()

    monkeypatch.setattr(cluster, "runtime", lambda: SimpleNamespace(warm=warm))
    cluster._warm_now(_task(stream={"min-rows": 14}), None)
    assert done.wait(10) and seen == [14]


class _Future:
    def __init__(self, key):
        self.key = key


class _NoWorkers:
    """A client whose cluster has no workers and whose one task never finishes."""

    scheduler = SimpleNamespace(address="tcp://nowhere:8786")

    def map(self, fn, pieces, key, **kwargs):
        return [_Future(k) for k in key]

    def scheduler_info(self, n_workers):
        return {"workers": {}}

    def cancel(self, futures):
        pass


def test_no_workers_timeout_is_read_from_config(monkeypatch):
    import distributed

    monkeypatch.setattr(distributed, "wait", lambda pending, **kw: (set(), pending))
    spec = JobSpec.from_dict(JOB)
    with dask.config.set({"dscore.no-workers-timeout": 0}):
        with pytest.raises(JobError, match=r"the cluster has had no workers for 0s; 1 partitions are not scored"):
            list(pipeline._submit(_NoWorkers(), [SimpleNamespace(index=0)], None, spec, "key"))
