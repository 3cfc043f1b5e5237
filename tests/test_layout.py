"""The worker layout rule (dscore.layout): one function that every launcher uses."""

from __future__ import annotations

import subprocess
import sys

import dask.config
import pytest

from dscore.layout import Layout, layout, torch_threads


@pytest.mark.parametrize(
    "cores, want",
    [(1, (1, 1, 1)), (2, (1, 2, 1)), (4, (1, 4, 1)), (6, (1, 6, 1)), (8, (2, 4, 1)), (16, (4, 4, 1)), (64, (16, 4, 1))],
)
def test_one_worker_per_4_cores_a_dask_thread_per_core(cores, want):
    got = layout(cores)
    assert got == want and got.workers * got.threads * got.torch_threads <= cores


def test_given_values_win_and_the_rest_follow():
    assert layout(16, workers=2) == (2, 8, 1)
    assert layout(16, workers=2, threads=2) == (2, 2, 4)  # the cores left go to torch
    assert layout(16, torch=2) == (4, 2, 2)
    assert layout(2, workers=2, threads=2, torch=3) == (2, 2, 3)  # oversubscribed, as asked


def test_gpu_workers_one_per_gpu_at_least_two_threads():
    assert layout(16, gpus=4) == (4, 4, 1)
    assert layout(16, gpus=8).threads == 2 and layout(16, gpus=1).threads == 16
    assert layout(2, gpus=4).threads == 2


def test_the_rule_reads_its_values_from_config():
    with dask.config.set({"dscore.layout.cores-per-worker": 1, "dscore.layout.gpu-min-threads": 3}):
        assert layout(4) == (4, 1, 1)
        assert layout(16, gpus=8).threads == 3
    with dask.config.set({"dscore.layout.torch-threads": 2}):
        assert layout(16) == (4, 2, 2)


def test_torch_threads_share_the_cores_among_dask_threads():
    assert torch_threads(16, 4) == 4 and torch_threads(2, 4) == 1 and torch_threads(8, 0) == 8


def test_command_line_prints_workers_threads_torch_threads():
    out = subprocess.run(
        [sys.executable, "-m", "dscore.layout", "--cores", "16", "--workers", "2"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert Layout(*map(int, out.stdout.split())) == layout(16, workers=2)
