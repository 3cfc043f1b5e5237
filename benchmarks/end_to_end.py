"""End-to-end rows/s on the demo data beside its ceilings and baselines (one run).

    python benchmarks/end_to_end.py [--rows 1000000] [--layout 2x1x1]

The same as `dscore bench --sweep-layouts '' --sweep-batches ''`; see dscore/bench.py
for what each figure measures. Results go to docs/benchmarks.md.
"""

import sys

from dscore.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--sweep-layouts", "", "--sweep-batches", "", *sys.argv[1:]]))
