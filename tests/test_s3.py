"""Remote storage: input, mapping tables, model and output on S3, through s3fs and
``storage_options``, against a real S3-compatible server (moto in server mode) on
127.0.0.1; the worker processes reach it over HTTP like any client.

Credentials are distinctive fake values, so that a test can read back everything a
job wrote to the bucket and everything the CLI printed, and find neither.
"""

from __future__ import annotations

import json
import os
import posixpath
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

import dscore
from dscore.demo import FIELDS

from .helpers import reference_scores

pytestmark = pytest.mark.cluster
pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

KEY = "AKIADSCOREFAKEKEY7Q3Z"
SECRET = "dscoreFakeSecret+9xq2Wv/Lm4Rt8YpZk"
BUCKET = "dscore-test"
DSCORE = [sys.executable, "-m", "dscore.cli"]

# A moto S3 server in its own process (as s3fs's own tests run one): its port on
# stdout, then it serves until terminated.
MOTO = """
import logging, threading
logging.getLogger("werkzeug").setLevel(logging.WARNING)
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
threading.Event().wait()
"""


@pytest.fixture(scope="module")
def s3(demo):
    """A moto server holding the demo job's input, mapping tables and model:
    ``s3://dscore-test/{data/part-*.parquet, vocab/*.parquet, model/model.pt}``."""
    import boto3

    proc = subprocess.Popen([sys.executable, "-c", MOTO], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        port = int(_read_line(proc, timeout=60))
        endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client(
            "s3", endpoint_url=endpoint, aws_access_key_id=KEY, aws_secret_access_key=SECRET, region_name="us-east-1"
        )
        client.create_bucket(Bucket=BUCKET)
        root = demo["root"]
        uploads = {f"data/{p.name}": p for p in sorted(root.glob("part-*.parquet"))}
        uploads |= {f"vocab/{p.name}": p for p in sorted((root / "vocab").glob("*.parquet"))}
        uploads["model/model.pt"] = root / "model.pt"
        for key, path in uploads.items():
            client.upload_file(str(path), BUCKET, key)
        so = {"key": KEY, "secret": SECRET, "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
        yield {"endpoint": endpoint, "port": port, "storage_options": so, "boto": client}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _read_line(proc, timeout: float) -> str:
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout):
        raise TimeoutError(f"the moto server printed no port in {timeout}s")
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"the moto server exited with status {proc.wait()}")
    return line.strip()


def s3fs_(s3):
    """A fresh s3fs instance (no shared listing cache), as a separate reader would see the bucket."""
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True, **s3["storage_options"])


def s3_job(s3, prefix: str, **changes) -> dict:
    return {
        "input": f"s3://{BUCKET}/data/*.parquet",
        "storage_options": s3["storage_options"],
        "output": f"s3://{BUCKET}/{prefix}/scores",
        "id_columns": ["user_id"],
        "vocab": f"s3://{BUCKET}/vocab",
        "fields": [f.to_dict(compact=True) for f in FIELDS],
        "model": {"path": f"s3://{BUCKET}/model/model.pt", "batch_size": 700},
        "partition_rows": 1000,
        **changes,
    }


def check_exactly_once_s3(s3, demo, output: str, rows: int = 6000) -> pa.Table:
    """Every input row once, with the eager reference's score; the output is complete."""
    fs = s3fs_(s3)
    root = output.removeprefix("s3://").rstrip("/")
    files = sorted(p for p in fs.ls(root, detail=False) if posixpath.basename(p).startswith("part-"))
    out = pa.concat_tables(pq.read_table(fs.open(p, "rb")) for p in files)
    ids = out.column("user_id").to_pylist()
    assert len(ids) == rows and len(set(ids)) == rows, f"{len(ids)} rows ({len(set(ids))} distinct), expected {rows}"
    want = reference_scores(demo)
    got = out.column("score").to_numpy()
    assert np.abs(got - np.array([want[i] for i in ids], dtype=np.float32)).max() <= 1e-6
    for name in ("_SUCCESS", "_manifest.json", "_job.json", "_report.json"):
        assert fs.exists(f"{root}/{name}"), name
    return out


