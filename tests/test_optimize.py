"""Per-worker model speed-ups: batch autotuning and guarded execution modes."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from dscore import ModelSpec, config, encode
from dscore import optimize as opt
from dscore.demo import FIELDS
from dscore.model import Model

from .helpers import captured_logs


@pytest.fixture(scope="module")
def arrays(demo):
    table = pq.read_table(demo["root"] / "part-1.parquet")
    return encode(table, FIELDS, demo["vocab"])


def load(demo, **options):
    return Model.load(ModelSpec(str(demo["root"] / "model.pt"), **options), FIELDS)


def test_scores_do_not_depend_on_the_batch_size(demo, arrays):
    """Bit for bit, for every autotuning candidate, with 2000 rows (a partial last batch)."""
    model = load(demo)
    outs = [model.predict(arrays, bs) for bs in (64, *config.get("tune.batches"))]
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])
    odd = model.predict(arrays, 777)  # not a multiple of 64 rows: the last ulp may differ
    assert np.abs(odd - outs[0]).max() <= 1e-6


def test_autotune_picks_a_measured_candidate(demo, arrays):
    model = load(demo, batch_size="auto")
    with captured_logs("dscore.optimize", logging.INFO) as records:
        info = opt.prepare(model, arrays)
    rates = {int(k): v for k, v in info["batch_rates"].items()}
    assert set(rates) == {b for b in config.get("tune.batches") if b <= 2000}
    assert model.batch_size == max(rates, key=rates.get) == info["batch_size"]
    assert any("batch" in r.getMessage() and "rows/s plain" in r.getMessage() for r in records)


def test_tuning_reads_the_dscore_settings_when_it_runs(demo, arrays):
    import dask

    model = load(demo, batch_size="auto", optimize="none")
    with dask.config.set({"dscore.tune.batches": [128, 512], "dscore.tune.rounds": 1, "dscore.tune.confirm-rounds": 0}):
        info = opt.prepare(model, arrays)
    assert set(info["batch_rates"]) == {"128", "512"} and model.batch_size in (128, 512)


def test_fixed_batch_size_turns_autotuning_off(demo, arrays):
    model = load(demo, batch_size=300, optimize="none")
    info = opt.prepare(model, arrays)
    assert model.batch_size == 300 and "batch_rates" not in info and model.mode == "none"


def test_freeze_is_exact(demo, arrays):
    model = load(demo, batch_size=512, optimize="freeze")
    plain = model.predict(arrays)
    opt.prepare(model, arrays)
    assert model.mode == "freeze"
    assert np.abs(model.predict(arrays) - plain).max() <= 1e-6


def test_guard_falls_back_when_scores_change(demo, arrays, monkeypatch):
    class Off(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *x):
            return self.inner(*x) + 1e-3

    monkeypatch.setitem(opt.BUILDERS, "freeze", lambda m: (Off(m.module), None))
    model = load(demo, batch_size=512, optimize="freeze")
    with captured_logs("dscore.optimize", logging.WARNING) as records:
        opt.prepare(model, arrays)
    assert model.mode == "none"
    assert any("changes scores by up to 1.00e-03 > tolerance 1e-06" in r.getMessage() for r in records)


def test_compile_needs_an_eager_model(demo, arrays):
    model = load(demo, batch_size=512, optimize="compile")
    with captured_logs("dscore.optimize", logging.WARNING) as records:
        opt.prepare(model, arrays)
    assert model.mode == "none"
    assert any("compile needs an eager or torch.export model" in r.getMessage() for r in records)


def test_auto_compiles_only_long_jobs(demo, arrays):
    spec = ModelSpec(str(demo["root"] / "state.pt"), factory="dscore.demo:build_model", batch_size=512,
                     factory_kwargs={"vocab_sizes": demo["sizes"], "dim": 8, "hidden": [16]})  # fmt: skip
    model = Model.load(spec, FIELDS)
    assert opt._auto_mode(model, plain_rate=100_000, rows_hint=1_000_000) == "none"  # 10 s of work
    assert opt._auto_mode(model, plain_rate=100_000, rows_hint=100_000_000) == "compile"
    assert opt._auto_mode(load(demo), plain_rate=100_000, rows_hint=None) == "freeze"


@pytest.mark.slow
def test_compile_pads_the_last_batch_and_is_exact(demo, arrays):
    """torch.compile (inductor) of the eager model: static shapes, padded last batch."""
    spec = ModelSpec(str(demo["root"] / "state.pt"), factory="dscore.demo:build_model", batch_size=512,
                     optimize="compile", factory_kwargs={"vocab_sizes": demo["sizes"], "dim": 8, "hidden": [16]})  # fmt: skip
    model = Model.load(spec, FIELDS)
    plain = model.predict(arrays)
    opt.prepare(model, arrays)
    assert model.mode == "compile" and model.pad
    got = model.predict(arrays)  # 2000 rows: three full batches and one padded
    assert np.abs(got - plain).max() <= 1e-6


def test_race_interleaves_rotating_rounds_and_takes_medians():
    """A burst of load that hits one round falls on every candidate alike, and one
    outlier timing does not decide."""
    calls = []
    timings = {"a": iter([10, 10, 99, 10, 10]), "b": iter([20, 20, 20, 1, 20]), "c": iter([5, 5, 5, 5, 5])}

    def run(name):
        calls.append(name)
        return next(timings[name])

    rates = opt.race({n: (lambda n=n: run(n)) for n in "abc"}, rounds=5)
    assert rates == {"a": 10.0, "b": 20.0, "c": 5.0}
    firsts = [calls[i] for i in range(0, 15, 3)]
    assert firsts == ["a", "b", "c", "a", "b"]  # each round starts with the next candidate
    assert all(sorted(calls[i : i + 3]) == ["a", "b", "c"] for i in range(0, 15, 3))


def test_autotune_keeps_the_best_median_after_the_confirmation_race(demo, arrays, monkeypatch):
    """The two best candidates race again and the kept size is the best over all rounds."""
    model = load(demo, batch_size="auto")
    speed = {256: 100.0, 1024: 300.0}
    monkeypatch.setattr(opt, "_pass_rate", lambda m, sample, b: speed[b])
    best, rates = opt.autotune_batch(model, {n: a[:1024] for n, a in arrays.items()})
    assert best == 1024 and rates == {256: 100.0, 1024: 300.0}
