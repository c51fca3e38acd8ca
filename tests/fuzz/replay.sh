#!/bin/sh
# Replays the inputs a fuzz campaign saved (crashes, leaks, timeouts and
# out-of-memory reports of the in-process harnesses, most of them inside
# HDF5) through the spa program, as a user would meet them:
#   fuzz_input  files:  spa run --input FILE
#   fuzz_layout files:  spa run --layout FILE (block, n and heads from the
#                       harness's 4-byte prefix, as fuzz_layout.c decodes it)
# Each must end within 150 s with exit 0 or 3 and at most one stderr line.
# Prints the count of each outcome and fails on any other.
# Usage: tests/fuzz/replay.sh SPA_EXE input|layout ARTIFACT_DIR
set -u
spa="$1" kind="$2" dir="$3"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
total=0 bad=0
for f in "$dir"/*; do
  [ -f "$f" ] || continue
  if [ "$kind" = layout ]; then
    # byte 0: block = 1 + b % 8; byte 1: nb = 1 + b % 8;
    # byte 2: n = nb * block - b % block; byte 3: heads = 1 + b % 4
    [ "$(wc -c <"$f")" -ge 4 ] || continue
    set -- $(od -An -tu1 -N4 "$f")
    block=$((1 + $1 % 8)) nb=$((1 + $2 % 8)) heads=$((1 + $4 % 4))
    n=$((nb * block - $3 % block))
    tail -c +5 "$f" >"$tmp/layout.h5"
    args="run --layout $tmp/layout.h5 --block $block --n $n --heads $heads --dim 8"
  else
    args="run --input $f"
  fi
  total=$((total + 1))
  # SIGKILL: a process that hangs may not stop on SIGTERM
  timeout -s KILL 150 $spa $args >"$tmp/out" 2>"$tmp/err"
  rc=$?
  lines=$(grep -c . "$tmp/err")
  echo "exit $rc, $lines stderr line(s)" >>"$tmp/tally"
  if { [ "$rc" != 0 ] && [ "$rc" != 3 ]; } || [ "$lines" -gt 1 ]; then
    bad=$((bad + 1))
    echo "replay: $(basename "$f"): exit $rc, stderr:" >&2
    head -3 "$tmp/err" >&2
  fi
done
[ "$total" -gt 0 ] && sort "$tmp/tally" | uniq -c
echo "replay: $total $kind input(s), $bad with another outcome"
[ "$bad" -eq 0 ]
