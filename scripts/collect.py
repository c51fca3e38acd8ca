#!/usr/bin/env python3
"""Summarise the CSV rows that jobs/spa.sbatch appends, and plot them.

    python3 scripts/collect.py results/spa.csv [more.csv ...] [--out results/summary]

Rows are grouped into series. A strong-scaling series holds one problem
(sweep, n, heads, dim, threads, pattern) at several rank counts; a weak one
(sweep tag starting with "weak") holds one problem size per rank. Repeated
runs of one point are reduced to their median. Efficiency is measured against
the series' smallest rank count p0:

    strong: E(p) = T(p0) * p0 / (T(p) * p)        weak: E(p) = T(p0) / T(p)

Writes summary.csv and four PNGs into --out: time_vs_ranks.png,
efficiency.png, time_split.png (stacked compute/halo/global/rma/io/other of
the median run, with its measured total as a black bar), bytes_per_rank.png (mean received bytes per rank, from the
bytes_*_total columns, or the per-rank maximum where no total is recorded).
Seconds are the slowest rank's, as spa reports them.
"""
import argparse
import csv
import math
import os
import statistics
import sys
from collections import defaultdict

PARTS = ["compute", "halo", "global", "rma", "io"]
BYTES = ["halo", "global", "rma"]
PATTERN = ["block", "local_blocks", "radius", "random", "seed", "causal", "globals"]


def num(row, key, default=math.nan):
    v = row.get(key, "")
    try:
        return float(v) if v not in ("", None) else default
    except ValueError:
        return default


def read_rows(paths, sweep_filter):
    rows = []
    for p in paths:
        with open(p, newline="") as f:
            for r in csv.DictReader(f):
                if sweep_filter and r.get("sweep") not in sweep_filter:
                    continue
                if math.isnan(num(r, "seconds_total")) or math.isnan(num(r, "ranks")):
                    continue
                rows.append(r)
    return rows


def series_key(r):
    weak = r.get("sweep", "").startswith("weak")
    n = int(num(r, "n"))
    size = ("n/rank", n // max(1, int(num(r, "ranks")))) if weak else ("n", n)
    return (r.get("sweep", ""), "weak" if weak else "strong", size,
            int(num(r, "heads")), int(num(r, "dim")), int(num(r, "threads", 1)),
            tuple(r.get(k, "") for k in PATTERN))


def label(key):
    sweep, kind, (sname, size), heads, dim, threads, _ = key
    return f"{sweep}: {sname}={size}, H={heads}, D={dim}, {threads} thr/rank"


def summarise(rows):
    groups = defaultdict(lambda: defaultdict(list))
    for r in rows:
        groups[series_key(r)][int(num(r, "ranks"))].append(r)
    summary = []
    for key in sorted(groups, key=str):
        points = groups[key]
        p0 = min(points)
        t0 = None
        for p in sorted(points):
            runs = points[p]
            times = [num(r, "seconds_total") for r in runs]
            med = statistics.median(times)
            # The run closest to the median gives the time split, so the bar
            # adds up to a time that was actually measured.
            rep = min(runs, key=lambda r: abs(num(r, "seconds_total") - med))
            if t0 is None:
                t0 = med
            if key[1] == "strong":
                eff = t0 * p0 / (med * p) if med > 0 else math.nan
            else:
                eff = t0 / med if med > 0 else math.nan
            s = {
                "series": label(key), "sweep": key[0], "kind": key[1],
                "n": int(num(rep, "n")), "heads": key[3], "dim": key[4], "threads": key[5],
                "nodes": int(num(rep, "nodes", 0)), "ranks": p, "runs": len(runs),
                "seconds_total": med, "seconds_total_min": min(times),
                "seconds_total_max": max(times),
                "speedup": t0 / med if med > 0 else math.nan, "efficiency": eff,
                "gflops": statistics.median(num(r, "gflops") for r in runs),
                "random_transport": "/".join(sorted({r.get("random_transport", "") for r in runs})),
            }
            s["seconds_total_split_run"] = num(rep, "seconds_total")
            other = num(rep, "seconds_total")
            for part in PARTS:
                v = num(rep, f"seconds_{part}", 0.0)
                s[f"seconds_{part}"] = v
                other -= v
            # Parts are each the slowest rank's, so they need not add up to the
            # total; "other" is what they leave unexplained (never negative).
            s["seconds_other"] = max(0.0, other)
            for b in BYTES:
                tot = num(rep, f"bytes_{b}_total")
                s[f"bytes_{b}_per_rank"] = tot / p if not math.isnan(tot) else num(rep, f"bytes_{b}", 0.0)
                s[f"bytes_{b}_max"] = num(rep, f"bytes_{b}", 0.0)
            s["peak_rss_bytes"] = num(rep, "peak_rss_bytes")
            summary.append(s)
    return summary


def write_summary(summary, path):
    cols = list(summary[0].keys())
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        for s in summary:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in s.items()})


def plain_ticks(ax, summary, plt):
    """Rank counts as plain numbers on a log2 axis."""
    ax.set_xticks(sorted({s["ranks"] for s in summary}))
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(plt.NullFormatter())


