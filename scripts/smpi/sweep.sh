#!/usr/bin/env bash
# sweep.sh - spa's scaling study on simulated clusters of 16 to 1024 nodes.
#
#   scripts/smpi/sweep.sh [OUT_DIR] [sweep.py options, e.g. --quick]
#
# Builds spa twice under OUT_DIR (default results/smpi): the normal build
# (Open MPI, for the calibration and the measured runs) and the SMPI build
# (scripts/smpi/build.sh), then runs scripts/smpi/sweep.py, which writes
# calib.csv, strong.csv, weak.csv, compare.csv, bytes.csv and the plots.
# Set SPA_REAL or SPA_SMPI to reuse an existing spa program of either kind.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=$(cd "$here/../.." && pwd)
out=${1:-results/smpi}
[ $# -gt 0 ] && shift
mkdir -p "$out"
out=$(cd "$out" && pwd)

if [ -z "${SPA_SMPI:-}" ]; then
    SPA_SMPI=$("$here/build.sh" "$out/build-smpi")
fi
if [ -z "${SPA_REAL:-}" ]; then
    cmake -S "$src" -B "$out/build-real" -DCMAKE_BUILD_TYPE=Release -DSPA_BUILD_TESTS=OFF \
        -DSPA_WITH_HDF5=OFF >"$out/build-real.log" 2>&1
    cmake --build "$out/build-real" --target spa_cli -j "$(nproc)" >>"$out/build-real.log" 2>&1
    SPA_REAL=$out/build-real/spa
fi

# the first python3 that has matplotlib draws the plots; CSVs come anyway
py=python3
for p in python3 /usr/bin/python3; do
    if command -v "$p" >/dev/null && "$p" -c "import matplotlib" 2>/dev/null; then py=$p; break; fi
done
exec "$py" "$here/sweep.py" --smpi "$SPA_SMPI" --real "$SPA_REAL" --out "$out" "$@"
