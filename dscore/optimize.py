"""Make a loaded model fast on this worker: micro-batch size and execution mode.

Runs once per worker process, on the first partition's real rows:

* **batch size** (``model.batch_size: auto``): time each candidate size and keep the
  fastest. On CPU the best size is often far below what fits in memory: the
  ``(batch, max_len, dim)`` embedding intermediate should stay in cache.
* **execution mode** (``model.optimize``): ``freeze`` runs a TorchScript model
  through ``torch.jit.freeze`` and ``optimize_for_inference``; ``compile`` runs an
  eager or ``torch.export`` model through ``torch.compile`` (CUDA graphs on GPU),
  with static shapes, the last micro-batch padded so nothing recompiles; ``auto``
  freezes TorchScript when that is faster, and compiles only when the worker's
  share of the job is long enough to repay the compilation. Neither applies to an
  ONNX model (ONNX Runtime optimizes its graph when the session starts): it runs
  plain, with its batch size tuned like any other. ``compile`` is refused for jagged
  inputs (``model.inputs: jagged``): their values' length changes with every batch,
  which static shapes would recompile for; ``freeze`` works on them.

Every optimized mode is guarded: before use, one batch of real rows goes through
the plain and the optimized model, and a max absolute difference above
``model.tolerance`` falls back to plain with one log line. Scores do not depend on
the batch size (micro-batches are independent rows).

The tuning budget is the ``dscore.tune`` settings (``dscore.config``, defaults in
``dscore.yaml``): rows, candidate batch sizes, rounds, what a compile costs.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from . import config

log = logging.getLogger(__name__)

# Tuning runs while the worker's other threads read and encode (or while the client
# plans), so one short timing per candidate picked a different size on each run
# (4096, 1024, 256 for one job, with 3.8x between them). Candidates are timed in
# interleaved rounds (tune.rounds), each pass over all tune.rows rows, and compared
# by median; the two best then race again (tune.confirm-rounds) before one is kept.
#
# A first torch.compile of the demo model took 12.8 s on one core here (later ones
# hit inductor's disk cache: ~1 s). A worker compiles only when its plain inference
# time would be tune.compile-payback times tune.compile-seconds, so short jobs never
# pay for it.


def rows_per_second(model, arrays: dict, batch_size: int, min_seconds: float = 0.03) -> float:
    """Throughput of ``model.predict`` on ``arrays`` at ``batch_size`` (after one warm-up batch)."""
    rows = next(iter(arrays.values())).shape[0]
    model.predict({n: a[: min(rows, batch_size)] for n, a in arrays.items()}, batch_size)
    done, start = 0, time.perf_counter()
    while True:
        model.predict(arrays, batch_size)
        done += rows
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return done / elapsed


def _pass_rate(model, sample: dict, batch_size: int) -> float:
    """Rows/s of one pass of ``model.predict`` over ``sample``."""
    rows = next(iter(sample.values())).shape[0]
    start = time.perf_counter()
    model.predict(sample, batch_size)
    return rows / max(time.perf_counter() - start, 1e-9)


def race(runs: dict, rounds: int) -> dict:
    """Median rate of each of ``runs`` (name -> a function returning rows/s of one
    timed pass), timed in ``rounds`` interleaved rounds whose order rotates, so
    that a burst of load elsewhere falls on every candidate alike."""
    names = list(runs)
    rates: dict = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            rates[n].append(runs[n]())
    return {n: float(np.median(v)) for n, v in rates.items()}


def autotune_batch(model, arrays: dict) -> tuple[int, dict]:
    """The fastest candidate micro-batch size (``tune.batches``) on (up to ``tune.rows``)
    real rows, and the median rate of each candidate."""
    sample = {n: a[: config.get("tune.rows")] for n, a in arrays.items()}
    n = next(iter(sample.values())).shape[0]
    candidates = [b for b in config.get("tune.batches") if b <= n] or [n]
    for b in candidates:  # one untimed pass each: first calls allocate and specialise
        model.predict(sample, b)
    runs = {b: (lambda b=b: _pass_rate(model, sample, b)) for b in candidates}
    rounds, confirm = config.get("tune.rounds"), config.get("tune.confirm-rounds")
    rates = race(runs, rounds)
    top = sorted(rates, key=rates.get, reverse=True)[:2]
    if len(top) == 2 and confirm:  # confirm: the two best race again; their medians over all rounds decide
        again = race({b: runs[b] for b in top}, confirm)
        for b in top:
            rates[b] = (rates[b] * rounds + again[b] * confirm) / (rounds + confirm)
    return max(rates, key=rates.get), rates


ONNX_NOTE = "an ONNX model runs in ONNX Runtime, which optimizes its graph itself"


def _is_onnx(model) -> bool:
    from .onnx_model import OnnxModule

    return isinstance(model.module, OnnxModule)


def _freeze(model):
    import torch

    if _is_onnx(model):
        return None, f"freeze needs a TorchScript model; {ONNX_NOTE}"
    if not isinstance(model.module, torch.jit.ScriptModule):
        return None, "freeze needs a TorchScript model"
    return torch.jit.optimize_for_inference(torch.jit.freeze(model.module)), None


def _compile(model):
    import torch

    if _is_onnx(model):
        return None, f"compile needs a torch model; {ONNX_NOTE}"
    if isinstance(model.module, torch.jit.ScriptModule):
        return None, "compile needs an eager or torch.export model (TorchScript can be frozen)"
    if model.jagged:  # values' length differs in every batch: static shapes would recompile each time
        return None, "compile needs static shapes, and jagged inputs (model.inputs: jagged) vary in length per batch"
    mode = "reduce-overhead" if str(model.device).startswith("cuda") else None  # CUDA graphs
    return torch.compile(model.module, dynamic=False, mode=mode), None


BUILDERS = {"freeze": _freeze, "compile": _compile}


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0


def try_mode(model, mode: str, arrays: dict) -> tuple[bool, str]:
    """Switch ``model`` to ``mode`` if it builds and matches plain within tolerance."""
    runner, why = BUILDERS[mode](model)
    if runner is None:
        return False, why
    probe = {n: a[: model.batch_size] for n, a in arrays.items()}
    plain = model.predict(probe)
    model.use(runner, mode, pad=(mode == "compile"))
    try:
        fast = model.predict(probe)  # for compile: compiles now, at the final batch size
    except Exception as e:  # noqa: BLE001 - any failure means: stay plain
        model.use(None, "none")
        return False, f"{mode} failed: {type(e).__name__}: {e}"
    diff = _max_diff(plain, fast)
    if diff > model.spec.tolerance:
        model.use(None, "none")
        return False, f"{mode} changes scores by up to {diff:.2e} > tolerance {model.spec.tolerance:.0e}"
    return True, f"max diff {diff:.1e}"


def prepare(model, arrays: dict, rows_hint: int | None = None) -> dict:
    """Choose the batch size and execution mode of ``model`` on real rows; return what was chosen."""
    info: dict = {}
    sample = {n: a[: config.get("tune.rows")] for n, a in arrays.items()}
    if model.spec.batch_size == "auto":
        model.batch_size, rates = autotune_batch(model, arrays)
        info["batch_rates"] = {str(k): round(v) for k, v in rates.items()}
        plain_rate = rates[model.batch_size]
    else:
        plain_rate = rows_per_second(model, sample, model.batch_size)
    wanted = model.spec.optimize
    if wanted == "auto":
        wanted = _auto_mode(model, plain_rate, rows_hint)
    if wanted in BUILDERS:
        ok, why = try_mode(model, wanted, arrays)
        if ok and model.spec.optimize == "auto":  # auto keeps a mode only if it is faster here
            rate, plain_rate = _race_mode(model, sample)
            info["mode_rates"] = {"none": round(plain_rate), wanted: round(rate)}
            if rate <= plain_rate:
                model.use(None, "none")
                ok, why = False, f"{wanted} was not faster ({rate:,.0f} vs {plain_rate:,.0f} rows/s)"
        level = logging.INFO if ok or model.spec.optimize == "auto" else logging.WARNING
        log.log(level, "model.optimize %s: %s%s", wanted, "using it; " if ok else "plain instead: ", why)
        info["optimize_note"] = why
    info.update(batch_size=model.batch_size, mode=model.mode, plain_rows_per_s=round(plain_rate))
    log.info(
        "model %s: batch %d, mode %s (%s rows/s plain)",
        model.spec.path,
        model.batch_size,
        model.mode,
        f"{plain_rate:,.0f}",
    )
    return info


def _race_mode(model, sample: dict) -> tuple[float, float]:
    """Median rates of the model's current (optimized) runner and of the plain model,
    interleaved; the optimized runner stays in use."""
    runner, mode, pad = model.runner, model.mode, model.pad

    def timed(use):
        model.use(*use)
        return _pass_rate(model, sample, model.batch_size)

    runs = {"fast": lambda: timed((runner, mode, pad)), "plain": lambda: timed((None, "none"))}
    rates = race(runs, config.get("tune.rounds"))
    model.use(runner, mode, pad)
    return rates["fast"], rates["plain"]


def _auto_mode(model, plain_rate: float, rows_hint: int | None) -> str:
    import torch

    if isinstance(model.module, torch.jit.ScriptModule):
        return "freeze"
    if _is_onnx(model):
        return "none"
    if rows_hint and rows_hint / plain_rate > config.get("tune.compile-payback") * config.get("tune.compile-seconds"):
        return "compile"
    return "none"
