#!/bin/sh
# Fetched-block memory bounded (issue 10, section 4), measured in one run:
# the machine's memory in use while spa runs a long sequence through HDF5,
# against the bytes of q + k + v + out.
#   1. spa gen writes q, k, v (n tokens, H = 1, D = 64 by default).
#   2. spa run --input --output --json on P ranks (1 thread each), with
#      --fetch-mib M when FETCH_MIB is set (else spa's default budget).
#   3. Memory in use (MemTotal - MemAvailable of /proc/meminfo) is sampled
#      every 0.1 s from before the launch to the end; its peak minus the
#      level before the launch is what the run took. Peak RSS would count
#      the other rank's window pages that shared memory maps in twice.
# Prints the peak, its ratio to q + k + v + out, the time, and the --json
# budget and batch counts of every rank.
#   bench/memory.sh [build-dir] [n] [ranks]   (default: build 16777216 2)
# Needs about 1.2 x 16 * n * D bytes free in memory and 20 * n * D bytes
# on the disk of TMPDIR (n = 2^24: 20 GiB of memory, 21 GB of disk).
set -e
B="${1:-build}"
N="${2:-16777216}"
P="${3:-2}"
H="${SPA_BENCH_HEADS:-1}"
D=64
HERE="$(cd "$(dirname "$0")" && pwd)"
T="$(mktemp -d)"
sampler=""
# set -e holds inside the trap too: a kill that fails (the sampler already
# stopped, or never started) must not skip the removal of the 20 GB
trap '[ -z "$sampler" ] || kill "$sampler" 2>/dev/null || :; rm -rf "$T"' EXIT
trap 'exit 129' HUP; trap 'exit 130' INT; trap 'exit 143' TERM # so that EXIT's removal runs
export OMP_NUM_THREADS=1
inuse() { awk '/^MemTotal:/ {t = $2} /^MemAvailable:/ {a = $2} END {printf "%.0f\n", (t - a) * 1024}' /proc/meminfo; }
"$B/spa" gen --output "$T/in.h5" --n "$N" --heads "$H" --dim "$D" --seed 1 > /dev/null
sync
sleep 1
base=$(inuse)
( while :; do inuse; sleep 0.1; done ) > "$T/samples" &
sampler=$!
start=$(date +%s.%N)
sh "$HERE/../scripts/mpirun.sh" -q -n "$P" "$B/spa" run --input "$T/in.h5" --output "$T/out.h5" \
    --seed 1 --json ${FETCH_MIB:+--fetch-mib "$FETCH_MIB"} > "$T/run.json"
end=$(date +%s.%N)
kill "$sampler"
sampler=""
/usr/bin/python3 - "$T" "$base" "$N" "$H" "$D" "$P" "$start" "$end" <<'PY'
import json, sys
T, base, n, h, d, p, t0, t1 = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:7]), *map(float, sys.argv[7:9])
peak = max(int(x) for x in open(T + "/samples") if x.strip()) - base
tensors = 4 * h * n * d * 4
txt = open(T + "/run.json").read()
dec, i, ranks = json.JSONDecoder(), 0, []  # rank 0 prints the job's JSON
while i < len(txt):  # one JSON object per rank, or one in all
    while i < len(txt) and txt[i].isspace():
        i += 1
    if i >= len(txt):
        break
    obj, i = dec.raw_decode(txt, i)
    ranks.append(obj)
print(f"n = {n}, H = {h}, D = {d}, P = {p}, 1 thread per rank, through HDF5")
print(f"q + k + v + out: {tensors / 2**30:.2f} GiB")
print(f"memory in use, peak above the level before the launch: {peak / 2**30:.2f} GiB "
      f"= {peak / tensors:.3f} x q + k + v + out (target <= 1.15)")
print(f"wall time of the launch: {t1 - t0:.1f} s")
for r in ranks:
    print("{}: fetch budget {} B, batches {}, fetched {} B, seconds_total {}".format(
        "rank 0 (the job's figures)", r.get("fetch_bytes", "?"), r.get("batches", "?"),
        r.get("bytes_rma", "?"), r.get("seconds_total", "?")))
PY
