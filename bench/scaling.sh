#!/bin/sh
# Where the time goes on P = 1, 2, 4 ranks, and how much of the communication
# the overlap hides (issue: distributed runtime). For each n and P:
#   - one spa bench run on the default transports: the time split into
#     compute, halo, global, rma and wait (blocked on halo and random-link
#     transfers), bytes received and peak RSS per rank;
#   - two runs with every transfer over TCP and one-sided MPI emulated by
#     messages (pml ob1, btl tcp, osc pt2pt), with the overlap and with
#     --no-overlap (every transfer completes before the first block):
#       hidden = 1 - wait(overlap) / wait(no overlap);
#   - one more over TCP with the two-sided transport forced
#     (SPA_RANDOM_TRANSPORT=p2p, what runs where a window cannot be made):
#     each owner posts at the start the runs the plan says others fetch.
#   The wait is also given as a share of compute (the target: <= 10%).
#     On one node the default one-sided transport is shared memory, where a
#     get completes inside MPI_Get and there is nothing left to hide; over
#     TCP the transfers take real time, as between nodes.
# On a machine with fewer cores than ranks the ranks share cores: the times
# then include waiting for a descheduled peer.
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
trap 'exit 129' HUP; trap 'exit 130' INT; trap 'exit 143' TERM # so that EXIT's removal runs
export OMP_NUM_THREADS=1
tcp() { OMPI_MCA_pml=ob1 OMPI_MCA_btl=tcp,self OMPI_MCA_osc=pt2pt "$@"; }
for n in $NS; do
  reps=3
  [ "$n" -gt 500000 ] && reps=1
  for p in $PS; do
    run="sh $HERE/../scripts/mpirun.sh -n $p $B/spa bench --n $n --threads 1 --warmup 1 --reps $reps --json"
    $run > "$T/$n-$p-default.json"
    tcp $run > "$T/$n-$p-tcp.json"
    tcp $run --no-overlap > "$T/$n-$p-tcp-no-overlap.json"
    SPA_RANDOM_TRANSPORT=p2p tcp $run > "$T/$n-$p-tcp-p2p.json"
  done
done
python3 - "$T" "$NS" "$PS" <<'PY'
import json, sys, os
d, ns, ps = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
load = lambda name: json.load(open(os.path.join(d, name + ".json")))
share = lambda j: f"{100 * j['seconds_wait'] / j['seconds_compute']:6.1f}%" if j['seconds_compute'] > 0 else "      -"
print("seconds are the slowest rank's; MB received per rank (max); RSS per rank (max)")
print(f"{'n':>8s} {'P':>2s} {'total':>7s} {'compute':>7s} {'halo':>7s} {'global':>7s} {'rma':>7s} {'wait':>7s} "
      f"{'GFLOP/s':>8s} {'MB halo':>8s} {'MB glob':>8s} {'MB rma':>8s} {'RSS MB':>7s} | "
      f"{'tcp wait':>8s} {'no-ovl':>7s} {'hidden':>6s} {'of comp':>7s} | {'p2p wait':>8s} {'of comp':>7s}")
for n in ns:
    for p in ps:
        a, t, t0 = load(f"{n}-{p}-default"), load(f"{n}-{p}-tcp"), load(f"{n}-{p}-tcp-no-overlap")
        t2 = load(f"{n}-{p}-tcp-p2p")
        w, w0 = t["seconds_wait"], t0["seconds_wait"]
        # below a millisecond there is nothing to hide (one rank, no transfers)
        hidden = f"{100 * (1 - w / w0):5.0f}%" if w0 > 1e-3 else "     -"
        print(f"{n:>8s} {p:>2s} {a['seconds_total']:7.3f} {a['seconds_compute']:7.3f} {a['seconds_halo']:7.3f} "
              f"{a['seconds_global']:7.3f} {a['seconds_rma']:7.3f} {a['seconds_wait']:7.3f} {a['gflops']:8.2f} "
              f"{a['bytes_halo'] / 1e6:8.2f} {a['bytes_global'] / 1e6:8.2f} {a['bytes_rma'] / 1e6:8.2f} "
              f"{a['peak_rss_bytes'] / 2**20:7.0f} | {w:8.3f} {w0:7.3f} {hidden} {share(t)} | "
              f"{t2['seconds_wait']:8.3f} {share(t2)}")
PY
