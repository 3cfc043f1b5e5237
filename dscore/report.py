"""What a job reports: the ``Report`` it returns and writes as ``_report.json``, and
the progress bar it shows while it runs.

``Report.build`` sums the records of the partitions a run scored (rows, per-stage
seconds, per-field token statistics, what each worker's model tuning chose);
``Report.format`` is the summary ``dscore score`` prints.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass

from .encoding import FieldStats

STAGES = ("read", "encode", "tune", "predict", "write")


@dataclass
class Report:
    """What a job did. ``status``: complete, partial (partitions quarantined) or failed."""

    job: str
    output: str
    status: str
    partitions: int
    rows: int
    scored_partitions: int
    resumed_partitions: int
    quarantined: list
    wall_seconds: float
    rows_scored: int
    rows_per_second: float
    stages: dict
    fields: dict
    model: dict
    cluster: str
    peak_worker_rss: int
    # Seconds from the start of ``run``: plan (the client's planning done), cluster
    # (cluster up, plugin registered), start (the first partition done, less its own
    # time: the job's fixed start); finish: from the last partition to the end.
    timeline: dict = dataclasses.field(default_factory=dict)
    # A job with ``models``: each model by name, as ``model`` is for a single one
    # (path, fingerprint, outputs, execution, tuning), with ``rows_per_second``: the
    # rows this run scored over that model's predict time (summed over tasks).
    # ``model`` then holds only every ``outputs``.
    models: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def build(
        cls,
        spec,
        plan,
        records: dict,
        this_run: list,
        quarantined: list,
        *,
        complete: bool,
        wall: float,
        cluster: str,
        timeline: dict,
    ) -> Report:
        """The report of a run of ``spec`` (planned as ``plan``): ``records`` of every
        partition done by now, ``this_run`` those this run scored, ``quarantined`` the
        entries of partitions set aside; ``wall`` seconds, on ``cluster`` (its label)."""
        stats = {f.name: FieldStats() for f in spec.fields}
        stages = dict.fromkeys(STAGES, 0.0)
        for rec in this_run:
            for name, s in rec["stats"].items():
                stats[name].add(FieldStats(**s))
            for k, v in rec["seconds"].items():
                stages[k] += v
        rows_scored = sum(r["rows"] for r in this_run)
        if plan.task.models[0].name is None:
            model = {
                "path": spec.model.path,
                "fingerprint": plan.task.model_fp,
                "outputs": plan.outputs,
                **_execution([r["model"] for r in this_run]),
            }
            models = {}
        else:
            model = {"outputs": plan.outputs}
            models = {}
            for m in plan.task.models:
                ran = [r["models"][m.name] for r in this_run]
                predict = sum(x.get("predict_seconds", 0.0) for x in ran)
                models[m.name] = {
                    "path": m.spec.path,
                    "fingerprint": m.fingerprint,
                    "outputs": list(m.columns),
                    **_execution(ran),
                    "rows_per_second": rows_scored / predict if predict > 0 else 0.0,
                }
        return cls(
            job=spec.source,
            output=spec.output,
            status="complete" if complete else "partial",
            partitions=len(plan.pieces),
            rows=sum(r["rows"] for r in records.values()),
            scored_partitions=len(this_run),
            resumed_partitions=len(records) - len(this_run),
            quarantined=[{"partition": q["index"], "error": q["error"]} for q in quarantined],
            wall_seconds=wall,
            rows_scored=rows_scored,
            rows_per_second=rows_scored / wall if wall > 0 else 0.0,
            stages=stages,
            fields={f.name: {"kind": f.kind, **stats[f.name].summary()} for f in spec.fields},
            model=model,
            cluster=cluster,
            peak_worker_rss=max((r.get("worker_peak_rss", 0) for r in this_run), default=0),
            timeline=dict(timeline),
            models=models,
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def format(self) -> str:
        lines = [
            f"dscore {self.status}: {self.rows:,} rows in {self.partitions} partitions -> {self.output}",
            f"  this run: {self.rows_scored:,} rows in {self.scored_partitions} partitions, "
            f"{self.wall_seconds:.1f}s, {self.rows_per_second:,.0f} rows/s"
            + (f" ({self.resumed_partitions} partitions were already done)" if self.resumed_partitions else ""),
        ]
        total = sum(self.stages.values()) or 1.0
        lines.append(
            "  task time: "
            + ", ".join(f"{k} {v:.1f}s ({v / total:.0%})" for k, v in self.stages.items())
            + f"; peak worker RSS {self.peak_worker_rss / 2**20:,.0f} MiB"
        )
        if self.timeline.get("start") is not None:
            t = self.timeline
            lines.append(
                f"  fixed time: start {t['start']:.1f}s (client planned in {t['plan']:.1f}s, cluster ready at "
                f"{t.get('cluster', 0):.1f}s), finish {t.get('finish', 0):.1f}s"
            )
        if self.model.get("execution"):
            lines.append(f"  model: {'; '.join(self.model['execution'])}")
        lines.extend(_tuning_lines(self.model))
        for name, m in self.models.items():
            lines.append(
                f"  model {name} ({', '.join(m['outputs'])}): {'; '.join(m['execution']) or 'not run'}"
                + (f"; predict {m['rows_per_second']:,.0f} rows/s per thread" if m.get("rows_per_second") else "")
            )
            lines.extend(_tuning_lines(m))
        lines.append(f"  {'field':<16}{'OOV rate':>10}{'truncated':>11}{'tokens/row':>12}")
        for name, s in self.fields.items():
            if s.get("kind") == "numeric":  # no tokens: what matters is how much was missing
                values = s["filled"] / max(s["rows"], 1)
                lines.append(f"  {name:<16} numeric: {s['filled']:,} values null or NaN, filled ({values:.2f} per row)")
                continue
            lines.append(f"  {name:<16}{s['oov_rate']:>10.2%}{s['truncation_rate']:>11.2%}{s['mean_tokens']:>12.1f}")
        if self.quarantined:
            lines.append(f"  QUARANTINED {len(self.quarantined)} partitions (see _quarantine.json); output is partial:")
            lines.extend(f"    {q['error']}" for q in self.quarantined[:5])
        return "\n".join(lines)


def _execution(ran: list) -> dict:
    """What the workers chose for a model (dscore.optimize), from each partition's
    record of it: ``execution`` ("batch 1024, freeze") and, per worker process, what
    autotuning measured (``tuning``: rows/s by batch size and mode)."""
    tuning = {json.dumps({k: x[k] for k in ("batch_rates", "mode_rates") if k in x}, sort_keys=True) for x in ran}
    return {
        "execution": sorted({f"batch {x['batch_size']}, {x['mode']}" for x in ran}),
        "tuning": sorted(tuning - {"{}"}),
    }


def _tuning_lines(model: dict) -> list:
    lines = []
    for tuning in model.get("tuning", []):
        rates = json.loads(tuning)
        lines.append(
            "    tuned on a worker, rows/s: "
            + ", ".join(
                f"batch {b} {r:,}" for b, r in sorted(rates.get("batch_rates", {}).items(), key=lambda kv: int(kv[0]))
            )
            + "".join(f"; {m} {r:,}" for m, r in rates.get("mode_rates", {}).items())
        )
    return lines


class Progress:
    """A progress bar over partitions on stderr (a line every 10% when not a terminal)."""

    def __init__(self, total: int, done: int, enabled: bool):
        self.total, self.done, self.rows = total, done, 0
        self.enabled = enabled and total > 0
        self.tty = sys.stderr.isatty()
        self.start = time.perf_counter()
        self._last_decile = -1

    def update(self, rows: int) -> None:
        self.done += 1
        self.rows += rows
        if not self.enabled:
            return
        frac = self.done / self.total
        rate = self.rows / max(time.perf_counter() - self.start, 1e-9)
        line = (
            f"[{'#' * int(30 * frac):<30}] {self.done}/{self.total} partitions, {self.rows:,} rows, {rate:,.0f} rows/s"
        )
        if self.tty:
            print("\r" + line, end="", file=sys.stderr, flush=True)
        elif int(frac * 10) > self._last_decile:
            self._last_decile = int(frac * 10)
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled and self.tty:
            print(file=sys.stderr)
