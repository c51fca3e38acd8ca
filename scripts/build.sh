#!/bin/sh
# Configures and builds spa in build/ (Release). Extra arguments go to CMake,
# e.g. scripts/build.sh -DSPA_SANITIZE=ON
set -e
cd "$(dirname "$0")/.."
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build build -j "$(nproc)"
