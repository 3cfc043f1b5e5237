"""Several models in one pass (``models:``): each partition read and encoded once,
every model fed its own fields, each column exact against a direct call of its model
on the reference encoding; every fingerprint guards resume."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

import dscore
from dscore import plan as planning
from dscore.errors import JobError, ModelError, SpecError
from dscore.spec import JobSpec
from dscore.verify import reference_arrays

pytestmark = pytest.mark.cluster


class TwoHeads(torch.nn.Module):
    """Two outputs from two of the demo's fields, taken as (apps, device_name): not the
    job's field order."""

    def __init__(self, apps: int, names: int):
        super().__init__()
        self.apps = torch.nn.Embedding(apps, 4, padding_idx=0)
        self.names = torch.nn.Embedding(names, 4)
        self.out = torch.nn.Linear(8, 2)

    def forward(self, apps, device_name):
        mask = (apps != 0).float().unsqueeze(-1)
        a = (self.apps(apps) * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.out(torch.cat([a, self.names(device_name)[:, 0]], 1))


def two_heads(demo, path, seed=0):
    torch.manual_seed(seed)
    model = TwoHeads(demo["sizes"][2], demo["sizes"][0]).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    torch.jit.save(torch.jit.script(model), str(path))
    return model


def models_job(demo, tmp_path, **changes):
    job = {k: v for k, v in demo["job"].items() if k != "model"}
    job["models"] = {
        "car": {"path": demo["job"]["model"]["path"], "batch_size": 700},
        "house": {"path": str(tmp_path / "house.pt"), "fields": ["apps", "device_name"]},
    }
    return {**job, "output": str(tmp_path / "out"), **changes}


def expected(demo, house, table, job):
    """Each model called directly on the reference encoding: {column: float32 scores}."""
    arrays = {n: torch.from_numpy(a).long() for n, a in reference_arrays(JobSpec.from_dict(job), table).items()}
    with torch.inference_mode():
        car = demo["eager"](*(arrays[f.name] for f in dscore.demo.FIELDS)).numpy()
        h = house(arrays["apps"], arrays["device_name"]).numpy()
    return {"car": car, "house_0": h[:, 0], "house_1": h[:, 1]}


@pytest.fixture
def quick_tuning():
    """Autotuning on fewer rows and rounds: the same choices to make, in less time."""
    import dask

    with dask.config.set({"dscore.tune.rows": 1024, "dscore.tune.rounds": 2, "dscore.tune.confirm-rounds": 1}):
        yield


def test_two_models_one_pass_exact_and_resume_guarded_by_both(demo, tmp_path, client, quick_tuning):
    house = two_heads(demo, tmp_path / "house.pt")
    job = models_job(demo, tmp_path)
    report = dscore.run(job, client=client, progress=False)
    assert report.status == "complete" and report.rows == 6000
    out = pq.read_table(str(tmp_path / "out"))
    assert out.column_names == ["user_id", "car", "house_0", "house_1"]
    table = pa.concat_tables(pq.read_table(p) for p in sorted(glob.glob(demo["data"])))
    ids = out.column("user_id").to_numpy()
    assert sorted(ids) == list(range(6000))
    want = expected(demo, house, table, job)
    for column, scores in want.items():
        got = out.column(column).to_numpy()
        assert np.abs(got - scores[ids]).max() <= 1e-6, column
        assert got.std() > 0.01, column

    # each model tuned, recorded and reported on its own
    assert set(report.models) == {"car", "house"} and report.model == {"outputs": ["car", "house_0", "house_1"]}
    assert all(e.startswith("batch 700, ") for e in report.models["car"]["execution"])  # its own batch_size
    assert report.models["house"]["outputs"] == ["house_0", "house_1"]
    assert all(m["rows_per_second"] > 0 and m["fingerprint"].startswith("sha256:") for m in report.models.values())
    text = report.format()
    assert "model car (car): batch 700, " in text and "model house (house_0, house_1): batch " in text
    header = (tmp_path / "out" / "_job.json").read_text()
    assert '"models"' in header and '"model"' not in header.replace('"models"', "")

    # a rerun resumes; a changed second model refuses to, naming it
    assert dscore.run(job, client=client, progress=False).scored_partitions == 0
    for p in sorted(glob.glob(str(tmp_path / "out" / "part-*.parquet")))[:2]:
        os.remove(p)
    two_heads(demo, tmp_path / "house.pt", seed=1)
    with pytest.raises(JobError, match=r"a different models \(house fingerprint 'sha256:.*' then, 'sha256:.*' now\)"):
        dscore.run(job, client=client, progress=False)
    two_heads(demo, tmp_path / "house.pt", seed=0)  # the same bytes again: it resumes the missing two
    report = dscore.run(job, client=client, progress=False)
    assert report.status == "complete" and report.scored_partitions == 2


def test_columns_and_collisions(demo, tmp_path):
    house = tmp_path / "house.pt"
    two_heads(demo, house)
    car = demo["job"]["model"]["path"]
    fields = dscore.demo.FIELDS
    job = JobSpec.from_dict(models_job(demo, tmp_path))
    assert [m.fields for m in planning.model_tasks(job)] == [tuple(f.name for f in fields), ("apps", "device_name")]
    named = planning.probe_models(
        planning.model_tasks(JobSpec.from_dict(models_job(demo, tmp_path, models={
            "car": car, "house": {"path": str(house), "outputs": ["buy", "rent"], "fields": ["apps", "device_name"]},
        }))), fields, ("user_id",),
    )  # fmt: skip
    assert [m.columns for m in named] == [("car",), ("house_buy", "house_rent")]
    with pytest.raises(SpecError, match=r"^models.user_id: column 'user_id' is also an id column; rename the model"):
        planning.plan_job(JobSpec.from_dict(models_job(demo, tmp_path, models={"user_id": car})))
    clash = {"car": {"path": str(house), "fields": ["apps", "device_name"]}, "car_1": car}
    with pytest.raises(SpecError, match=r"^models.car_1: column 'car_1' is also a column of models.car; rename"):
        planning.plan_job(JobSpec.from_dict(models_job(demo, tmp_path, models=clash)))
    single = planning.model_tasks(JobSpec.from_dict(demo["job"]))
    with pytest.raises(SpecError, match=r"^model: column 'score' is also an id column; set model.outputs$"):
        planning.probe_models(single, fields, ("score",))
    # a job's single model keeps its columns and its header, as before models existed
    plan = planning.plan_job(JobSpec.from_dict({**demo["job"], "output": str(tmp_path / "single")}))
    assert plan.outputs == ["score"] and set(plan.header["model"]) == {"path", "fingerprint"}
    assert "models" not in plan.header
    # model.fields: its fields in its order, in the header (the job's own fields are in its digest)
    sub = {
        **demo["job"],
        "output": str(tmp_path / "sub"),
        "model": {"path": str(house), "fields": ["apps", "device_name"]},
    }
    plan = planning.plan_job(JobSpec.from_dict(sub))
    assert plan.outputs == ["score_0", "score_1"] and plan.header["model"]["fields"] == ["apps", "device_name"]
    # without fields, the model gets every field in the job's order, which it does not take
    with pytest.raises(
        ModelError, match=r"model '.*house.pt' fails on a one-row probe batch called as model\(device_name,"
    ):
        planning.plan_job(JobSpec.from_dict(models_job(demo, tmp_path, models={"car": car, "house": str(house)})))


def test_scorer_with_several_models(demo, tmp_path):
    house = two_heads(demo, tmp_path / "house.pt")
    scorer = dscore.Scorer(
        fields=dscore.demo.FIELDS, vocab=demo["job"]["vocab"], id_columns=["user_id"],
        models={"car": demo["job"]["model"]["path"], "house": {"path": str(tmp_path / "house.pt"),
                                                              "fields": ["apps", "device_name"]}},
    )  # fmt: skip
    assert scorer.outputs == ["car", "house_0", "house_1"]
    table = pq.read_table(sorted(glob.glob(demo["data"]))[0]).slice(0, 300)
    out = scorer.score_table(table)
    want = expected(demo, house, table, models_job(demo, tmp_path))
    for column, scores in want.items():
        assert np.abs(out.column(column).to_numpy() - scores).max() <= 1e-6
    with pytest.raises(SpecError, match=r"model and models are both given"):
        dscore.Scorer("m.pt", dscore.demo.FIELDS, models={"car": "c.pt"})


def test_models_through_the_cli_score_and_verify(demo, tmp_path):
    """``dscore score`` and ``dscore verify`` on a local cluster: a table per model."""
    house = two_heads(demo, tmp_path / "house.pt")
    job = models_job(demo, tmp_path, cluster="local", workers=1)
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job, sort_keys=False))
    env = {**os.environ, "DASK_LOGGING__DISTRIBUTED": "warning"}
    quick = ["--set", "dscore.tune.rows=1024", "--set", "dscore.tune.rounds=2", "--set", "dscore.tune.confirm-rounds=1"]
    cli = [sys.executable, "-m", "dscore.cli"]
    r = subprocess.run([*cli, "score", str(tmp_path / "job.yaml"), "--no-progress", *quick, "--set",
                        "models.house.batch_size=128"], capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "model car (car): batch 700" in r.stdout and "model house (house_0, house_1): batch 128" in r.stdout
    out = pq.read_table(str(tmp_path / "out"))
    table = pa.concat_tables(pq.read_table(p) for p in sorted(glob.glob(demo["data"])))
    want = expected(demo, house, table, job)
    ids = out.column("user_id").to_numpy()
    for column, scores in want.items():
        assert np.abs(out.column(column).to_numpy() - scores[ids]).max() <= 1e-6, column
    r = subprocess.run([*cli, "verify", str(tmp_path / "job.yaml"), "--sample", "500", "--tolerance", "1e-6",
                        *quick],
                       capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 models" in r.stdout and "model car: pipeline (batch 700" in r.stdout, r.stdout
    assert "model house: pipeline (batch" in r.stdout and "PASS" in r.stdout, r.stdout
    shutil.rmtree(tmp_path / "out-verify")
