#!/bin/sh
# spa layer: the time split into projections and attention, and the
# projections' GFLOP/s against OpenBLAS's large sgemm, measured side by side.
#   bench/layer.sh [build-dir]      (default: build)
# Size: SPA_LAYER_N (default 65536 tokens), SPA_LAYER_DMODEL (256), 4 heads
# of 64, the default pattern. Runs P x T = 1 x 1, 1 x 2 and 2 x 1 (ranks x
# threads) on the same file; each figure is the slowest rank's.
set -e
B="${1:-build}"
N="${SPA_LAYER_N:-65536}"
DM="${SPA_LAYER_DMODEL:-256}"
here="$(cd "$(dirname "$0")" && pwd)"
T="$(mktemp -d)"
trap 'rm -rf "$T"' EXIT
trap 'exit 129' HUP; trap 'exit 130' INT; trap 'exit 143' TERM # so that EXIT's removal runs
/usr/bin/python3 - "$T/layer.h5" "$N" "$DM" <<'PY'
import sys, h5py, numpy as np
path, n, dm = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
H, D = 4, 64
rng = np.random.default_rng(0)
s = 1 / np.sqrt(dm)
with h5py.File(path, "w") as f:
    f["x"] = rng.standard_normal((n, dm), dtype=np.float32)
    for w in ("wq", "wk", "wv"):
        f[w] = (s * rng.standard_normal((H * D, dm))).astype("f4")
    f["wo"] = ((1 / np.sqrt(H * D)) * rng.standard_normal((dm, H * D))).astype("f4")
    for b, m in (("bq", H * D), ("bk", H * D), ("bv", H * D), ("bo", dm)):
        f[b] = np.zeros(m, "f4")
    f.attrs["heads"] = H
PY
"$B/bench/spa_peak" > "$T/peak.json"
OMP_NUM_THREADS=1 sh "$here/../scripts/mpirun.sh" -n 1 "$B/spa" layer --input "$T/layer.h5" --threads 1 --json > "$T/p1t1.json"
OMP_NUM_THREADS=2 sh "$here/../scripts/mpirun.sh" -n 1 "$B/spa" layer --input "$T/layer.h5" --threads 2 --json > "$T/p1t2.json"
OMP_NUM_THREADS=1 sh "$here/../scripts/mpirun.sh" -n 2 "$B/spa" layer --input "$T/layer.h5" --threads 1 --json > "$T/p2t1.json"
"$B/bench/spa_peak" > "$T/peak2.json"
/usr/bin/python3 - "$T" <<'PY'
import json, os, sys
d = sys.argv[1]
ld = lambda f: json.load(open(os.path.join(d, f)))
big = max(ld("peak.json")["sgemm_2048_gflops"], ld("peak2.json")["sgemm_2048_gflops"])
r = ld("p1t1.json")
print(f"spa layer benchmark: n={r['n']} d_model={r['d_model']} heads={r['heads']} dim={r['dim']}, "
      f"default pattern; projection flops {r['flops_proj']:.4g}, attention useful flops {r['flops_attention']:.4g}")
print(f"OpenBLAS sgemm 2048^3 on 1 thread: {big:.2f} GFLOP/s (best of before and after)")
print(f"{'ranks x threads':16s} {'total s':>8s} {'proj s':>8s} {'(in':>7s} {'out)':>7s} {'attn s':>8s} "
      f"{'proj %':>7s} {'proj GF/s':>10s} {'per core':>9s} {'of sgemm':>9s} {'attn GF/s':>10s}")
for name, P, T in (("p1t1.json", 1, 1), ("p1t2.json", 1, 2), ("p2t1.json", 2, 1)):
    r = ld(name)
    proj, attn = r["seconds_proj"], r["seconds_attention"]
    per = r["gflops_proj"] / (P * T)
    print(f"{P} x {T}{'':12s} {r['seconds_total']:8.3f} {proj:8.3f} {r['seconds_proj_in']:7.3f} "
          f"{r['seconds_proj_out']:7.3f} {attn:8.3f} {100 * proj / (proj + attn):6.1f}% "
          f"{r['gflops_proj']:10.2f} {per:9.2f} {100 * per / big:8.1f}% {r['gflops_attention']:10.2f}")
print("proj = x -> q, k, v (3 sgemm + bias, head split) and concat(out) -> y (1 sgemm + bias);")
print("attn = spa_ctx_run. Times are the slowest rank's; per core = GFLOP/s / (ranks x threads).")
PY
