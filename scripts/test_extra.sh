#!/bin/sh
# The suites .ci/run adds after scripts/test.sh, each in its own build
# folder. Usage: scripts/test_extra.sh [sanitize] [fuzz] [memcheck] [mpich]
# (no argument: all four, in that order).
#   sanitize  build-asan/ (clang, -DSPA_FUZZ=ON: ASan + UBSan with every
#             report fatal, LeakSanitizer, libFuzzer coverage): the dist
#             cases (test_dist --quick), cli and io tests at 1 to 4 ranks
#             (the usage-error checks at 1)
#   fuzz      build-asan/: each libFuzzer harness for $SPA_FUZZ_SECONDS
#             (default 60) from tests/fuzz/corpus (ctest label fuzz)
#   memcheck  spa run at 2 ranks under valgrind (label memcheck): in
#             build/ when it has SPA_NATIVE=OFF (scripts/test.sh ran it),
#             else in build-memcheck/ (valgrind cannot decode AVX-512)
#   mpich     build-mpich/ (-DSPA_MPI=mpich): the dist, cli and io tests,
#             and out/lse on data/sample.h5 bit-identical to build/spa's
#             (Open MPI, from scripts/test.sh) at 1 and 3 ranks
set -e
cd "$(dirname "$0")/.."
root="$(pwd)"
sh scripts/setup.sh
suites="${*:-sanitize fuzz memcheck mpich}"
jobs="${SPA_TEST_JOBS:-2}"
sel='^(dist_p[1-4]|cli_|io_)'

# Every sanitizer report ends its process with a code no test expects (spa
# itself exits 0-3); LeakSanitizer skips what tests/lsan.supp names (MPI,
# PMIx, hwloc, HDF5, OpenMP, the loader), which needs full stacks through
# those libraries. use_tls=0: LeakSanitizer's thread scan crashes on the TLS
# of Open MPI's singleton; what only TLS holds is that library state.
export ASAN_OPTIONS="exitcode=86:fast_unwind_on_malloc=0:detect_leaks=1:allocator_may_return_null=1"
export UBSAN_OPTIONS="exitcode=87:halt_on_error=1:print_stacktrace=1"
export LSAN_OPTIONS="suppressions=$root/tests/lsan.supp:print_suppressions=0:use_tls=0"

asan_build() {
  [ -n "$asan_built" ] && return
  CC=clang SPA_BUILD_DIR=build-asan sh scripts/build.sh -DSPA_FUZZ=ON \
    -DSPA_FUZZ_SECONDS="${SPA_FUZZ_SECONDS:-60}"
  asan_built=1
}

for s in $suites; do
  t0=$(date +%s)
  case "$s" in
  sanitize)
    asan_build
    # the usage-error checks at 4 ranks add only rank agreement to their
    # 1-rank twins: under the sanitizers, the 1-rank ones suffice
    # and the dist cases with test_dist --quick (tests/sanitize)
    (cd build-asan && ctest --output-on-failure -j "$jobs" -R '^(san_dist_p[1-4]|san_backward_|cli_|io_)' \
      -E '^cli_exit_.*_p4$')
    ;;
  fuzz)
    asan_build
    # one slot each: every harness runs its fixed time at once
    (cd build-asan && ctest --output-on-failure -j 3 -L fuzz)
    ;;
  memcheck)
    if grep -q '^SPA_NATIVE:BOOL=OFF' build/CMakeCache.txt 2>/dev/null &&
      (cd build && ctest -N -L memcheck | grep -q 'memcheck_'); then
      echo "test_extra: memcheck ran in build/ with scripts/test.sh"
    else
      cmake -S . -B build-memcheck -DCMAKE_BUILD_TYPE=Release -DSPA_NATIVE=OFF >/dev/null
      cmake --build build-memcheck -j "$(nproc)" --target spa_cli
      (cd build-memcheck && ctest --output-on-failure -L memcheck)
    fi
    ;;
  mpich)
    SPA_BUILD_DIR=build-mpich sh scripts/build.sh -DSPA_MPI=mpich \
      -DSPA_OPENMPI_SPA="$root/build/spa"
    (cd build-mpich && ctest --output-on-failure -j "$jobs" -R "$sel|^mpich_")
    ;;
  *)
    echo "scripts/test_extra.sh: unknown suite '$s'" >&2
    exit 2
    ;;
  esac
  echo "test_extra: $s passed in $(($(date +%s) - t0)) s"
done
