"""Plots for docs/benchmarks.md from `dscore bench --json` files.

python benchmarks/plots.py docs/bench-1m.json docs/bench-10m.json --out docs/
"""

import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--out", default="docs")
    args = ap.parse_args()
    runs = sorted((json.load(open(f)) for f in args.files), key=lambda r: r["rows"])
    e2e = [r["end_to_end"] for r in runs if "end_to_end" in r]

    fig, ax = plt.subplots(figsize=(7, 4))
    rows = [r["rows"] for r in e2e]
    series = {
        "dscore end to end": [r["dscore"]["rows_per_s"] for r in e2e],
        "model-only ceiling": [r["model_only"]["rows_per_s"] for r in e2e],
        "serial ceiling": [r["serial_ceiling"] for r in e2e],
        "plain Dask + pandas": [r.get("plain_dask", {}).get("rows_per_s") for r in e2e],
        "single process pandas": [r.get("single_process", {}).get("rows_per_s") for r in e2e],
    }
    for name, ys in series.items():
        pts = [(x, y) for x, y in zip(rows, ys) if y]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("rows scored")
    ax.set_ylabel("rows/s")
    ax.set_title(f"demo job, {e2e[0]['machine'].split(',')[1].strip()}, layout {e2e[0]['layout']}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "rows_per_s_vs_rows.png"), dpi=110)

    sweep = next((r["sweep"] for r in runs if r.get("sweep")), None)
    if sweep:
        fig, ax = plt.subplots(figsize=(7, 4))
        labels = [f"{s['layout']}\nbatch {s['batch']}" for s in sweep]
        ax.bar(range(len(sweep)), [s["rows_per_s"] for s in sweep], color="tab:blue")
        ax2 = ax.twinx()
        ax2.plot(range(len(sweep)), [s["peak_rss"] / 2**20 for s in sweep], "o", color="tab:red")
        ax2.set_ylabel("workers' peak RSS (MiB)", color="tab:red")
        ax.set_xticks(range(len(sweep)), labels, fontsize=7)
        ax.set_ylabel("rows/s end to end")
        ax.set_title("worker layout (processes x threads x torch threads) and batch size")
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, "rows_per_s_vs_layout.png"), dpi=110)


if __name__ == "__main__":
    main()
