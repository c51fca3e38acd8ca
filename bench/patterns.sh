#!/bin/sh
# Every pattern rule of SPEC 1.1 beside the default (BigBird) pattern, in
# one run: useful GFLOP/s on one thread and its ratio to the default's
# (target >= 0.60), and the bytes each rank receives at P = 1, 2 and 4, as
# the plan predicts them and as the run measured them (they must be equal).
# n = 131072, H = 4, D = 64; each rule is sized to FLOPs of the default's
# order. The one-thread rates are measured in $ROUNDS rounds that each run
# every rule and the default once, and each rate is the best over its
# rounds and repetitions: on a shared machine the best run is the one the
# others disturbed least, and interleaving the rules spreads a busy moment
# over all of them. Ranks share this machine's cores, so only the
# one-thread rates are speed figures; the P = 2 and 4 rows are there for
# the bytes.
#   bench/patterns.sh [build-dir]      (default: build)
#   SPA_BENCH_ROUNDS (default 3), SPA_BENCH_REPS (default 2), SPA_BENCH_N
set -e
B="${1:-build}"
HERE="$(cd "$(dirname "$0")/.." && pwd)"
T="$(mktemp -d)"
trap 'rm -rf "$T"' EXIT
trap 'exit 129' HUP; trap 'exit 130' INT; trap 'exit 143' TERM # so that EXIT's removal runs
N="${SPA_BENCH_N:-131072}"
REPS="${SPA_BENCH_REPS:-2}"
ROUNDS="${SPA_BENCH_ROUNDS:-3}"
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1

# name|flags
cat > "$T/rules" <<EOF
default|
local_only|--globals none --random 0
radius|--radius 256
no_local_random|--local-blocks 0 --random 6
strided|--local-blocks 0 --globals none --random 0 --stride 362
sparse_transformer|--globals none --random 0 --local-blocks 5@0:2 --stride 362@2:4
summary|--local-blocks 0 --globals none --random 0 --summary 2048:8
fixed|--block 128 --local-blocks 1 --globals none --random 0 --summary 1024:8
dilated|--local-blocks 0 --globals none --random 0 --dilated 256:1,1024:4
per_head|--local-blocks 3@0:2 --radius 128@2:4 --random 2@0:4 --stride 512@1:3
union|--radius 128 --stride 512 --summary 4096:8
layout|--local-blocks 0 --globals none --random 0 --layout $T/default_layout.h5
EOF

"$B/spa" plan --n "$N" --export-layout "$T/default_layout.h5" > /dev/null

for round in $(seq "$ROUNDS"); do
    while IFS='|' read -r name flags; do
        # shellcheck disable=SC2086
        "$B/spa" bench --n "$N" --threads 1 --warmup 1 --reps "$REPS" --json $flags > "$T/$name.p1.$round.json"
    done < "$T/rules"
done
while IFS='|' read -r name flags; do
    for P in 2 4; do
        # shellcheck disable=SC2086
        "$B/spa" plan --n "$N" --ranks "$P" --json $flags > "$T/$name.plan$P.json"
        # shellcheck disable=SC2086
        sh "$HERE/scripts/mpirun.sh" -n "$P" "$B/spa" bench --n "$N" --threads 1 --warmup 0 --reps 1 --json $flags \
            > "$T/$name.p$P.json" < /dev/null
    done
done < "$T/rules"
python3 - "$T" "$ROUNDS" <<'PY'
import json, os, sys
d = sys.argv[1]
rules = [l.split("|", 1) for l in open(os.path.join(d, "rules")).read().splitlines() if l]
def load(name):
    t = open(os.path.join(d, name)).read()
    return json.loads(t[t.index("{"):t.rindex("}") + 1])
rounds = int(sys.argv[2])
def best(name):
    """flops over the fastest timed run of every round"""
    runs = [load(f"{name}.p1.{r}.json") for r in range(1, rounds + 1)]
    return runs[0]["flops"] / min(x["seconds_total_min"] for x in runs) * 1e-9, runs[0]
base = best("default")[0]
print(f"spa patterns: n={best('default')[1]['n']} H=4 D=64, one thread, best of {rounds} rounds; "
      "bytes received per rank (max over ranks), plan = measured")
print(f"{'rule':20s} {'GFLOP':>8s} {'GFLOP/s':>8s} {'ratio':>6s}  "
      f"{'P=2 MB plan':>11s} {'measured':>9s} {'GFLOP/s':>8s}  {'P=4 MB plan':>11s} {'measured':>9s} {'GFLOP/s':>8s}")
bad = 0
for name, flags in rules:
    g1, r1 = best(name)
    row = f"{name:20s} {r1['flops'] / 1e9:8.1f} {g1:8.2f} {g1 / base:6.2f}"
    for P in (2, 4):
        pl, run = load(f"{name}.plan{P}.json"), load(f"{name}.p{P}.json")
        plan_max = pl["bytes_halo"] + pl["bytes_global"] + pl["bytes_rma"]
        same = all(pl[k] == run[k] for k in ("bytes_halo_total", "bytes_global_total", "bytes_rma_total",
                                             "bytes_halo", "bytes_global", "bytes_rma"))
        bad += not same
        meas_max = run["bytes_halo"] + run["bytes_global"] + run["bytes_rma"]
        row += f"  {plan_max / 1e6:11.2f} {meas_max / 1e6:8.2f}{'' if same else '!'} {run['gflops']:8.2f}"
    print(row)
print(f"\nratio = one-thread GFLOP/s over the default pattern's ({base:.2f}); target >= 0.60.")
print("bytes: halo + gathered + fetched, each the largest over the ranks (SPEC 3 fields);"
      + (" every measured count equals the plan's." if not bad else f" {bad} rules differ from the plan (marked !)."))
print("flags:")
for name, flags in rules:
    print(f"  {name:20s} {flags.replace(d, '$T') or '(default)'}")
sys.exit(1 if bad else 0)
PY
