#!/bin/sh
# Runs one libFuzzer harness and judges what it found.
# Usage: tests/fuzz/run.sh HARNESS_EXE SEED_DIR WORK_DIR SECONDS MAX_LEN [libFuzzer flags]
#   e.g. tests/fuzz/run.sh build-asan/tests/fuzz/fuzz_input tests/fuzz/corpus/input \
#        /tmp/fz-input 3600 12288 -runs=1000000
#
# Without -runs the fuzzer runs for SECONDS in fork mode (-fork=1
# -ignore_crashes=1), so that a crash inside the HDF5 library does not end
# the run. With -runs=N it runs in-process, one libFuzzer run after
# another on the growing corpus, until N executions in all (or SECONDS):
# each run ends at its first fault, and every run's log, with libFuzzer's
# final stat lines, stays as WORK_DIR/run-K.log.
#
# Every crash, leak or timeout saved is then run again alone and sorted by
# its first stack frame outside the sanitizers and libc's mem* routines:
# - in libhdf5: HDF5 itself failed on a corrupt file (a fault in the
#   system library, which spa cannot catch in-process); listed, not fatal;
# - anywhere else (spa, the harness's checks, a leak or a sanitizer report
#   in spa's code, a hang): fatal, exit 1.
# A crash that left no input to run again (fork mode's crash count above
# the inputs saved, or a run that failed without saving one) is fatal too.
# A saved input that runs clean alone (the fault needed the state that
# thousands of damaged files before it left in HDF5) is listed, not fatal.
# Prints the executions, the rate and both counts. WORK_DIR keeps the
# grown corpus (corpus/), the inputs (artifacts/) and their reports (.txt).
set -u
exe="$1" seeds="$2" work="$3" secs="$4" maxlen="$5"
shift 5
here="$(cd "$(dirname "$0")/../.." && pwd)"
mkdir -p "$work/corpus" "$work/artifacts"
rm -f "$work"/artifacts/* "$work"/run-*.log
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
export LSAN_OPTIONS="${LSAN_OPTIONS:-suppressions=$here/tests/lsan.supp:print_suppressions=0}"
name="$(basename "$exe")"
log="$work/$name.log"

# -runs=N picks the in-process mode; the other flags go to libFuzzer
target=""
n=$#
i=0
while [ "$i" -lt "$n" ]; do
  a="$1"
  shift
  i=$((i + 1))
  case "$a" in
  -runs=*) target="${a#-runs=}" ;;
  *) set -- "$@" "$a" ;;
  esac
done

start=$(date +%s)
lost=0
if [ -z "$target" ]; then
  "$exe" -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 -timeout=10 \
    -rss_limit_mb=2048 -max_len="$maxlen" -max_total_time="$secs" \
    -artifact_prefix="$work/artifacts/" "$@" "$work/corpus" "$seeds" >"$log" 2>&1
  rc=$?
  # fork mode prints "#<execs>: cov: ... oom/timeout/crash: a/b/c ..." after each job
  last=$(grep -E '^#[0-9]+:' "$log" | tail -1)
  execs=$(echo "$last" | sed 's/^#\([0-9]*\):.*/\1/')
  crashes=$(echo "$last" | sed -n 's|.*oom/timeout/crash: [0-9]*/[0-9]*/\([0-9]*\).*|\1|p')
  saved=$(ls "$work"/artifacts 2>/dev/null | grep -cE '^(crash|leak)-[0-9a-f]+$')
  [ "${crashes:-0}" -gt "$saved" ] && lost=$((${crashes:-0} - saved))
