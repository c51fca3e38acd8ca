#!/bin/sh
# spa beside its peers, in one run, on the same inputs (issue 10, section 2):
# spa, PyTorch FlexAttention with a BlockMask built from spa's exported plan
# (spa plan --export-layout, BlockMask.from_kv_blocks, flex_attention under
# torch.compile) and dense scaled_dot_product_attention with the equivalent
# boolean mask, at n = 16K, 32K, 64K and 128K, H = 4, D = 64, 2 threads
# each. Prints the times, spa's speed-up over each peer and the largest
# difference between spa's out and each peer's (FlexAttention's must be
# <= 1e-4, or the script fails).
#
#   bench/peers.sh [build-dir] [options of bench/peers.py] [-- spa pattern flags]
#   e.g. bench/peers.sh build --sizes 16384 --peers flex
#
# Not part of CI. The first run creates a Python virtual environment in
# $SPA_PEERS_VENV (default ~/.cache/spa-peers-venv) and installs torch, h5py
# and numpy from PyPI into it: torch's wheels for Linux pull its CUDA
# libraries, about 5 GB. Later runs reuse it. $SPA_PEERS_PYTHON is the
# Python that creates it (default python3). It takes about 15 minutes on 2
# cores, most of it dense SDPA at 128K.
set -e
HERE="$(cd "$(dirname "$0")/.." && pwd)"
B="build"
case "$1" in
    ""|-*) ;;
    *) B="$1"; shift ;;
esac
VENV="${SPA_PEERS_VENV:-$HOME/.cache/spa-peers-venv}"
PY="$VENV/bin/python"

if ! [ -x "$PY" ] || ! "$PY" -c 'import torch, h5py, numpy' 2>/dev/null; then
    echo "peers: installing torch, h5py and numpy into $VENV (about 5 GB)" >&2
    "${SPA_PEERS_PYTHON:-python3}" -m venv "$VENV"
    "$PY" -m pip install --upgrade pip >&2
    "$PY" -m pip install torch h5py numpy >&2
fi

if ! [ -x "$B/spa" ]; then
    SPA_BUILD_DIR="$B" sh "$HERE/scripts/build.sh" >&2
fi

T="$(mktemp -d "${TMPDIR:-/tmp}/spa-peers.XXXXXX")"
trap 'rm -rf "$T"' EXIT
trap 'exit 129' HUP; trap 'exit 130' INT; trap 'exit 143' TERM # so that EXIT's removal runs
export OMP_NUM_THREADS=2
"$PY" "$HERE/bench/peers.py" --spa "$B/spa" --workdir "$T" "$@"
