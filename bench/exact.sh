#!/bin/sh
# Exact mode (--exact, spa_ctx_set_exact) beside the default, in one run:
# what it costs and what it buys (issue 11, determinism).
#   1. spa gen --grad writes q, k, v and dout (n, H = 4, D = 64, seed 1).
#   2. For P in SPA_BENCH_RANKS (default 1 2 3 4): spa run and spa grad on
#      that file, each without and with --exact (grad recomputes out and
#      lse with the same mode), timed by seconds_total of --json.
#   3. Every output against P = 1's of the same mode: how many elements of
#      out, lse, dq, dk, dv differ in their bits, and by how much at most.
# Prints one line per (P, mode) and the time ratios exact / default.
#   bench/exact.sh [build-dir] [n]      (default: build 131072)
set -e
B="${1:-build}"
N="${2:-131072}"
PS="${SPA_BENCH_RANKS:-1 2 3 4}"
HERE="$(cd "$(dirname "$0")" && pwd)"
T="$(mktemp -d)"
trap 'rm -rf "$T"' EXIT
trap 'exit 129' HUP; trap 'exit 130' INT; trap 'exit 143' TERM # so that EXIT's removal runs
export OMP_NUM_THREADS=1
run() { sh "$HERE/../scripts/mpirun.sh" -q "$@"; }
"$B/spa" gen --grad --output "$T/in.h5" --n "$N" --heads 4 --dim 64 --seed 1 > /dev/null
for p in $PS; do
  for mode in default exact; do
    x=""
    [ "$mode" = exact ] && x=--exact
    run -n "$p" "$B/spa" run --input "$T/in.h5" --output "$T/run-$mode-$p.h5" --seed 1 --json $x > "$T/run-$mode-$p.json"
    run -n "$p" "$B/spa" grad --input "$T/in.h5" --output "$T/grad-$mode-$p.h5" --seed 1 --json $x > "$T/grad-$mode-$p.json"
  done
done
/usr/bin/python3 - "$T" "$PS" <<'PY'
import json, sys
import h5py
import numpy as np
T, ps = sys.argv[1], [int(p) for p in sys.argv[2].split()]
secs = lambda f: json.load(open(f))["seconds_total"]
print("%2s %-8s %9s %9s  %s" % ("P", "mode", "run s", "grad s", "elements differing from P = 1 (max |diff|)"))
for p in ps:
    for mode in ("default", "exact"):
        diffs = []
        for kind, names in (("run", ("out", "lse")), ("grad", ("dq", "dk", "dv"))):
            a, b = h5py.File("%s/%s-%s-%d.h5" % (T, kind, mode, p)), h5py.File("%s/%s-%s-%d.h5" % (T, kind, mode, ps[0]))
            for nm in names:
                x, y = a[nm][...], b[nm][...]
                fin = np.isfinite(x) & np.isfinite(y)
                d = float(np.abs(x[fin] - y[fin]).max(initial=0))
                diffs.append("%s %d (%.1e)" % (nm, int((x.view(np.uint32) != y.view(np.uint32)).sum()), d))
        print("%2d %-8s %9.3f %9.3f  %s" % (p, mode, secs("%s/run-%s-%d.json" % (T, mode, p)),
                                            secs("%s/grad-%s-%d.json" % (T, mode, p)), ", ".join(diffs)))
    r = secs("%s/run-exact-%d.json" % (T, p)) / secs("%s/run-default-%d.json" % (T, p))
    g = secs("%s/grad-exact-%d.json" % (T, p)) / secs("%s/grad-default-%d.json" % (T, p))
    print("   exact / default: run %.2f, grad %.2f" % (r, g))
PY
