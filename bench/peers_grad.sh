#!/bin/sh
# spa's gradients beside PyTorch autograd (dense masked SDPA), n <= 8192,
# H = 4, D = 64, default pattern, 2 threads each: the largest differences
# of dq, dk, dv and the backward times (issue 11). Uses bench/peers.sh's
# virtual environment ($SPA_PEERS_VENV, default ~/.cache/spa-peers-venv),
# creating it the same way when missing (torch from PyPI, about 5 GB).
# Not part of CI.
#   bench/peers_grad.sh [build-dir] [options of bench/peers_grad.py]
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
    echo "peers_grad: installing torch, h5py and numpy into $VENV (about 5 GB)" >&2
    "${SPA_PEERS_PYTHON:-python3}" -m venv "$VENV"
    "$PY" -m pip install --upgrade pip >&2
    "$PY" -m pip install torch h5py numpy >&2
fi
if ! [ -x "$B/spa" ]; then
    SPA_BUILD_DIR="$B" sh "$HERE/scripts/build.sh" >&2
fi
T="$(mktemp -d "${TMPDIR:-/tmp}/spa-peers-grad.XXXXXX")"
trap 'rm -rf "$T"' EXIT
trap 'exit 129' HUP; trap 'exit 130' INT; trap 'exit 143' TERM # so that EXIT's removal runs
"$PY" "$HERE/bench/peers_grad.py" --spa "$B/spa" --workdir "$T" "$@"
