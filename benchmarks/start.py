"""Fixed time and autotuning stability: the same job run several times, as a user runs it.

    python benchmarks/start.py JOB.yaml [--runs 3]

Each run is `dscore score JOB --overwrite` in a fresh process on its own LocalCluster.
Printed per run: wall time of the command (interpreter start and exit included),
the report's fixed start (from `dscore.run`'s start to the first partition, less that
partition's own time) and finish (last partition to the end of `dscore.run`, the
cluster's close included), the execution the workers chose and the rates they measured.
Results go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import yaml


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("job")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    output = yaml.safe_load(open(args.job))["output"]
    print(f"{'run':>4}{'wall s':>8}{'start s':>9}{'finish s':>10}{'rows/s':>10}  chosen; measured rows/s")
    for i in range(args.runs):
        t = time.perf_counter()
        r = subprocess.run(
            [sys.executable, "-m", "dscore.cli", "score", args.job, "--overwrite", "--no-progress"],
            capture_output=True, text=True,
        )  # fmt: skip
        wall = time.perf_counter() - t
        if r.returncode:
            print(r.stderr[-3000:], file=sys.stderr)
            return r.returncode
        report = json.load(open(os.path.join(output, "_report.json")))
        tl, model = report["timeline"], report["model"]
        print(
            f"{i + 1:>4}{wall:>8.1f}{tl['start']:>9.2f}{tl['finish']:>10.2f}{report['rows_per_second']:>10,.0f}  "
            f"{'; '.join(model['execution'])}; {' | '.join(model.get('tuning', []))}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
