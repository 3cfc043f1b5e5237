"""Expected failures of a real `dscore score` end in one line that says what happened
and whether a rerun resumes: a full disk, a read-only output, a lost scheduler, Ctrl-C."""

from __future__ import annotations

import contextlib
import glob
import os
import signal
import socket
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
import yaml

from dscore.demo import make_table, package_names

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture(scope="module")
def slow_job(demo, tmp_path_factory):
    """A job of 120 small partitions, long enough to be interrupted."""
    root = tmp_path_factory.mktemp("slowjob")
    apps = package_names(5000)
    for i in range(6):
        pq.write_table(
            make_table(2000, seed=200 + i, first_id=2000 * i, apps=apps), root / f"s{i}.parquet", row_group_size=100
        )
    return {**demo["job"], "input": str(root / "s*.parquet"), "partition_rows": 100}


def write_job(tmp_path, job):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return str(path)


def one_line_error(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("dscore: error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return errors[0]


def wait_for_parts(output, n=3, timeout=180):
    deadline = time.time() + timeout
    while len(glob.glob(os.path.join(output, "_parts", "*.json"))) < n:
        assert time.time() < deadline, f"fewer than {n} partitions in {timeout}s"
        time.sleep(0.05)


@contextlib.contextmanager
def tmpfs(path, options: str):
    """A tmpfs mounted at ``path`` with ``options`` for the block (skips without root)."""
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip(f"cannot mount a tmpfs ({options}) here: needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)])


def score_onto(tmp_path, slow_job, output) -> str:
    """``dscore score`` of ``slow_job`` onto ``output``: it must fail, in one line; that line."""
    job = write_job(tmp_path, {**slow_job, "output": str(output), "workers": 1, "threads_per_worker": 1})
    r = subprocess.run([sys.executable, "-m", "dscore.cli", "score", job, "--no-progress"],
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 1, r.stdout + r.stderr
    return one_line_error(r.stderr)


def test_disk_full_is_one_line_and_resumable(slow_job, tmp_path):
    with tmpfs(tmp_path / "small", "size=192k") as mnt:
        line = score_onto(tmp_path, slow_job, mnt / "out")
        assert "No space left on device" in line and str(mnt / "out") in line and "rerun" in line and "resumes" in line
        assert not os.path.exists(mnt / "out" / "_SUCCESS")


def test_read_only_output_is_one_line(slow_job, tmp_path):
    """Permission denied, as root sees it: a read-only file system (root passes mode bits)."""
    with tmpfs(tmp_path / "ro", "size=1m,ro") as mnt:
        line = score_onto(tmp_path, slow_job, mnt / "out")
        assert "Read-only file system" in line and str(mnt) in line and "rerun" in line


def test_interrupted_exits_130_and_says_it_resumes(slow_job, tmp_path):
    out = tmp_path / "out"
    job = write_job(tmp_path, {**slow_job, "output": str(out), "workers": 1, "threads_per_worker": 1})
    # A suite started in the background (`pytest &` from a script) runs with SIGINT
    # ignored, and a child inherits that: start it with Python's own handler.
    ignored = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "dscore.cli", "score", job, "--no-progress"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    finally:
        signal.signal(signal.SIGINT, ignored)
    wait_for_parts(str(out))
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    assert "interrupted; rerun the same command to resume" in stderr and "Traceback" not in stderr
    assert not os.path.exists(out / "_SUCCESS")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_scheduler_lost_is_one_line_naming_it(slow_job, tmp_path):
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                  "--port", str(port), "--dashboard-address", ":0"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                               "--host", "127.0.0.1", "--dashboard-address", ":0"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        out = tmp_path / "out"
        job = write_job(tmp_path, {**slow_job, "output": str(out)})
        proc = subprocess.Popen([sys.executable, "-m", "dscore.cli", "score", job, "--no-progress", "--scheduler", address],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        wait_for_parts(str(out))
        scheduler.send_signal(signal.SIGKILL)
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 1, stderr[-3000:]
        line = one_line_error(stderr)
        assert f"lost the scheduler at {address}" in line and "rerun: the job resumes" in line
    finally:
        for p in (worker, scheduler):
            p.kill()
            p.wait()
