#!/bin/sh
# Kernel efficiency, measured side by side in one run (issue 10, section 1).
# Prints the FMA peak of the widest vector unit the CPU has (AVX-512, else
# AVX2 + FMA), named; OpenBLAS sgemm on a large product and on the kernel's
# shapes; and spa's useful GFLOP/s (SPEC flops) at n = 131072, H = 4, D = 64
# with the default pattern: on 1 and 2 threads with the kernel spa chose, on
# each other instruction set the CPU has, and on OpenBLAS; the kernel's
# chunk with every operand in cache (bench/chunk.c), the ceiling of its
# inner loops apart from memory; then B = 16,
# B = 32 and --radius 256 as ratios to B = 64. Every figure is the best of
# ROUNDS rounds taken in turn (each round a median of 5 runs), so that a
# neighbour's load hits every configuration alike.
#   bench/kernel.sh [build-dir]      (default: build; ROUNDS=2)
set -e
B="${1:-build}"
ROUNDS="${ROUNDS:-2}"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
T="$(mktemp -d)"
trap 'rm -rf "$T"' EXIT
trap 'exit 129' HUP; trap 'exit 130' INT; trap 'exit 143' TERM # so that EXIT's removal runs
bench() { # name threads kernel [flags...]
    name=$1 thr=$2 kern=$3
    shift 3
    env ${kern:+SPA_KERNEL=$kern} OMP_NUM_THREADS="$thr" "$B/spa" bench --threads "$thr" --warmup 1 --reps 5 --json "$@" \
        > "$T/$name.$r.json"
}
"$B/bench/spa_peak" > "$T/peak.0.json"
r=0
while [ "$r" -lt "$ROUNDS" ]; do
    r=$((r + 1))
    bench t1 1 ""
    bench t2 2 ""
    bench b16 1 "" --block 16
    bench b32 1 "" --block 32
    bench rad 1 "" --radius 256
    bench avx2 1 avx2
    bench generic 1 generic
    bench blas 1 blas
    "$B/bench/spa_chunk" > "$T/chunk.$r.json"
done
# the ceilings again, after: the best of both is the machine's
"$B/bench/spa_peak" > "$T/peak.1.json"
python3 - "$T" "$ROUNDS" <<'PY'
import json, sys, os
d, rounds = sys.argv[1], int(sys.argv[2])
p = json.load(open(os.path.join(d, "peak.0.json")))
p2 = json.load(open(os.path.join(d, "peak.1.json")))
for key in p:  # every ceiling at its best
    if key.endswith("gflops"):
        p[key] = max(p[key], p2[key])
def r(name):
    return [json.load(open(os.path.join(d, f"{name}.{i}.json"))) for i in range(1, rounds + 1)]
res = {k: max(r(k), key=lambda j: j["gflops"]) for k in ["t1", "t2", "b16", "b32", "rad", "avx2", "generic", "blas"]}
t1 = res["t1"]
peak, unit, big = p["fma_peak_gflops"], p["unit"], p["sgemm_2048_gflops"]
print(f"spa kernel benchmark: n={t1['n']} heads={t1['heads']} dim={t1['dim']}, kernel {t1['kernel']} "
      f"(best of {rounds} rounds, each a median of {t1.get('reps', '?')} runs; useful flops = {t1['flops']:.4g})")
print(f"{'measure':50s} {'GFLOP/s':>9s} {'of FMA peak':>12s} {'of sgemm':>9s}")
rows = [
    (f"FMA peak, 1 thread, widest unit: {unit} ({p['vector_bits']}-bit)", peak),
    ("FMA peak, 1 thread, AVX2 + FMA (256-bit)", p["fma_peak_avx2_gflops"]),
    ("OpenBLAS sgemm 2048^3, 1 thread", big),
    ("OpenBLAS sgemm 64x512x64 (scores shape)", p["sgemm_qk_64x512x64_gflops"]),
    ("OpenBLAS sgemm 64x64x512 (P.V shape)", p["sgemm_pv_64x64x512_gflops"]),
    (f"spa kernel ({t1['kernel']}), 1 thread", t1["gflops"]),
    (f"spa kernel ({res['t2']['kernel']}), 2 threads", res["t2"]["gflops"]),
    (f"spa kernel ({res['avx2']['kernel']}, SPA_KERNEL=avx2), 1 thread", res["avx2"]["gflops"]),
    (f"spa kernel ({res['generic']['kernel']}, SPA_KERNEL=generic), 1 thr", res["generic"]["gflops"]),
    ("spa kernel on OpenBLAS (SPA_KERNEL=blas), 1 thread", res["blas"]["gflops"]),
]
for name, g in rows:
    print(f"{name:50s} {g:9.2f} {100 * g / peak:11.1f}% {100 * g / big:8.1f}%")
if res["blas"]["checksum"] != t1["checksum"]:
    print(f"note: checksums differ: {t1['checksum']!r} vs {res['blas']['checksum']!r} (OpenBLAS sums in another order)")
print(f"kernel/peak ({t1['kernel']} / {unit} FMA) on 1 thread: {t1['gflops'] / peak:.3f} (target 0.70); "
      f"2-thread speedup: {res['t2']['gflops'] / t1['gflops']:.2f}x (target 1.9)")
if p["fma_peak_avx2_gflops"] > 0:
    print(f"AVX2 kernel / AVX2 FMA peak: {res['avx2']['gflops'] / p['fma_peak_avx2_gflops']:.3f}")
chs = r("chunk")
ch = {key: (max(c[key] for c in chs) if key.endswith("gflops") else chs[0][key]) for key in chs[0]}
ch.update({f"b{b}_exp_share": max(chs, key=lambda c: c[f"b{b}_chunk_gflops"])[f"b{b}_exp_share"] for b in (64, 16)})
print(f"one chunk with every operand in cache (bench/chunk.c, {ch['kernel']}), 1 thread, of the FMA peak:")
for b in (64, 16):
    print(f"  B = {b:2d}: qk {ch[f'b{b}_qk_gflops'] / peak:.3f}, P.V {ch[f'b{b}_pvp_gflops'] / peak:.3f}, "
          f"whole chunk {ch[f'b{b}_chunk_gflops'] / peak:.3f}; exp and sums {100 * ch[f'b{b}_exp_share']:.1f}% of its time")
print(f"  the run at B = 64 reaches {t1['gflops'] / ch['b64_chunk_gflops']:.3f} of its chunk in cache "
      f"(the rest: loading keys and values, per-block work, the spread rows)")
print("other block sizes and local modes, 1 thread, as ratios to B = 64 (target 0.80):")
for key, name in [("b16", "--block 16"), ("b32", "--block 32"), ("rad", "--radius 256")]:
    g = res[key]["gflops"]
    print(f"  {name:14s} {g:9.2f} GFLOP/s  {g / t1['gflops']:.3f} of B = 64")
PY