else
  rc=0
  execs=0
  k=0
  idle=0
  : >"$log"
  while [ "$execs" -lt "$target" ]; do
    left=$((start + secs - $(date +%s)))
    [ "$left" -gt 0 ] || break
    k=$((k + 1))
    run="$work/run-$k.log"
    touch "$work/.mark"
    "$exe" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 -max_len="$maxlen" \
      -artifact_prefix="$work/artifacts/" "$@" -runs=$((target - execs)) -max_total_time="$left" \
      "$work/corpus" "$seeds" >"$run" 2>&1
    r=$?
    done_now=$(sed -n 's/^stat::number_of_executed_units: *//p' "$run" | tail -1)
    execs=$((execs + ${done_now:-0}))
    new=$(find "$work/artifacts" -type f -newer "$work/.mark" ! -name '*.txt' | wc -l)
    echo "run $k: exit $r, ${done_now:-0} executions, $new input(s) saved" >>"$log"
    if [ "$r" -ne 0 ] && [ "$new" -eq 0 ]; then
      lost=$((lost + 1))
      echo "run $k exited $r without saving an input; see $run" >>"$log"
    fi
    # a harness that cannot get going would loop here for ever
    if [ "${done_now:-0}" -lt 10 ]; then idle=$((idle + 1)); else idle=0; fi
    if [ "$idle" -ge 3 ]; then
      echo "$name: three runs in a row with fewer than 10 executions; see $run"
      rc=1
      break
    fi
  done
  rm -f "$work/.mark"
fi
end=$(date +%s)
# a job that crashed left its scratch image (fuzz_common.h) behind
for f in /dev/shm/spa-fuzz-*.h5 /tmp/spa-fuzz-*.h5; do
  [ -f "$f" ] || continue
  pid=${f##*-}
  pid=${pid%.h5}
  kill -0 "$pid" 2>/dev/null || rm -f "$f"
done
execs=${execs:-0}
secs_used=$((end - start))
[ "$secs_used" -gt 0 ] || secs_used=1

spa=0
hdf5=0
unrepeated=0
for a in "$work"/artifacts/crash-* "$work"/artifacts/leak-* "$work"/artifacts/timeout-* \
  "$work"/artifacts/oom-*; do
  [ -f "$a" ] || continue
  case "$a" in *.txt) continue ;; esac
  # -malloc_limit_mb: one huge allocation reports its own stack, not the
  # largest live ones (an out-of-memory by RSS shows those)
  timeout 60 "$exe" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=2048 "$a" >"$a.txt" 2>&1
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
    # timeout of the fuzzing process that the input does not repeat
    # (memory grown over many runs, a loaded machine) is reported only
    if grep -qE 'ERROR|SUMMARY|check failed|timeout|out-of-memory' "$a.txt"; then
      spa=$((spa + 1))
      echo "FAULT: $(basename "$a"): ${kind:-?}: $(echo "$top" | sed 's/^ *//; s/ (BuildId.*//')"
      echo "  report: $a.txt"
    else
      unrepeated=$((unrepeated + 1))
      echo "not repeated alone: $(basename "$a") (${kind:-?} of the fuzzing process); report: $a.txt"
    fi
    ;;
  esac
done
if [ "$lost" -gt 0 ]; then
  spa=$((spa + lost))
  echo "FAULT: $lost crash(es) without a saved input; see $log"
fi
echo "$name: $execs executions in ${secs_used} s ($((execs / secs_used))/s); faults: $spa in spa, $hdf5 inside the HDF5 library"
if [ "$spa" -gt 0 ]; then
  exit 1
fi
if [ -n "$target" ]; then
  [ "$rc" -eq 0 ] || exit 1
  if [ "$execs" -lt "$target" ]; then
    echo "$name: $execs of $target executions in ${secs} s"
    exit 1
  fi
  exit 0
fi
# libFuzzer exits non-zero after any crash: listed faults (inside HDF5, or
# of the fuzzing process and not repeated alone) explain it
if [ "$rc" -ne 0 ] && [ "$hdf5" -eq 0 ] && [ "$unrepeated" -eq 0 ]; then
  echo "$name: libFuzzer exited $rc; see $log"
  tail -20 "$log"
  exit 1
fi
exit 0
