#!/bin/sh
# Configures and builds spa (Release). Extra arguments go to CMake, e.g.
#   scripts/build.sh -DSPA_SANITIZE=ON
# The build folder is build/, or $SPA_BUILD_DIR, e.g.
#   SPA_BUILD_DIR=build-mpich scripts/build.sh -DSPA_MPI=mpich
set -e
cd "$(dirname "$0")/.."
dir="${SPA_BUILD_DIR:-build}"
cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build "$dir" -j "$(nproc)"
