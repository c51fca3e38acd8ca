#!/usr/bin/env bash
# build.sh - builds spa for SimGrid SMPI (smpicc), without HDF5 or OpenMP.
#
#   scripts/smpi/build.sh [BUILD_DIR] [extra cmake -D flags...]
#
# BUILD_DIR defaults to build-smpi in the current folder. The program is
# BUILD_DIR/spa, a shared object that only smpirun can start.
#
# Why no OpenMP: SMPI runs every simulated rank as a coroutine of one OS
# thread, and a rank may yield to another inside a parallel region, which
# would mix the ranks' OpenMP state. SMPI's MPI_Init_thread provides
# MPI_THREAD_SINGLE anyway, so each rank runs one thread: the pragmas are
# compiled out and libgomp only answers omp_get_max_threads() and friends.
#
# bench/smpi/smpi_model.c is linked in with --wrap so that SPA_SMPI_MODEL=1
# at run time replaces the kernels by simulated FLOPs (see docs/smpi.md).
#
# Exit codes: 0 built, 77 SimGrid (smpicc) is not installed, else failed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=$(cd "$here/../.." && pwd)
build=${1:-build-smpi}
[ $# -gt 0 ] && shift

if ! command -v smpicc >/dev/null 2>&1 || ! command -v smpirun >/dev/null 2>&1; then
    echo "build.sh: smpicc/smpirun not found; install SimGrid (Debian: apt-get install libsimgrid-dev)" >&2
    exit 77
fi
mkdir -p "$build"
build=$(cd "$build" && pwd)

gomp=$(gcc -print-file-name=libgomp.so)
wrap=spa_kernel_block,--wrap=spa_kernel_global_partial,--wrap=spa_synth,--wrap=spa_alloc
wrap=$wrap,--wrap=MPI_Win_allocate,--wrap=spa_free,--wrap=MPI_Get,--wrap=MPI_Init_thread
wrap=$wrap,--wrap=MPI_Isend,--wrap=MPI_Irecv,--wrap=spa_comm_connect,--wrap=spa_comm_post
wrap=$wrap,--wrap=spa_comm_fetch,--wrap=spa_comm_wait_batch,--wrap=spa_comm_wait_rank,--wrap=spa_comm_destroy
wrap=$wrap,--wrap=spa_pattern_spread_ws

# the model object first: the link line of spa names it through the flags
smpicc -std=c11 -O2 -Wall -Wextra -Wno-unknown-pragmas -I"$src/include" -I"$src/src" -I"$src/src/plan" -I"$src/src/kernel" -I"$src/src/runtime" \
    -c "$src/bench/smpi/smpi_model.c" -o "$build/smpi_model.o"

# Configure twice: the compiler and package checks of the first pass must
# link without the model object, the second pass adds it to spa's link line.
conf=(-S "$src" -B "$build"
    -DCMAKE_C_COMPILER=smpicc
    -DCMAKE_BUILD_TYPE=Release
    -DSPA_WITH_HDF5=OFF -DSPA_BUILD_TESTS=OFF
    -DOpenMP_C_FLAGS=-fno-openmp -DOpenMP_C_LIB_NAMES=gomp -DOpenMP_gomp_LIBRARY="$gomp"
    -DCMAKE_C_FLAGS=-Wno-unknown-pragmas)
{ cmake "${conf[@]}" -DCMAKE_EXE_LINKER_FLAGS= "$@" &&
  cmake "${conf[@]}" -DMPI_C_WORKS=TRUE \
      -DCMAKE_EXE_LINKER_FLAGS="$build/smpi_model.o -Wl,--wrap=$wrap" "$@"; } \
    >"$build/configure.log" 2>&1 || { cat "$build/configure.log" >&2; exit 1; }
cmake --build "$build" --target spa_cli -j "$(nproc)" >"$build/build.log" 2>&1 ||
    { tail -40 "$build/build.log" >&2; exit 1; }
echo "$build/spa"
