#!/bin/sh
# Runs one libFuzzer harness and judges what it found.
# Usage: tests/fuzz/run.sh HARNESS_EXE SEED_DIR WORK_DIR SECONDS MAX_LEN [-runs=N] [libFuzzer flags]
#   e.g. tests/fuzz/run.sh build-asan/tests/fuzz/fuzz_input tests/fuzz/corpus/input \
#        /tmp/fz-input 3600 12288 -runs=1000000
#
# The harness runs in-process, one libFuzzer run after another on the
# growing corpus, for SECONDS; with -runs=N, until N executions in all,
# which SECONDS must be enough for. Each run ends at its first fault (a
# crash inside HDF5 too: the next run goes on from the corpus), and its
# log, with libFuzzer's final stat lines, stays as WORK_DIR/run-K.log.
#
# Every crash, leak, timeout or oom saved is run again alone, and a run
# that failed without saving an input (a leak found at exit, a signal) is
# judged by its own log. Each is sorted by the first stack frame of its
# report outside the sanitizers and libc's mem* routines:
# - in libhdf5: HDF5 itself failed on a corrupt file (a fault in the
#   system library, which spa cannot catch in-process); listed, not fatal;
# - anywhere else (spa, the harness's checks, a leak or a sanitizer report
#   in spa's code, a hang, a run that failed with no report): fatal, exit 1.
# A saved input that runs clean alone (the fault needed the state that
# thousands of damaged files before it left in HDF5, or a loaded machine
# made it slow) is listed, not fatal.
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

# -runs=N sets a target of executions; the other flags go to libFuzzer
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

# Every harness process starts through "$own", which writes its pid to
# $pidf before it execs; clean then removes what that process leaves when
# it crashes (most runs end in one): its scratch image (fuzz_common.h) and
# LLVM OpenMP's registration file in /dev/shm.
pidf="$work/.pid"
own='echo $$ >"$0"; exec "$@"'
clean() {
  pid=$(cat "$pidf" 2>/dev/null)
  rm -f "$pidf"
  [ -n "$pid" ] || return 0
  rm -f /dev/shm/__KMP_REGISTERED_LIB_"$pid"_* /dev/shm/spa-fuzz-*-"$pid".h5 /tmp/spa-fuzz-*-"$pid".h5
}

spa=0
hdf5=0
unrepeated=0
# judge WHAT REPORT: sorts one fault by REPORT's first frame (see above)
judge() {
  top=$(grep -E '^ +#[0-9]+ ' "$2" | grep -vE \
    '__interceptor_|__sanitizer|fuzzer::|__asan|__ubsan|__lsan|sanitizer_common|compiler-rt|sysdeps/|nptl/|stdlib/abort|libc\.so|in (malloc|calloc|realloc|free|mem(cpy|move|set|cmp)|str[a-z]*) ' |
    head -1 | sed 's/^ *//; s/ (BuildId.*//')
  # the lines that name the input ("Running: .../timeout-...") say nothing
  body=$(grep -vE '^(Running|Executed) ' "$2")
  kind=$(echo "$body" | grep -m1 -oE 'SUMMARY: [A-Za-z]+: [A-Za-z-]+|check failed|ERROR: [A-Za-z]+: [a-z -]+|killed after [0-9]+ s')
  [ -n "$kind" ] || ! echo "$body" | grep -q 'ERROR' || kind="ERROR"
  case "$top" in
  *libhdf5*)
    hdf5=$((hdf5 + 1))
    echo "HDF5 library fault: $1: ${kind:-?}: $top"
    ;;
  *)
    if [ -n "$kind" ]; then
      spa=$((spa + 1))
      echo "FAULT: $1: $kind: ${top:-no stack}"
      echo "  report: $2"
    elif [ "$3" = replayed ]; then
      unrepeated=$((unrepeated + 1))
      echo "not repeated alone: $1; report: $2"
    else
      spa=$((spa + 1))
      echo "FAULT: $1 with no report; see $2"
    fi
    ;;
  esac
}

start=$(date +%s)
execs=0
k=0
idle=0
rc=0
: >"$log"
while :; do
  left=$((start + secs - $(date +%s)))
  [ "$left" -gt 0 ] || break
  [ -z "$target" ] || [ "$execs" -lt "$target" ] || break
  k=$((k + 1))
  run="$work/run-$k.log"
  # each run's inputs carry its number: a run that fails on an input an
  # earlier run saved still leaves a file of its own
  sh -c "$own" "$pidf" "$exe" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 -max_len="$maxlen" \
    -artifact_prefix="$work/artifacts/run$k-" "$@" ${target:+-runs=$((target - execs))} \
    -max_total_time="$left" "$work/corpus" "$seeds" >"$run" 2>&1
  r=$?
  clean
  done_now=$(sed -n 's/^stat::number_of_executed_units: *//p' "$run" | tail -1)
  execs=$((execs + ${done_now:-0}))
  new=$(find "$work/artifacts" -type f -name "run$k-*" ! -name '*.txt' | wc -l)
  echo "run $k: exit $r, ${done_now:-0} executions, $new input(s) saved" >>"$log"
  if [ "$r" -ne 0 ] && [ "$new" -eq 0 ]; then
    judge "run $k (exit $r, no input saved)" "$run" run
  fi
  # a harness that cannot get going would loop here for ever
  if [ "${done_now:-0}" -lt 10 ] && [ "$left" -gt 5 ]; then idle=$((idle + 1)); else idle=0; fi
  if [ "$idle" -ge 3 ]; then
    echo "$name: three runs in a row with fewer than 10 executions; see $run"
    rc=1
    break
  fi
done
end=$(date +%s)
secs_used=$((end - start))
[ "$secs_used" -gt 0 ] || secs_used=1

for a in "$work"/artifacts/run*-crash-* "$work"/artifacts/run*-leak-* \
  "$work"/artifacts/run*-timeout-* "$work"/artifacts/run*-oom-*; do
  [ -f "$a" ] || continue
  case "$a" in *.txt) continue ;; esac
  # -malloc_limit_mb: one huge allocation reports its own stack, not the
  # largest live ones (an out-of-memory by RSS shows those)
  timeout 60 sh -c "$own" "$pidf" "$exe" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=2048 "$a" >"$a.txt" 2>&1
  [ $? -ne 124 ] || echo "run.sh: killed after 60 s" >>"$a.txt"
  clean
  judge "$(basename "$a")" "$a.txt" replayed
done
echo "$name: $k run(s), $execs executions in ${secs_used} s ($((execs / secs_used))/s); faults: $spa in spa, $hdf5 inside the HDF5 library, $unrepeated not repeated alone"
[ "$spa" -eq 0 ] && [ "$rc" -eq 0 ] || exit 1
if [ -n "$target" ] && [ "$execs" -lt "$target" ]; then
  echo "$name: $execs of $target executions in ${secs} s"
  exit 1
fi
exit 0
