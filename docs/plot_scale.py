#!/usr/bin/env python3
"""Draws the scaling curve of docs/benchmarks.md from the scale benchmark's results.

Each run of `make bench` (or of bench_scale_many_services alone) writes
bench-results/scale-<pods>.json. This reads every one of them and draws memory, CPU and
writes against the pod count, the operator beside the controller manager, into
docs/benchmarks-scale.png; the dates of rows that carry one ("date") go in the legend.
Needs matplotlib (`pip install matplotlib`).

    python3 docs/plot_scale.py [RESULTS_DIR] [OUT_PNG]
"""

import glob
import json
import os
import re
import sys

import matplotlib

matplotlib.use("Agg")  # no display: a file only
import matplotlib.pyplot as plt  # noqa: E402


def load(results_dir):
    points = {}
    for path in glob.glob(os.path.join(results_dir, "scale-*.json")):
        # scale-<pods>.json only: a run with tuned operator flags is not a point of the curve.
        if not re.fullmatch(r"scale-\d+\.json", os.path.basename(path)):
            continue
        with open(path) as f:
            rows = json.load(f)["results"]
        for row in rows:
            points.setdefault(row["controller"], []).append(row)
    for rows in points.values():
        rows.sort(key=lambda r: r["pods"])
    return points


def series(rows, *keys):
    xs, ys = [], []
    for r in rows:
        value = next((r[k] for k in keys if k in r), None)
        if value is not None:
            xs.append(r["pods"])
            ys.append(value)
    return xs, ys


def main():
    results_dir = sys.argv[1] if len(sys.argv) > 1 else "bench-results"
    out = sys.argv[2] if len(sys.argv) > 2 else "docs/benchmarks-scale.png"
    points = load(results_dir)
    if "perennial" not in points:
        sys.exit(f"no scale results in {results_dir}: run the scale benchmark first")
    ours = points["perennial"]
    theirs = points.get("deployment", [])
    panels = [
        ("Memory (MiB)", ("peak_rss_mib",), ("controller_manager_rss_mib",),
         "Perennial, peak RSS", "controller manager, RSS (all its controllers)"),
        ("CPU while converging (s)", ("cpu_seconds_converging",),
         ("controller_manager_cpu_seconds_converging",),
         "Perennial", "controller manager"),
        ("Writes while converging (Events included)", ("writes_converging",),
         ("writes_converging",), "Perennial", "Deployment + ReplicaSet controllers"),
    ]
    # Above, the totals; below, the same divided by the pods: flat or falling is the goal.
    per_pod = [("KiB per pod", 1024.0), ("CPU ms per pod", 1000.0), ("writes per pod", 1.0)]
    fig, axes = plt.subplots(2, len(panels), figsize=(15, 8.5))
    for col, (title, our_keys, their_keys, our_label, their_label) in enumerate(panels):
        for row in (0, 1):
            ax = axes[row][col]
            scale = per_pod[col][1]
            for rows, keys, style, colour, label in (
                (ours, our_keys, "o-", "tab:green", our_label),
                (theirs, their_keys, "s--", "tab:gray", their_label),
            ):
                x, y = series(rows, *keys)
                if not x:
                    continue
                # A row may say when it was measured: the legend names the runs drawn.
                dates = sorted({r["date"] for r in rows if "date" in r})
                if dates:
                    label = f"{label} ({', '.join(dates)})"
                if row == 1:
                    y = [v * scale / p for v, p in zip(y, x)]
                ax.plot(x, y, style, color=colour, label=label)
            ax.set_title(title if row == 0 else per_pod[col][0])
            ax.set_xlabel("pods (10 per service)")
            ax.set_xscale("log")
            if row == 0:
                ax.set_yscale("log")
            else:
                ax.set_ylim(0, ax.get_ylim()[1] * 1.2)  # room for the legend
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle("Scale: one run per size and side; totals (log-log) and per pod")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out} from {sum(len(r) for r in points.values())} results")


if __name__ == "__main__":
    main()
