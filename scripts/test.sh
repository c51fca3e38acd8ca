#!/bin/sh
# Installs what is missing, builds, and runs the whole test suite with ctest.
# Extra arguments go to ctest, e.g. scripts/test.sh -R dist
set -e
cd "$(dirname "$0")/.."
sh scripts/setup.sh
sh scripts/build.sh
cd build
ctest --output-on-failure -j 2 "$@"
