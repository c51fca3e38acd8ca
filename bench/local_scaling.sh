#!/bin/sh
# Strong and weak scaling measured on this machine, without Slurm: spa bench
# at P = 1, 2, 4, 8 ranks, one thread each (ranks beyond the core count share
# cores). Strong: n = 131072. Weak: n = 32768 per rank. Prints two tables
# with the time split and the parallel efficiency (strong: t1 / (P tP);
# weak: t1 / tP). For clusters use jobs/strong.sh and jobs/weak.sh.
#   bench/local_scaling.sh [build-dir]
set -e
B="${1:-build}"
HERE="$(cd "$(dirname "$0")" && pwd)"
T="$(mktemp -d)"
trap 'rm -rf "$T"' EXIT
trap 'exit 129' HUP; trap 'exit 130' INT; trap 'exit 143' TERM # so that EXIT's removal runs
export OMP_NUM_THREADS=1
for p in 1 2 4 8; do
  for kind in strong weak; do
    n=131072
    [ "$kind" = weak ] && n=$((32768 * p))
    sh "$HERE/../scripts/mpirun.sh" -n "$p" "$B/spa" bench --n "$n" --threads 1 --warmup 1 --reps 3 --json \
      > "$T/${kind}_$p.json"
  done
done
python3 - "$T" <<'PY'
import json, os, sys
d = sys.argv[1]
for kind in ("strong", "weak"):
    base = None
    print(f"{kind} scaling (measured; 1 thread per rank; seconds of the slowest rank)")
    print(f"{'P':>2} {'n':>8} {'total':>7} {'compute':>7} {'halo':>6} {'global':>6} {'rma':>6} {'GFLOP/s':>8} {'eff':>5}")
    for p in (1, 2, 4, 8):
        r = json.load(open(os.path.join(d, f"{kind}_{p}.json")))
        t = r["seconds_total"]
        base = t if base is None else base
        eff = base / (p * t) if kind == "strong" else base / t
        print(f"{p:>2} {r['n']:>8} {t:7.3f} {r['seconds_compute']:7.3f} {r['seconds_halo']:6.3f} "
              f"{r['seconds_global']:6.3f} {r['seconds_rma']:6.3f} {r['gflops']:8.2f} {eff:5.2f}")
PY
