"""dscore never touches what it did not write, and one run writes an output at a time.

Output overlapping the input, ``--overwrite`` among foreign files, the output's
lease (two real ``dscore score`` processes, stale and broken leases), and the
check before ``_SUCCESS`` on an output doctored between the workers' writes and
the end of the run.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

import dscore
from dscore.lease import Lease
from dscore.output import JobError, Output
from dscore.pipeline import _finish, score_piece
from dscore.plan import plan_job
from dscore.spec import JobSpec

from .helpers import captured_logs, check_exactly_once, wait_for_records

DSCORE = [sys.executable, "-m", "dscore.cli"]


def tree(root) -> dict:
    """Every file under ``root`` with a hash of its bytes. A file gone between the listing
    and the read is left out: a worker still writing renames its temporary file."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            try:
                with open(path, "rb") as f:
                    out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
            except FileNotFoundError:
                pass
    return out


def cli(tmp_path, job, *args, timeout=300):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return subprocess.run([*DSCORE, "score", str(path), "--no-progress", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)  # fmt: skip


def one_line_error(r, *parts):
    """``r`` exited 1 with one line on stderr holding every one of ``parts``."""
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dscore: error: "), r.stderr
    for part in parts:
        assert part in lines[0], (part, lines[0])
    return lines[0]


@pytest.fixture
def inputs(demo, tmp_path):
    """A copy of the demo input in its own folder ``in/``."""
    (tmp_path / "in").mkdir()
    for p in sorted(glob.glob(demo["data"])):
        shutil.copy(p, tmp_path / "in")
    return tmp_path / "in"


# ---------------------------------------------------------------- output and input apart
def test_overwrite_onto_the_input_directory_deletes_nothing(demo, tmp_path, inputs):
    """The issue's data loss: output = input folder, then --overwrite. Refused, before anything runs."""
    before = tree(inputs)
    job = {**demo["job"], "input": str(inputs / "*.parquet"), "output": str(inputs)}
    r = cli(tmp_path, job, "--overwrite")
    one_line_error(
        r, f"output '{inputs}' contains input '{inputs}/part-0.parquet'", "Choose an output outside the input"
    )
    assert tree(inputs) == before  # nothing deleted, nothing written (not even a lease)
    with pytest.raises(JobError, match=r"contains input .*part-0.parquet"):
        dscore.run(job, overwrite=True, progress=False)
    assert tree(inputs) == before


@pytest.mark.parametrize(
    "input_, output, message",
    [
        ("in/", "in/scores", "is or lies inside input '{root}/in'"),  # a folder input is read recursively
        ("in/*.parquet", "in/x.parquet", "is matched by input '{root}/in/\\*.parquet'"),  # a Spark-style folder
        ("in/*.parquet", "in/y.parquet/scores", "is matched by input"),
        ("in/**/*.parquet", "in/scores", "would have its part files matched by input"),
        ("out/data/*.parquet", "out", "contains input '{root}/out/data/part-0.parquet'"),
        ("in/part-1.parquet", "in/part-1.parquet", "is input '{root}/in/part-1.parquet'"),
        ("in/", "link", "contains input '{root}/in/part-0.parquet'"),  # the same folder through a symbolic link
        ("in/", "in/sub/../../in", "contains input '{root}/in/part-0.parquet'"),
    ],
)
def test_output_overlapping_the_input_is_refused(demo, tmp_path, inputs, input_, output, message):
    if input_.startswith("out/"):
        shutil.copytree(inputs, tmp_path / "out" / "data")
    os.symlink(inputs, tmp_path / "link")
    job = JobSpec.from_dict({**demo["job"], "input": str(tmp_path / input_), "output": str(tmp_path / output)})
    with pytest.raises(JobError, match=message.format(root=re.escape(str(tmp_path)))):
        plan_job(job)


def test_output_beside_the_input_is_allowed(demo, tmp_path, inputs):
    """In the input's folder but not matched by its glob: neither read nor touched."""
    job = JobSpec.from_dict({**demo["job"], "input": str(inputs / "part-*.parquet"), "output": str(inputs / "scores")})
    assert len(plan_job(job).pieces) == 6


# ---------------------------------------------------------------- --overwrite removes only dscore's files
@pytest.mark.cluster
def test_overwrite_among_foreign_files_deletes_nothing(demo, client, tmp_path):
    out = tmp_path / "out"
    job = {**demo["job"], "output": str(out)}
    dscore.run(job, client=client, progress=False)
    for name in ("notes.txt", "part-000099.parquet"):  # a part-like name without a record or dscore's footer
        if name.endswith(".parquet"):
            pq.write_table(pa.table({"x": [1]}), out / name)
        else:
            (out / name).write_text("mine")
        before = tree(out)
        with pytest.raises(JobError, match=f"holds '{name}', which dscore did not write; --overwrite removes only"):
            dscore.run(job, client=client, progress=False, overwrite=True)
        assert tree(out) == before
        os.remove(out / name)
    (out / "notes.txt").write_text("mine")
    before = tree(out)
    r = cli(tmp_path, job, "--overwrite", "--scheduler", client.scheduler.address)
    one_line_error(r, "holds 'notes.txt', which dscore did not write", "Move it away or choose another output")
    assert tree(out) == before
    # Without the foreign files, a part file whose record and manifest are gone (a run
    # stopped between the two) is still dscore's: its footer carries the job token.
    os.remove(out / "notes.txt")
    os.remove(out / "_parts" / "part-000002.json")
    os.remove(out / "_manifest.json")
    report = dscore.run(job, client=client, progress=False, overwrite=True)
    assert report.scored_partitions == 6 and report.status == "complete"
    check_exactly_once(demo, str(out), demo["data"], 6000)


def test_foreign_directory_is_refused_in_one_line(demo, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    r = cli(tmp_path, {**demo["job"], "output": str(tmp_path / "out")})
    one_line_error(r, "is not empty and holds no dscore job (it holds 'notes.txt'); choose another output")
    assert sorted(os.listdir(tmp_path / "out")) == ["notes.txt"]  # the lease is gone again


@pytest.mark.cluster
def test_changed_model_is_refused_in_one_line_naming_the_flag(demo, client, tmp_path):
    job = {**demo["job"], "output": str(tmp_path / "out")}
    dscore.run(job, client=client, progress=False)
    other = tmp_path / "model.pt"
    shutil.copy(demo["root"] / "model.pt", other)
    with open(other, "ab") as f:  # another file: another fingerprint
        f.write(b"\0")
    r = cli(
        tmp_path, {**job, "model": {"path": str(other), "batch_size": 700}}, "--scheduler", client.scheduler.address
    )
    one_line_error(r, "holds scores from a job with a different model (", f"'{other}' now", "Pass --overwrite")


@pytest.mark.cluster
def test_the_same_job_again_writes_its_files(demo, client, tmp_path):
    """Back to back on one client: the same job to another output, then --overwrite onto
    the first. Task keys are unique per run: a scheduler still holding the earlier run's
    results under the same keys would hand them back, and nothing would be written."""
    for output, overwrite in (("a", False), ("b", False), ("a", True)):
        job = {**demo["job"], "output": str(tmp_path / output)}
        report = dscore.run(job, client=client, progress=False, overwrite=overwrite)
        assert report.scored_partitions == 6 and report.status == "complete"
        check_exactly_once(demo, job["output"], demo["data"], 6000)


# ---------------------------------------------------------------- one writer per output
def holder(**changes) -> dict:
    now = time.time()
    return {"id": "0" * 32, "host": "elsewhere", "pid": 4242, "user": "someone", "since": now - 60, "renewed": now,
            "timeout": 300.0, **changes}  # fmt: skip


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.cluster
def test_two_dscore_processes_on_one_output(demo, many, client, tmp_path):
    """The issue's case: a second run (also with --overwrite) while the first writes. The
    second is refused naming the first, deletes nothing; the first completes exactly once."""
    out = tmp_path / "out"
    job = {**many["job"], "output": str(out), "partition_rows": 100}  # 96 partitions
    path = tmp_path / "first.yaml"
    path.write_text(yaml.safe_dump(job))
    address = client.scheduler.address
    first = subprocess.Popen([*DSCORE, "score", str(path), "--no-progress", "--scheduler", address],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        wait_for_records(str(out), 4)
        # Paused, so that it is still writing whatever the machine's speed; alive all along.
        os.kill(first.pid, signal.SIGSTOP)
        lease = json.loads((out / "_lock.json").read_text())
        assert (lease["host"], lease["pid"]) == (socket.gethostname(), first.pid)
        for flags in ([], ["--overwrite"]):
            before = tree(out)
            r = cli(tmp_path, job, "--scheduler", address, *flags)
            one_line_error(r, f"is being written by {lease['user']}@{lease['host']} (pid {first.pid}) since ",
                           "one run per output", "--break-lock if it is gone")  # fmt: skip
            # Nothing removed or changed (the first run's workers go on adding parts
            # meanwhile, through temporary files that they rename).
            after = tree(out)
            assert {k: v for k, v in before.items() if not k.endswith(".tmp")}.items() <= after.items()
    finally:
        os.kill(first.pid, signal.SIGCONT)
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert "dscore complete: 9,600 rows in 96 partitions" in stdout
    check_exactly_once(demo, str(out), job["input"], many["rows"])
    assert not (out / "_lock.json").exists()


@pytest.mark.cluster
@pytest.mark.parametrize(
    "stale, reason",
    [
        (lambda: holder(host=socket.gethostname(), pid=dead_pid()), r"its process \(pid \d+ on this host\) is gone"),
        (
            lambda: holder(renewed=time.time() - 100, timeout=20.0),
            r"it has not been renewed for 1\d\ds \(lock_timeout 30s\)",
        ),
    ],
    ids=["dead pid", "not renewed"],
)
def test_stale_lease_is_taken_over(demo, client, tmp_path, stale, reason):
    out = tmp_path / "out"
    out.mkdir()
    (out / "_lock.json").write_text(json.dumps(stale()))
    with captured_logs("dscore.lease", 30) as logs:
        report = dscore.run({**demo["job"], "output": str(out), "lock_timeout": 30}, client=client, progress=False)
    assert report.status == "complete"
    (msg,) = [r.getMessage() for r in logs]
    assert f"taking over the lease on {out}" in msg
    assert re.search(reason, msg), msg
    assert not (out / "_lock.json").exists()
    check_exactly_once(demo, str(out), demo["data"], 6000)


def test_when_a_lease_is_stale():
    import psutil

    from dscore.lease import stale_reason

    live = holder(host=socket.gethostname(), pid=os.getpid(), pid_started=psutil.Process().create_time())
    assert stale_reason(live, 300) is None
    assert "the pid is now another process's" in stale_reason({**live, "pid_started": 1.0}, 300)
    assert stale_reason(holder(renewed=time.time() - 100), 30) is None  # the holder's own timeout (300s) is longer
    assert "not been renewed for 400s (lock_timeout 300s)" in stale_reason(holder(renewed=time.time() - 400.2), 30)


@pytest.mark.cluster
def test_break_lock(demo, client, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "_lock.json").write_text(json.dumps(holder()))
    job = {**demo["job"], "output": str(out)}
    r = cli(tmp_path, job, "--scheduler", client.scheduler.address)
    one_line_error(r, "is being written by someone@elsewhere (pid 4242) since ", "pass --break-lock")
    assert json.loads((out / "_lock.json").read_text())["id"] == "0" * 32  # left alone
    r = cli(tmp_path, job, "--scheduler", client.scheduler.address, "--break-lock")
    assert r.returncode == 0, r.stderr
    assert "taking over the lease" in r.stderr and "--break-lock" in r.stderr
    check_exactly_once(demo, str(out), demo["data"], 6000)
    assert not (out / "_lock.json").exists()


def test_a_foreign_lock_file_is_not_removed(demo, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "_lock.json").write_text("my own lock")
    with pytest.raises(JobError, match=r"holds '_lock.json', which is not a dscore lease .*will not remove it"):
        dscore.run({**demo["job"], "output": str(out)}, progress=False, break_lock=True)
    assert (out / "_lock.json").read_text() == "my own lock"


def test_lease_is_renewed_then_removed(tmp_path):
    out = Output(str(tmp_path / "out"))
    with Lease.acquire(out, timeout=0.5) as lease:
        first = json.loads((tmp_path / "out" / "_lock.json").read_text())
        assert first["pid"] == os.getpid() and first["id"] == lease.holder["id"]
        deadline = time.time() + 60
        while json.loads((tmp_path / "out" / "_lock.json").read_text())["renewed"] == first["renewed"]:
            assert time.time() < deadline, "the lease was never renewed"
            time.sleep(0.05)
        with pytest.raises(JobError, match=rf"is being written by .* \(pid {os.getpid()}\)"):
            Lease.acquire(out, timeout=0.5)  # live: this very process
    assert not lease._thread.is_alive()
    assert not (tmp_path / "out" / "_lock.json").exists()


# ---------------------------------------------------------------- the check before _SUCCESS
@pytest.fixture
def scored(demo, tmp_path):
    """An output whose 6 partitions this job's tasks wrote (as workers do), not yet finished,
    and the plan of a job with other fields, whose parts land in the same output."""
    out = str(tmp_path / "out")
    plan = plan_job(JobSpec.from_dict({**demo["job"], "output": out}))
    Output(out).write_json("_job.json", {**plan.header, "token": plan.task.job_token})
    records = {p.index: score_piece(p, plan.task, out, False) for p in plan.pieces}
    fields = [*demo["job"]["fields"][:2], {"name": "apps", "max_len": 32}, demo["job"]["fields"][3]]
    other = plan_job(JobSpec.from_dict({**demo["job"], "output": out, "fields": fields}))
    return {"out": out, "plan": plan, "records": records, "other": other}


def doctor(scored, how):
    out, part = scored["out"], os.path.join(scored["out"], "part-000003.parquet")
    if how == "removed":
        os.remove(part)
    elif how == "file replaced":  # another job's file under this job's record
        tmp = os.path.join(os.path.dirname(out), "other")
        score_piece(scored["other"].pieces[3], scored["other"].task, tmp, False)
        shutil.copy(os.path.join(tmp, "part-000003.parquet"), part)
    elif how == "file and record replaced":
        score_piece(scored["other"].pieces[3], scored["other"].task, out, False)
    elif how == "rows differ":
        t = pq.read_table(part)
        pq.write_table(t.slice(0, 10), part)  # keeps the footer's job token: only the row count differs


@pytest.mark.cluster
@pytest.mark.parametrize(
    "how, problem",
    [
        ("removed", "part-000003.parquet is recorded but missing"),
        ("file replaced", r"part-000003.parquet was written by another job \(token '\w+', this job's is"),
        ("file and record replaced", r"part-000003.parquet is recorded by another job"),
        ("rows differ", "part-000003.parquet holds 10 rows, its record says 1000"),
    ],
)
def test_success_only_after_checking_the_output(demo, client, scored, how, problem):
    doctor(scored, how)
    plan, out = scored["plan"], Output(scored["out"])
    records = scored["records"]
    with pytest.raises(JobError, match=f"is not complete, so _SUCCESS was not written: {problem}.*Rerun the job"):
        _finish(plan.job, plan, out, dict(records), list(records.values()), [], 1.0, "test", None, {})
    assert not out.complete()
    # ... and the rerun it asks for scores that partition again.
    report = dscore.run({**demo["job"], "output": scored["out"]}, client=client, progress=False)
    assert report.status == "complete" and report.scored_partitions == 1
    check_exactly_once(demo, scored["out"], demo["data"], 6000)


def test_success_not_written_after_the_lease_was_lost(scored):
    plan, out = scored["plan"], Output(scored["out"])
    records = scored["records"]
    with Lease.acquire(out, timeout=300) as lease:
        with open(os.path.join(scored["out"], "_lock.json"), "w") as f:
            json.dump(holder(), f)
        with pytest.raises(
            JobError, match=r"this run lost its lease to someone@elsewhere \(pid 4242\).*_SUCCESS was not written"
        ):
            _finish(plan.job, plan, out, dict(records), list(records.values()), [], 1.0, "test", lease, {})
    assert not out.complete()
    assert (
        json.loads(open(os.path.join(scored["out"], "_lock.json")).read())["host"] == "elsewhere"
    )  # not ours to remove


def test_success_not_written_when_job_json_is_another_jobs(scored):
    plan, out = scored["plan"], Output(scored["out"])
    out.write_json("_job.json", {**scored["other"].header, "token": scored["other"].task.job_token})
    records = scored["records"]
    with pytest.raises(
        JobError, match=r"_job.json now describes another job .*_SUCCESS was not written. Rerun the job"
    ):
        _finish(plan.job, plan, out, dict(records), list(records.values()), [], 1.0, "test", None, {})
    assert not out.complete()


def test_dscore_files_without_job_json_need_overwrite(demo, scored):
    """An --overwrite stopped after removing _job.json: a plain rerun cannot tell what
    the parts are and says so; --overwrite removes them (they are dscore's)."""
    os.remove(os.path.join(scored["out"], "_job.json"))
    job = {**demo["job"], "output": scored["out"]}
    with pytest.raises(JobError, match=r"holds dscore files but no _job.json .*pass --overwrite to start over"):
        dscore.run(job, progress=False)
    Output(scored["out"]).clear()
    assert os.listdir(scored["out"]) == []
