#!/bin/sh
# Kernel efficiency, measured side by side in one run (issue: foundation).
# Prints the machine's FMA peak, OpenBLAS sgemm on a large product and on the
# kernel's shapes (each the best of a measurement before and one after), and spa's useful GFLOP/s (SPEC flops) on 1 and 2 threads
# at n = 131072, H = 4, D = 64 with the default pattern, with their ratios.
#   bench/kernel.sh [build-dir]      (default: build)
set -e
B="${1:-build}"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
T="$(mktemp -d)"
trap 'rm -rf "$T"' EXIT
"$B/bench/spa_peak" > "$T/peak.json"
OMP_NUM_THREADS=1 "$B/spa" bench --threads 1 --warmup 1 --reps 5 --json > "$T/t1.json"
OMP_NUM_THREADS=2 "$B/spa" bench --threads 2 --warmup 1 --reps 5 --json > "$T/t2.json"
SPA_KERNEL=blas OMP_NUM_THREADS=1 "$B/spa" bench --threads 1 --warmup 1 --reps 5 --json > "$T/blas.json"
# the ceilings again, after: the best of both is the machine's
"$B/bench/spa_peak" > "$T/peak2.json"
python3 - "$T" <<'PY'
import json, sys, os
d = sys.argv[1]
p = json.load(open(os.path.join(d, "peak.json")))
p2 = json.load(open(os.path.join(d, "peak2.json")))
for key in p:
    if key.endswith("gflops"):
        p[key] = max(p[key], p2[key])
t1 = json.load(open(os.path.join(d, "t1.json")))
t2 = json.load(open(os.path.join(d, "t2.json")))
bl = json.load(open(os.path.join(d, "blas.json")))
peak, big = p["fma_peak_gflops"], p["sgemm_2048_gflops"]
print(f"spa kernel benchmark: n={t1['n']} heads={t1['heads']} dim={t1['dim']} "
      f"(median of {t1.get('reps', '?')} runs; useful flops = {t1['flops']:.4g})")
print(f"{'measure':44s} {'GFLOP/s':>9s} {'of FMA peak':>12s} {'of sgemm':>9s}")
rows = [
    (f"FMA peak, 1 thread ({p['vector_bits']}-bit vectors)", peak),
    ("OpenBLAS sgemm 2048^3, 1 thread", big),
    ("OpenBLAS sgemm 64x512x64 (scores shape)", p["sgemm_qk_64x512x64_gflops"]),
    ("OpenBLAS sgemm 64x64x512 (P.V shape)", p["sgemm_pv_64x64x512_gflops"]),
    ("spa kernel, 1 thread", t1["gflops"]),
    ("spa kernel, 2 threads", t2["gflops"]),
    ("spa kernel on OpenBLAS (SPA_KERNEL=blas), 1 thr", bl["gflops"]),
]
for name, g in rows:
    print(f"{name:44s} {g:9.2f} {100 * g / peak:11.1f}% {100 * g / big:8.1f}%")
if bl["checksum"] != t1["checksum"]:
    print(f"note: checksums differ: {t1['checksum']!r} vs {bl['checksum']!r} (OpenBLAS sums in another order)")
print(f"2-thread speedup: {t2['gflops'] / t1['gflops']:.2f}x; "
      f"register-blocked / OpenBLAS: {t1['gflops'] / bl['gflops']:.2f}x; "
      f"kernel/peak on 1 thread: {t1['gflops'] / peak:.3f} (target 0.35)")
PY