# ---------------------------------------------------------------- vocabulary
def test_vocabulary_fit_save_load_on_s3(demo, s3, client):
    so = s3["storage_options"]
    fitted = dscore.Vocabulary.fit(f"s3://{BUCKET}/data/*.parquet", FIELDS, min_count=2, storage_options=so)
    assert fitted == demo["vocab"]
    fitted.save(f"s3://{BUCKET}/fit/vocab", storage_options=so)
    assert dscore.Vocabulary.load(f"s3://{BUCKET}/fit/vocab", storage_options=so) == demo["vocab"]
    assert sorted(s3fs_(s3).ls(f"{BUCKET}/fit/vocab", detail=False)) == [
        f"{BUCKET}/fit/vocab/{f.name}.parquet" for f in sorted(FIELDS, key=lambda f: f.name)
    ]


# ---------------------------------------------------------------- scoring
def test_score_on_s3_exactly_once(demo, s3, client):
    job = s3_job(s3, "score")
    report = dscore.run(job, client=client, progress=False)
    assert report.status == "complete" and report.rows == 6000 and report.partitions == 6
    check_exactly_once_s3(s3, demo, job["output"])


def test_resume_on_s3_scores_only_missing_partitions(demo, s3, client):
    job = s3_job(s3, "resume")
    first = dscore.run(job, client=client, progress=False)
    assert first.scored_partitions == 6
    fs = s3fs_(s3)
    root = f"{BUCKET}/resume/scores"
    for i in (0, 4):  # lost with their records, as a crash before the record would leave them
        fs.rm(f"{root}/part-{i:06d}.parquet")
        fs.rm(f"{root}/_parts/part-{i:06d}.json")
    fs.rm(f"{root}/_parts/part-000002.json")  # a file without its record is not done either
    second = dscore.run(job, client=client, progress=False)
    assert second.scored_partitions == 3 and second.resumed_partitions == 3
    check_exactly_once_s3(s3, demo, job["output"])
    third = dscore.run(job, client=client, progress=False)
    assert third.scored_partitions == 0 and third.status == "complete"


def test_failed_write_leaves_no_object(s3):
    """An exception while a partition is written uploads nothing: leaving an open
    s3fs file on an exception would upload what was written so far."""
    from dscore.output import Output

    out = Output(f"s3://{BUCKET}/atomic/scores", s3["storage_options"])

    def half(f):
        f.write(b"PAR1 half a file")
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        out._put("part-000000.parquet", half)
    assert not s3fs_(s3).exists(f"{BUCKET}/atomic/scores/part-000000.parquet")


def test_lease_on_s3_is_a_conditional_put(s3):
    """The lease is created with If-None-Match: * (moto honours it, as S3 does): while
    one run holds it, another's create is refused by the server, and it is refused."""
    from dscore.lease import Lease
    from dscore.output import JobError, Output

    out = Output(f"s3://{BUCKET}/lease/scores", s3["storage_options"])
    with Lease.acquire(out, timeout=300) as lease:
        held = json.loads(s3fs_(s3).cat(f"{BUCKET}/lease/scores/_lock.json"))
        assert held["id"] == lease.holder["id"] and held["output"] == out.url
        assert not Lease(out, 300)._create()  # s3fs sends the conditional put; the server says no
        with pytest.raises(JobError, match=rf"is being written by .* \(pid {os.getpid()}\) since .*--break-lock"):
            Lease.acquire(out, timeout=300)
        assert json.loads(s3fs_(s3).cat(f"{BUCKET}/lease/scores/_lock.json"))["id"] == lease.holder["id"]
    assert not s3fs_(s3).exists(f"{BUCKET}/lease/scores/_lock.json")


