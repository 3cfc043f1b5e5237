"""Exactly-once output, resume, worker loss, killed client, bad input.

Every test ends by checking the output holds each input row exactly once with
the right score (``check_exactly_once``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from distributed.chaos import KillWorker

import dscore
from dscore.demo import FIELDS, make_table, package_names
from dscore.errors import JobError

from .helpers import check_exactly_once, wait_for_records

pytestmark = pytest.mark.cluster


def run_in_thread(job, client, **kw):
    box = {}

    def target():
        try:
            box["report"] = dscore.run(job, client=client, progress=False, **kw)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, box


# ---------------------------------------------------------------- commit protocol and resume
def test_resume_scores_only_missing_partitions(demo, many, client, tmp_path):
    job = {**many["job"], "output": str(tmp_path / "out")}
    first = dscore.run(job, client=client, progress=False)
    assert first.scored_partitions == 48
    manifest = json.load(open(tmp_path / "out" / "_manifest.json"))
    assert len(manifest["partitions"]) == 48 and manifest["input"]["rows"] == many["rows"]
    rec = manifest["partitions"][5]
    assert rec["rows"] == 200 and rec["input"]["row_groups"] == [2, 4] and rec["input"]["size"] > 0
    # Lose 5 partitions (file and record), as a crash would; leave one file without its record.
    for i in (0, 7, 19, 30, 47):
        os.remove(tmp_path / "out" / "_parts" / f"part-{i:06d}.json")
        if i != 7:
            os.remove(tmp_path / "out" / f"part-{i:06d}.parquet")
    (tmp_path / "out" / ".part-000003.parquet.deadbeef.tmp").write_bytes(b"half-written")
    second = dscore.run(job, client=client, progress=False)
    assert second.scored_partitions == 5 and second.resumed_partitions == 43
    assert not glob.glob(str(tmp_path / "out" / ".*.tmp"))
    check_exactly_once(demo, job["output"], job["input"], many["rows"])
    third = dscore.run(job, client=client, progress=False)  # complete: nothing to do
    assert third.scored_partitions == 0 and third.status == "complete"


def test_retried_task_overwrites(demo, many, tmp_path):
    from dscore.pipeline import score_piece
    from dscore.plan import plan_job
    from dscore.spec import JobSpec

    plan = plan_job(JobSpec.from_dict({**many["job"], "output": str(tmp_path / "out")}))
    piece = plan.pieces[3]
    a = score_piece(piece, plan.task, str(tmp_path / "out"), False)
    b = score_piece(piece, plan.task, str(tmp_path / "out"), False)
    assert a["file"] == b["file"] == "part-000003.parquet"
    assert sorted(os.listdir(tmp_path / "out")) == ["_parts", "part-000003.parquet"]
    assert pq.read_table(tmp_path / "out" / "part-000003.parquet").num_rows == 200


@pytest.mark.parametrize(
    "change, what",
    [
        ({"fields": None}, "field spec"),
        ({"vocab": "refit"}, "mapping tables"),
        ({"model": "changed"}, "model"),
    ],
)
def test_refuses_to_mix_old_and_new_scores(demo, many, client, tmp_path, change, what):
    job = {**many["job"], "output": str(tmp_path / "out")}
    dscore.run(job, client=client, progress=False)
    if "fields" in change:
        job["fields"] = [*job["fields"][:2], {"name": "apps", "max_len": 32}, job["fields"][3]]
    elif "vocab" in change:
        v = dscore.Vocabulary.fit(demo["data"], dscore.demo.FIELDS, min_count=3)
        v.save(str(tmp_path / "vocab"))
        job["vocab"] = str(tmp_path / "vocab")
    else:  # the same weights from another file: a different model as far as anyone can prove
        job["model"] = {"path": str(demo["root"] / "state.pt"), "factory": "dscore.demo:build_model",
                        "factory_kwargs": {"vocab_sizes": demo["sizes"], "dim": 8, "hidden": [16]}}  # fmt: skip
    with pytest.raises(JobError, match=f"different {what}.*--overwrite"):
        dscore.run(job, client=client, progress=False)
    report = dscore.run(job, client=client, progress=False, overwrite=True)
    assert report.scored_partitions == 48 and report.status == "complete"


# ---------------------------------------------------------------- faults
def test_worker_killed_mid_job(demo, many, client, tmp_path):
    """SIGKILL one worker process, by pid, while partitions are in flight."""
    job = {**many["job"], "output": str(tmp_path / "out")}
    pids = client.run(os.getpid)
    thread, box = run_in_thread(job, client)
    wait_for_records(job["output"], 6)
    victim = sorted(pids.values())[0]
    os.kill(victim, signal.SIGKILL)
    thread.join(300)
    assert "error" not in box, box.get("error")
    assert box["report"].status == "complete" and box["report"].rows == many["rows"]
    assert victim not in client.run(os.getpid).values()  # the nanny started a new process
    check_exactly_once(demo, job["output"], job["input"], many["rows"])


class KillWorkerAfterStartup(KillWorker):
    """KillWorker, armed a second after the worker is up, for at most ``kills`` kills.

    KillWorker arms its timer inside the worker's startup; a kill that lands before the
    nanny has seen the worker up leaves that nanny without a worker for good
    (distributed logs "Failed to restart worker"), and on a loaded machine startup is
    slow. So the timer is armed, without holding up startup, once the worker runs.
    Each kill leaves a file in ``record_dir`` first: the count bounds the test's length
    (every restart costs seconds) and says how many kills happened. Mode "segfault"
    because after "sys.exit" the worker exits with status 0, which the nanny takes for
    a deliberate close and does not restart.
    """

    def __init__(self, delay, mode, record_dir, kills):
        super().__init__(delay=delay, mode=mode)
        self.record_dir, self.kills = str(record_dir), kills

    def _budget_left(self) -> bool:
        return len(os.listdir(self.record_dir)) < self.kills

    async def setup(self, worker):
        from distributed.core import Status

        async def arm():
            while worker.status != Status.running:
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)
            if self._budget_left():
                await KillWorker.setup(self, worker)

        self._arming = asyncio.ensure_future(arm())

    def segfault(self):
        if self._budget_left():
            open(os.path.join(self.record_dir, str(os.getpid())), "w").close()
            super().segfault()


def test_chaos_killworker_repeatedly(demo, many, tmp_path):
    """distributed.chaos.KillWorker kills workers over and over; the job still finishes exactly once."""
    import dask
    from distributed import Client, LocalCluster

    apps = package_names(5000)
    # 864 partitions of 100 rows, ~15 s without kills: long enough that the kills
    # (at most 4, each about a second after a worker is up) land while it runs.
    for i in range(72):
        pq.write_table(
            make_table(1200, seed=500 + i, first_id=1200 * i, apps=apps),
            tmp_path / f"c{i:02d}.parquet",
            row_group_size=100,
        )
    job = {**many["job"], "input": str(tmp_path / "c*.parquet"), "output": str(tmp_path / "out"), "partition_rows": 100}
    killed = tmp_path / "killed"
    killed.mkdir()
    with dask.config.set({"distributed.scheduler.allowed-failures": 50}):
        with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as lc, Client(lc) as c:
            c.register_plugin(KillWorkerAfterStartup("0.5s", "segfault", killed, kills=4), name="chaos")
            seen = set()
            thread, box = run_in_thread(job, c)
            deadline = time.time() + 400
            while thread.is_alive() and time.time() < deadline:
                seen |= set(c.scheduler_info(n_workers=-1)["workers"])  # a restarted worker has a new address
                time.sleep(0.05)
            thread.join(120)  # (the chaos plugin goes with the cluster)
    kills = len(os.listdir(killed))
    assert not thread.is_alive(), f"the job did not finish while workers were being killed ({kills} kills)"
    assert "error" not in box, f"{kills} kills; {box.get('error')!r}"
    assert kills >= 2, f"only {kills} worker kills; the test did not exercise worker loss"
    assert len(seen) > 2  # killed workers were replaced while the job ran
    print(f"\nchaos: {kills} workers killed (segfault) during the job")
    check_exactly_once(demo, job["output"], job["input"], 72 * 1200)


def test_killed_dscore_process_then_resume(demo, many, tmp_path):
    """SIGKILL the `dscore score` process itself mid-job; a rerun finishes exactly once."""
    job = {**many["job"], "output": str(tmp_path / "out"), "workers": 2, "partition_rows": 100}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    cmd = [sys.executable, "-m", "dscore.cli", "score", str(path), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_for_records(job["output"], 10)
    finally:
        family = psutil.Process(proc.pid).children(recursive=True)
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI and the cluster it started
        for p in family:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        proc.wait()
    assert not os.path.exists(tmp_path / "out" / "_SUCCESS")
    done_before = len(glob.glob(str(tmp_path / "out" / "_parts" / "*.json")))
    assert 10 <= done_before < 96
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    report = json.load(open(tmp_path / "out" / "_report.json"))
    assert (
        report["resumed_partitions"] >= done_before and report["scored_partitions"] == 96 - report["resumed_partitions"]
    )
    check_exactly_once(demo, job["output"], job["input"], many["rows"])


# ---------------------------------------------------------------- bad input
def corrupt_inputs(src_root, dst, kind):
    """Copy the inputs and break the third file in the named way; return its path."""
    os.makedirs(dst)
    for p in sorted(glob.glob(os.path.join(src_root, "f*.parquet")))[:6]:
        shutil.copy(p, dst)
    bad = os.path.join(dst, "f02.parquet")
    table = pq.read_table(bad)
    if kind == "garbage":
        open(bad, "wb").write(b"this is not parquet at all" * 100)
    elif kind == "truncated":
        data = open(bad, "rb").read()
        open(bad, "wb").write(data[: len(data) // 2])
    elif kind == "corrupt page":
        data = bytearray(open(bad, "rb").read())
        data[200:4000] = os.urandom(3800)  # inside the first row groups' pages; the footer is intact
        open(bad, "wb").write(bytes(data))
    elif kind == "missing column":
        pq.write_table(table.drop_columns(["campaigns"]), bad, row_group_size=100)
    elif kind == "other type":
        apps = pa.array([None if v is None else v.split(",") for v in table.column("apps").to_pylist()])
        pq.write_table(table.set_column(table.schema.get_field_index("apps"), "apps", apps), bad, row_group_size=100)
    elif kind == "invalid UTF-8":  # Arrow and parquet store it unchecked
        apps = table.column("apps").combine_chunks().view(pa.binary()).to_pylist()
        apps[250] = b"com.app\xc1\xaf,\xc1\xafppo," + (apps[250] or b"")  # overlong '/', then 'oppo'
        apps = pa.array(apps, pa.binary()).view(pa.string())
        pq.write_table(table.set_column(table.schema.get_field_index("apps"), "apps", apps), bad, row_group_size=100)
    elif kind == "float cells":
        dn = pa.array(np.arange(table.num_rows, dtype=np.float64))
        pq.write_table(
            table.set_column(table.schema.get_field_index("device_name"), "device_name", dn), bad, row_group_size=100
        )
    return bad


BAD = {
    "garbage": r"f02.parquet: not a readable parquet file",
    "truncated": r"f02.parquet: not a readable parquet file",
    "corrupt page": r"f02.parquet \(row groups \d+-\d+\)",
    "missing column": r"f02.parquet \(row groups \d+-\d+\), column 'campaigns': column is missing from the file",
    "other type": r"f02.parquet \(row groups \d+-\d+\): field 'apps' \(column 'apps', kind 'delimited'\) expects .* found list<",
    "float cells": r"f02.parquet \(row groups \d+-\d+\): field 'device_name' \(column 'device_name', kind 'scalar'\) expects .*found double",
    "invalid UTF-8": r"f02.parquet: field 'apps' \(column 'apps'\): row 50 of row groups 2-3 is not valid UTF-8 \(byte 7: "
    r"invalid start byte b'\\xc1'\); expected UTF-8 text: fix the input, or set on_invalid_utf8: replace on field 'apps'",
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_input_fails_naming_the_file(demo, many, client, tmp_path, kind):
    corrupt_inputs(many["root"], tmp_path / "in", kind)
    job = {**many["job"], "input": str(tmp_path / "in" / "*.parquet"), "output": str(tmp_path / "out")}
    with pytest.raises(Exception, match=BAD[kind]):
        dscore.run(job, client=client, progress=False)
    assert not os.path.exists(tmp_path / "out" / "_SUCCESS")


@pytest.mark.parametrize("kind", ["garbage", "corrupt page", "missing column", "float cells", "invalid UTF-8"])
def test_quarantine_skips_counts_and_lists(demo, many, tmp_path, kind):
    bad = corrupt_inputs(many["root"], tmp_path / "in", kind)
    job = {**many["job"], "input": str(tmp_path / "in" / "*.parquet"), "output": str(tmp_path / "out"),
           "on_bad_input": "quarantine", "workers": 2}  # fmt: skip
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    r = subprocess.run([sys.executable, "-m", "dscore.cli", "score", str(path), "--no-progress"],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 3, r.stdout + r.stderr  # a distinct status: the output is partial
    assert "QUARANTINED" in r.stdout and "output is partial" in r.stdout
    assert not os.path.exists(tmp_path / "out" / "_SUCCESS")
    quarantined = json.load(open(tmp_path / "out" / "_quarantine.json"))
    assert quarantined and all(q["input"]["url"].endswith("f02.parquet") for q in quarantined)
    assert all(os.path.basename(bad) in q["error"] for q in quarantined)
    report = json.load(open(tmp_path / "out" / "_report.json"))
    assert report["status"] == "partial" and len(report["quarantined"]) == len(quarantined)
    # Every row of the good files is scored exactly once; no row of the bad file is silently dropped:
    # it is either scored (its readable row groups) or in a listed partition.
    files = sorted(glob.glob(str(tmp_path / "out" / "part-*.parquet")))
    ids = pa.concat_tables(pq.read_table(f) for f in files).column("user_id").to_pylist()
    assert len(ids) == len(set(ids))
    good = set(range(6 * 400)) - set(range(800, 1200))
    assert good <= set(ids)
    lost = set(range(800, 1200)) - set(ids)
    listed = sum(200 if q["partition"] is not None else 400 for q in quarantined)
    assert len(lost) == listed


def test_invalid_utf8_is_one_line_or_replaced_as_python_does(demo, many, tmp_path):
    """`dscore score` on a string cell that is not UTF-8: by default one line naming the
    file, row groups, column and row (exit 1, no traceback, no _SUCCESS); with
    on_invalid_utf8: replace every row is scored, the bad cell as Python's
    decode("utf-8", "replace") reads it."""
    corrupt_inputs(many["root"], tmp_path / "in", "invalid UTF-8")
    job = {**many["job"], "input": str(tmp_path / "in" / "*.parquet"), "output": str(tmp_path / "out"), "workers": 2}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    cmd = [sys.executable, "-m", "dscore.cli", "score", str(path), "--no-progress"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback (most recent call last)" not in r.stderr  # (workers log the failed task's frames)
    last = r.stderr.strip().splitlines()[-1]
    assert re.search(BAD["invalid UTF-8"], last), r.stderr
    assert not os.path.exists(tmp_path / "out" / "_SUCCESS")

    fields = [dataclasses.replace(f, on_invalid_utf8="replace") for f in FIELDS]
    job["fields"] = [f.to_dict(compact=True) for f in fields]
    path.write_text(yaml.safe_dump(job))
    r = subprocess.run([*cmd, "--overwrite"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    check_exactly_once(demo, str(tmp_path / "out"), str(tmp_path / "in" / "*.parquet"), 6 * 400, fields)
