#!/bin/sh
# Runs one libFuzzer harness and judges what it found.
# Usage: tests/fuzz/run.sh HARNESS_EXE SEED_DIR WORK_DIR SECONDS MAX_LEN [libFuzzer flags]
#   e.g. tests/fuzz/run.sh build-asan/tests/fuzz/fuzz_input tests/fuzz/corpus/input \
#        /tmp/fz-input 3600 12288 -runs=1000000
#
# The fuzzer runs in fork mode (-fork=1 -ignore_crashes=1), so that a crash
# inside the HDF5 library does not end the run. Every crash, leak or
# timeout it saved is then run again alone and sorted by its first stack
# frame outside the sanitizers and libc's mem* routines:
# - in libhdf5: HDF5 itself failed on a corrupt file (a fault in the
#   system library, which spa cannot catch in-process); listed, not fatal;
# - anywhere else (spa, the harness's checks, a leak or a sanitizer report
#   in spa's code, a hang): fatal, exit 1.
# Prints the executions, the rate and both counts. WORK_DIR keeps the
# grown corpus (corpus/), the inputs (artifacts/) and their reports (.txt).
set -u
exe="$1" seeds="$2" work="$3" secs="$4" maxlen="$5"
shift 5
here="$(cd "$(dirname "$0")/../.." && pwd)"
mkdir -p "$work/corpus" "$work/artifacts"
rm -f "$work"/artifacts/*
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
export LSAN_OPTIONS="${LSAN_OPTIONS:-suppressions=$here/tests/lsan.supp:print_suppressions=0}"
name="$(basename "$exe")"
log="$work/$name.log"
start=$(date +%s)
"$exe" -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 -timeout=10 \
  -rss_limit_mb=2048 -max_len="$maxlen" -max_total_time="$secs" \
  -artifact_prefix="$work/artifacts/" "$@" "$work/corpus" "$seeds" >"$log" 2>&1
rc=$?
end=$(date +%s)
# a job that crashed left its scratch image (fuzz_common.h) behind
for f in /dev/shm/spa-fuzz-*.h5 /tmp/spa-fuzz-*.h5; do
  [ -f "$f" ] || continue
  pid=${f##*-}
  pid=${pid%.h5}
  kill -0 "$pid" 2>/dev/null || rm -f "$f"
done
# fork mode prints "#<execs>: cov: ..." after each job
execs=$(grep -E '^#[0-9]+:' "$log" | tail -1 | sed 's/^#\([0-9]*\):.*/\1/')
execs=${execs:-0}
secs_used=$((end - start))
[ "$secs_used" -gt 0 ] || secs_used=1

spa=0
hdf5=0
for a in "$work"/artifacts/crash-* "$work"/artifacts/leak-* "$work"/artifacts/timeout-* \
  "$work"/artifacts/oom-*; do
  [ -f "$a" ] || continue
  case "$a" in *.txt) continue ;; esac
  timeout 60 "$exe" -timeout=10 -rss_limit_mb=2048 "$a" >"$a.txt" 2>&1
  # first frame that is not the sanitizer runtime or libc copying memory
  top=$(grep -E '^ +#[0-9]+ ' "$a.txt" | grep -vE \
    '__interceptor_|__sanitizer|fuzzer::|__asan|__ubsan|__lsan|sanitizer_common|compiler-rt|sysdeps/x86_64|libc\.so|in (malloc|calloc|realloc|free|mem(cpy|move|set|cmp)|str[a-z]*) ' |
    head -1)
  case "$a" in
  */timeout-* | */oom-*) kind=$(basename "$a" | sed 's/-.*//') ;;
  *) kind=$(grep -m1 -oE 'SUMMARY: [A-Za-z]+: [A-Za-z-]+|check failed|detected memory leaks|out-of-memory' "$a.txt") ;;
  esac
  case "$top" in
  *libhdf5*)
    hdf5=$((hdf5 + 1))
    echo "HDF5 library fault: $(basename "$a"): ${kind:-?}: $(echo "$top" | sed 's/^ *//; s/ (BuildId.*//')"
    ;;
  *)
    # a fault counts when the input, run again alone, shows it; an oom or
    # timeout of the forked fuzzing process that the input does not repeat
    # (memory grown over many runs, a loaded machine) is reported only
    if grep -qE 'ERROR|SUMMARY|check failed|timeout|out-of-memory' "$a.txt"; then
      spa=$((spa + 1))
      echo "FAULT: $(basename "$a"): ${kind:-?}: $(echo "$top" | sed 's/^ *//; s/ (BuildId.*//')"
      echo "  report: $a.txt"
    else
      echo "not repeated alone: $(basename "$a") (${kind:-?} of the fuzzing process); report: $a.txt"
    fi
    ;;
  esac
done
echo "$name: $execs executions in ${secs_used} s ($((execs / secs_used))/s); faults: $spa in spa, $hdf5 inside the HDF5 library"
if [ "$spa" -gt 0 ]; then
  exit 1
fi
if [ "$rc" -ne 0 ] && [ "$hdf5" -eq 0 ]; then
  echo "$name: libFuzzer exited $rc; see $log"
  tail -20 "$log"
  exit 1
fi
exit 0
