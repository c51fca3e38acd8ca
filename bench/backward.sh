#!/bin/sh
# The backward pass's useful GFLOP/s beside the forward's, measured in one
# run on one rank (issue 11): n = 131072, H = 4, D = 64, default pattern,
# 1 thread unless THREADS says otherwise. Useful FLOPs: forward 4 D pairs,
# backward 10 D pairs. Each rate is the best of REPS runs (default 3),
# forward and backward taken in turn, by wall time and by CPU time (the
# better guide on a loaded machine). Also spa_ctx_backward in float and in
# exact mode (--exact), for the cost of exact mode: the ratio of their best
# times (REPS >= 2; the first run allocates). Prints the JSON and the ratios.
#   bench/backward.sh [build-dir]      (default: build)
set -e
B="${1:-build}"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
THREADS="${THREADS:-1}"
J="$(OMP_NUM_THREADS="$THREADS" OPENBLAS_NUM_THREADS=1 "$B/bench/spa_bench_backward" --threads "$THREADS" \
    --reps "${REPS:-3}")"
echo "$J"
python3 - "$J" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
print("n={n} H={heads} D={dim} threads={threads} kernel {kernel}: forward {forward_gflops:.1f} GFLOP/s "
      "({forward_seconds:.3f} s), backward {backward_gflops:.1f} GFLOP/s ({backward_seconds:.3f} s), "
      "ratio {ratio:.2f} (target >= 0.6)".format(**r))
print("by CPU time: forward {forward_cpu_gflops:.1f} GFLOP/s, backward {backward_cpu_gflops:.1f} GFLOP/s, "
      "ratio {ratio_cpu:.2f}".format(**r))
print("spa_ctx_backward: float {ctx_backward_seconds:.3f} s, exact mode {exact_backward_seconds:.3f} s, "
      "exact / float {exact_ratio:.2f}".format(**r))
PY
