#!/usr/bin/env python3
"""plot.py - plots of the SMPI scaling study from the CSVs of sweep.py.

    plot.py DIR

writes DIR/{strong,weak}_{time,efficiency,split}.png, DIR/compare.png and
DIR/bytes.png. Needs matplotlib; without it, says so and exits 0 (the
CSVs are the result, the plots a view of them).
"""
import csv
import os
import sys


def value(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def load(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [{k: value(v) for k, v in r.items()} for r in csv.DictReader(f)]


def main():
    out = sys.argv[1]
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullFormatter
    except ImportError:
        print("plot.py: matplotlib not importable; CSVs only")
        return

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(os.path.join(out, name), dpi=110)
        plt.close(fig)
        print(f"wrote {os.path.join(out, name)}")

    for kind in ("strong", "weak"):
        rows = load(os.path.join(out, f"{kind}.csv"))
        if not rows:
            continue
        P = [r["nodes"] for r in rows]
        T = [r["seconds_total"] for r in rows]
        sub = (f"n = {int(rows[0]['n'])}" if kind == "strong"
               else f"n = {int(rows[0]['n'] / rows[0]['nodes'])} per node")
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.loglog(P, T, "o-", label="simulated")
        ideal = [T[0] * P[0] / p for p in P] if kind == "strong" else [T[0]] * len(P)
        ax.loglog(P, ideal, "--", color="gray", label="ideal")
        ax.set_xlabel("nodes (1 rank x 2 cores each)")
        ax.set_ylabel("seconds per run")
        ax.set_title(f"{kind} scaling, SMPI, {sub}, H = {int(rows[0]['heads'])}")
        ax.set_xticks(P)
        ax.set_xticklabels([str(int(p)) for p in P])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.legend()
        save(fig, f"{kind}_time.png")

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.semilogx(P, [r["efficiency"] for r in rows], "o-")
        ax.set_ylim(0, 1.1)
        ax.set_xticks(P)
        ax.set_xticklabels([str(int(p)) for p in P])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("nodes")
        ax.set_ylabel("parallel efficiency")
        ax.set_title(f"{kind} scaling efficiency (vs {int(P[0])} nodes), {sub}")
        save(fig, f"{kind}_efficiency.png")

        fig, ax = plt.subplots(figsize=(6, 4))
        parts = ["seconds_compute", "seconds_halo", "seconds_global", "seconds_rma", "seconds_wait"]
        x = range(len(P))
        bottom = [0.0] * len(P)
        for part in parts:
            v = [r[part] / r["seconds_total"] for r in rows]
            ax.bar(x, v, bottom=bottom, label=part.replace("seconds_", ""))
            bottom = [b + w for b, w in zip(bottom, v)]
        ax.set_xticks(list(x))
        ax.set_xticklabels([str(int(p)) for p in P])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("nodes")
        ax.set_ylabel("share of the run (slowest rank)")
        ax.set_title(f"{kind} scaling: where the time goes")
        ax.legend(fontsize=8)
        save(fig, f"{kind}_split.png")

    rows = load(os.path.join(out, "compare.csv"))
    if rows:
        P = [r["ranks"] for r in rows]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(P, [r["real_total"] for r in rows], "o-", label="measured (mpirun, this machine)")
        ax.plot(P, [r["sim_here_total"] for r in rows], "s--", label="simulated, one 2-core host")
        ax.plot(P, [r["sim_nodes_total"] for r in rows], "^:", label="simulated, P nodes")
        ax.set_xlabel("ranks (1 thread each)")
        ax.set_ylabel("seconds per run")
        ax.set_title(f"model against measurement, n = {int(rows[0]['n'])}")
        ax.legend(fontsize=8)
        save(fig, "compare.png")

    rows = load(os.path.join(out, "bytes.csv"))
    if rows:
        P = [r["ranks"] for r in rows]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.loglog(P, [r["spa_bytes_mean"] for r in rows], "o-", label="spa, mean per rank")
        ax.loglog(P, [r["spa_bytes_max"] for r in rows], "o:", label="spa, largest rank")
        ax.loglog(P, [r["ring_bytes"] for r in rows], "s--", label="ring attention (P-1)/P 2nD4H")
        ax.set_xticks(P)
        ax.set_xticklabels([str(int(p)) for p in P])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("ranks")
        ax.set_ylabel("bytes received per rank")
        ax.set_title(f"bytes per rank, n = {int(rows[0]['n'])}, H = {int(rows[0]['heads'])}")
        ax.legend(fontsize=8)
        save(fig, "bytes.png")


if __name__ == "__main__":
    main()
