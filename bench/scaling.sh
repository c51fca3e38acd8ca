#!/bin/sh
# Where the time goes on P = 1, 2, 4 ranks, and how much of the communication
# the overlap hides (issue: distributed runtime). For each n and P it runs
# spa bench twice, with the overlap and with --no-overlap (every transfer
# completes before the first block), and prints one table row:
#   compute, halo, global, rma, wait (blocking on transfers), total
#   hidden = 1 - wait(overlap) / wait(no overlap)
#   bytes received per rank (max over ranks) and peak RSS per rank (max)
# On a machine with fewer cores than ranks the ranks share cores: the times
# then include waiting for a descheduled peer, and "hidden" is noisy.
# Peak RSS counts the pages of other ranks' windows that a rank read through
# shared memory (osc/sm on one node); those pages are not extra memory.
#   bench/scaling.sh [build-dir] [n ...]   (default: build 131072 1048576)
set -e
B="${1:-build}"
[ $# -gt 0 ] && shift
NS="${*:-131072 1048576}"
PS="${SPA_BENCH_RANKS:-1 2 4}"
HERE="$(cd "$(dirname "$0")" && pwd)"
T="$(mktemp -d)"
trap 'rm -rf "$T"' EXIT
export OMP_NUM_THREADS=1
for n in $NS; do
  reps=3
  [ "$n" -gt 500000 ] && reps=1
  for p in $PS; do
    for mode in overlap no-overlap; do
      flag=""
      [ "$mode" = no-overlap ] && flag="--no-overlap"
      sh "$HERE/../scripts/mpirun.sh" -n "$p" "$B/spa" bench --n "$n" --threads 1 --warmup 1 --reps "$reps" \
        --json $flag > "$T/$n-$p-$mode.json"
    done
  done
done
python3 - "$T" "$NS" "$PS" <<'PY'
import json, sys, os
d, ns, ps = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
hdr = (f"{'n':>8s} {'P':>2s} {'total':>7s} {'compute':>7s} {'halo':>7s} {'global':>7s} {'rma':>7s} "
       f"{'wait':>7s} {'wait_no':>7s} {'hidden':>6s} {'GFLOP/s':>8s} {'MB halo':>8s} {'MB glob':>8s} "
       f"{'MB rma':>8s} {'RSS MB':>7s}")
print("seconds are the slowest rank's; MB received per rank (max); RSS per rank (max)")
print(hdr)
for n in ns:
    for p in ps:
        a = json.load(open(os.path.join(d, f"{n}-{p}-overlap.json")))
        b = json.load(open(os.path.join(d, f"{n}-{p}-no-overlap.json")))
        w, w0 = a["seconds_wait"], b["seconds_wait"]
        # below a millisecond there is nothing to hide (one rank, no transfers)
        hidden = f"{100 * (1 - w / w0):5.0f}%" if w0 > 1e-3 else "     -"
        print(f"{n:>8s} {p:>2s} {a['seconds_total']:7.3f} {a['seconds_compute']:7.3f} {a['seconds_halo']:7.3f} "
              f"{a['seconds_global']:7.3f} {a['seconds_rma']:7.3f} {w:7.3f} {w0:7.3f} "
              f"{hidden} {a['gflops']:8.2f} {a['bytes_halo'] / 1e6:8.2f} "
              f"{a['bytes_global'] / 1e6:8.2f} {a['bytes_rma'] / 1e6:8.2f} {a['peak_rss_bytes'] / 2**20:7.0f}")
PY