# ---------------------------------------------------------------- credentials
def dscore_cli(*args, env=None, timeout=240):
    return subprocess.run(
        [*DSCORE, "-vv", *args],
        capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip


def clean_env(**extra) -> dict:
    """This environment without AWS settings (the test decides where credentials come from)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FSSPEC_"))}
    return {**env, **extra}


def bucket_contents(s3) -> dict[str, bytes]:
    boto = s3["boto"]
    keys = [
        o["Key"]
        for page in boto.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
        for o in page.get("Contents", [])
    ]
    return {k: boto.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in keys}


def test_credentials_never_written_or_printed(demo, s3, client, tmp_path):
    """Credentials in the job's storage_options, then from the environment: neither
    the key nor the secret shows in anything the CLI prints (with -vv debug logging,
    the workers' logs included) or in any object written to the bucket."""
    s3["boto"].put_object(Bucket=BUCKET, Key="bad/part-9.parquet", Body=b"PAR1 not a parquet file PAR1")
    local = {"cluster": "local", "workers": 2, "threads_per_worker": 1}
    data = f"s3://{BUCKET}/data/*.parquet"
    job = s3_job(s3, "leak", input=[data, f"s3://{BUCKET}/bad/*.parquet"], on_bad_input="quarantine",
                 vocab=f"s3://{BUCKET}/leak/vocab", **local)  # fmt: skip
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    address = client.scheduler.address
    env = clean_env()
    runs = {}
    fit_on_a_directory = f"input=s3://{BUCKET}/data/"
    runs["vocab"] = dscore_cli(
        "vocab", str(path), "--scheduler", address, "--min-count", "2", "--set", fit_on_a_directory, env=env
    )
    # its own cluster, so that the workers' logs are in this command's output
    runs["score"] = dscore_cli("score", str(path), "--no-progress", env=env)
    runs["verify"] = dscore_cli(
        "verify", str(path), "--scheduler", address, "--sample", "300", "--set", f"input={data}", env=env
    )
    assert runs["vocab"].returncode == 0, runs["vocab"].stderr
    assert dscore.Vocabulary.load(job["vocab"], storage_options=s3["storage_options"]) == demo["vocab"]
    assert runs["score"].returncode == 3, runs["score"].stderr  # partial: the bad file is quarantined
    assert "bad/part-9.parquet" in runs["score"].stdout
    assert runs["verify"].returncode == 0, runs["verify"].stderr
    assert "PASS" in runs["verify"].stdout

    # The same job with the credentials and the endpoint in the environment only.
    env_job = {k: v for k, v in s3_job(s3, "env", **local).items() if k != "storage_options"}
    env_path = tmp_path / "env-job.yaml"
    env_path.write_text(yaml.safe_dump(env_job))
    aws = {"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_ENDPOINT_URL": s3["endpoint"],
           "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    runs["env"] = dscore_cli("score", str(env_path), "--no-progress", env=clean_env(**aws))
    assert runs["env"].returncode == 0, runs["env"].stderr
    check_exactly_once_s3(s3, demo, env_job["output"])

    objects = bucket_contents(s3)
    written = {k: v for k, v in objects.items() if k.startswith(("leak/", "env/"))}
    for name in ("leak/scores/_job.json", "leak/scores/_report.json", "leak/scores/_quarantine.json",
                 "leak/scores/_parts/part-000000.json", "leak/scores-verify/verify.json",
                 "leak/scores-verify/scores/_job.json", "leak/scores-verify/scores/_manifest.json",
                 "env/scores/_job.json", "env/scores/_manifest.json"):  # fmt: skip
        assert name in written, sorted(written)
    for secret in (KEY, SECRET):
        for name, body in objects.items():
            assert secret.encode() not in body, f"{secret!r} in s3://{BUCKET}/{name}"
        for cmd, r in runs.items():
            for text in (r.stdout, r.stderr):
                i = text.find(secret)
                assert i < 0, f"{secret!r} in the output of dscore {cmd}: ...{text[max(0, i - 400) : i + 60]}..."
    # The redacted copy still says where the data is.
    saved = json.loads(written["leak/scores/_job.json"])["job"]["storage_options"]
    assert saved == {"key": "***", "secret": "***", "client_kwargs": s3["storage_options"]["client_kwargs"]}


def test_glob_reads_spark_and_hive_folders_on_s3(demo, s3):
    """On an object store a folder is a prefix: a Spark output and a hive-partitioned
    folder matched by the glob are read whole; _SUCCESS and .crc beside them are ignored."""
    from dscore.plan import plan_job
    from dscore.spec import JobSpec

    root = demo["root"]
    keys = {
        "spark/a.parquet": root / "part-0.parquet",
        "spark/b.parquet/part-00000-c000.snappy.parquet": root / "part-1.parquet",
        "spark/c.parquet/date=2026-01-01/part-00000.parquet": root / "part-2.parquet",
    }
    for key, path in keys.items():
        s3["boto"].upload_file(str(path), BUCKET, key)
    for key in ("spark/_SUCCESS", "spark/b.parquet/_SUCCESS", "spark/b.parquet/.part-00000-c000.snappy.parquet.crc"):
        s3["boto"].put_object(Bucket=BUCKET, Key=key, Body=b"")
    # The output beside the folder, not in it: the glob would match it (refused, test_output_safety).
    plan = plan_job(JobSpec.from_dict(s3_job(s3, "spark-out", input=f"s3://{BUCKET}/spark/*")))
    assert plan.header["input"]["files"] == [f"s3://{BUCKET}/{k}" for k in keys]
    assert plan.header["input"]["rows"] == 6000
    assert [p.partitions for p in plan.pieces] == [()] * 4 + [(("date", "2026-01-01"),)] * 2
