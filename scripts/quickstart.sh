#!/bin/sh
# Installs what is missing, builds, and runs the main job: spa run on its
# default synthetic input (n = 131072, 4 heads, D = 64) on 2 ranks.
set -e
cd "$(dirname "$0")/.."
sh scripts/setup.sh
sh scripts/build.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
sh scripts/mpirun.sh -n 2 build/spa run "$@"
