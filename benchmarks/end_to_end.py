"""End-to-end rows/s on the demo data beside its ceilings and baselines (one run).

    python benchmarks/end_to_end.py [--rows 1000000] [--layout 2x1x1] [--batch-size 8192]

See dscore/bench.py for what each figure measures. Results go to docs/benchmarks.md.
"""

import argparse
import json

from dscore.bench import Layout, end_to_end, format_end_to_end


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--workdir", default="/tmp/dscore-bench")
    ap.add_argument("--layout", default="2x1x1", help="workers x threads per worker x torch threads")
    ap.add_argument("--batch-size", type=int, default=8192)
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()
    layout = Layout(*(int(x) for x in args.layout.split("x")))
    res = end_to_end(f"{args.workdir}-{args.rows}", args.rows, layout, args.batch_size, not args.no_baselines)
    print(format_end_to_end(res))
    if args.json:
        res["dscore"]["report"] = res["dscore"]["report"].to_dict()
        json.dump(res, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