def plot(summary, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_series = defaultdict(list)
    for s in summary:
        by_series[s["series"]].append(s)
    names = list(by_series)
    files = []

    # 1. time vs ranks, log-log, with the ideal line of each series.
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in names:
        pts = by_series[name]
        x = [s["ranks"] for s in pts]
        y = [s["seconds_total"] for s in pts]
        err = [[s["seconds_total"] - s["seconds_total_min"] for s in pts],
               [s["seconds_total_max"] - s["seconds_total"] for s in pts]]
        line = ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=name)
        if pts[0]["kind"] == "strong":
            ideal = [y[0] * x[0] / p for p in x]
        else:
            ideal = [y[0] for _ in x]
        ax.plot(x, ideal, linestyle="--", color=line[0].get_color(), alpha=0.5)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    plain_ticks(ax, summary, plt)
    ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("MPI ranks")
    ax.set_ylabel("seconds (slowest rank, median of runs)")
    ax.set_title("Time vs ranks (dashed: ideal scaling)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    files.append(os.path.join(out, "time_vs_ranks.png"))
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)

    # 2. parallel efficiency.
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in names:
        pts = by_series[name]
        ax.plot([s["ranks"] for s in pts], [100 * s["efficiency"] for s in pts],
                marker="o", label=f"{name} ({pts[0]['kind']})")
    ax.axhline(100, color="grey", linestyle="--", linewidth=1)
    ax.set_xscale("log", base=2)
    plain_ticks(ax, summary, plt)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("MPI ranks")
    ax.set_ylabel("parallel efficiency (%)")
    ax.set_title("Parallel efficiency (strong: T0 p0 / (T p), weak: T0 / T)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    files.append(os.path.join(out, "efficiency.png"))
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)

    # 3. where the time goes: one stacked bar per (series, ranks).
    parts = PARTS + ["other"]
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:gray"]
    fig, axes = plt.subplots(1, len(names), figsize=(max(6, 3.5 * len(names)), 4.5),
                             squeeze=False, sharey=False)
    for ax, name in zip(axes[0], names):
        pts = by_series[name]
        xs = [str(s["ranks"]) for s in pts]
        bottom = [0.0] * len(pts)
        for part, c in zip(parts, colors):
            vals = [s[f"seconds_{part}"] for s in pts]
            ax.bar(xs, vals, bottom=bottom, color=c, label=part)
            bottom = [b + v for b, v in zip(bottom, vals)]
        # Parts overlap (communication hides behind compute), so a bar can
        # stand above the measured total, drawn as a black bar.
        ax.scatter(xs, [s["seconds_total_split_run"] for s in pts], marker="_", s=900,
                   color="black", zorder=3, label="total")
        top = max(bottom + [s["seconds_total_split_run"] for s in pts])
        ax.set_ylim(0, 1.08 * top if top > 0 else 1)
        ax.set_xlabel("MPI ranks")
        ax.set_ylabel("seconds")
        ax.set_title(name, fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    fig.suptitle("Split of time of the median run (slowest rank per part; black: its total)")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    files.append(os.path.join(out, "time_split.png"))
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)

    # 4. bytes received per rank, by kind of traffic.
    fig, axes = plt.subplots(1, len(names), figsize=(max(6, 3.5 * len(names)), 4.5), squeeze=False)
    width = 0.27
    for ax, name in zip(axes[0], names):
        pts = by_series[name]
        for k, (b, c) in enumerate(zip(BYTES, colors[1:4])):
            xs = [i + (k - 1) * width for i in range(len(pts))]
            ax.bar(xs, [s[f"bytes_{b}_per_rank"] / 2**20 for s in pts], width, color=c, label=b)
        ax.set_xticks(range(len(pts)))
        ax.set_xticklabels([str(s["ranks"]) for s in pts])
        ax.set_xlabel("MPI ranks")
        ax.set_ylabel("MiB received per rank (mean)")
        ax.set_title(name, fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Communication volume per rank")
    fig.tight_layout()
    files.append(os.path.join(out, "bytes_per_rank.png"))
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)
    return files


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", nargs="*", default=["results/spa.csv"],
                    help="result CSVs written by jobs/spa.sbatch (default results/spa.csv)")
    ap.add_argument("--out", default=None, help="output folder (default: <first csv folder>/summary)")
    ap.add_argument("--sweep", action="append", help="only rows with this sweep tag (repeatable)")
    ap.add_argument("--no-plots", action="store_true", help="write summary.csv only")
    a = ap.parse_args(argv)

    rows = read_rows(a.csv, a.sweep)
    if not rows:
        print("collect.py: no result rows in " + ", ".join(a.csv), file=sys.stderr)
        return 1
    out = a.out or os.path.join(os.path.dirname(os.path.abspath(a.csv[0])), "summary")
    os.makedirs(out, exist_ok=True)
    summary = summarise(rows)
    write_summary(summary, os.path.join(out, "summary.csv"))
    print(f"{len(rows)} rows -> {len(summary)} points in "
          f"{len({s['series'] for s in summary})} series: {os.path.join(out, 'summary.csv')}")
    for s in summary:
        print(f"  {s['series']:<60} ranks {s['ranks']:>4}  {s['seconds_total']:9.4f} s  "
              f"eff {100 * s['efficiency']:5.1f}%  ({s['runs']} runs)")
    if not a.no_plots:
        try:
            files = plot(summary, out)
        except ImportError:
            print("collect.py: matplotlib is missing (Debian: python3-matplotlib, "
                  "run with /usr/bin/python3), or pass --no-plots", file=sys.stderr)
            return 2
        for f in files:
            print("  wrote " + f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
