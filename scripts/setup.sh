#!/bin/sh
# Installs the Debian packages spa needs, when they are missing.
# Idempotent; prints nothing when everything is already there.
set -e
PKGS="gcc make cmake pkg-config libopenmpi-dev openmpi-bin libopenblas-dev
libhdf5-openmpi-dev hdf5-tools libpng-dev python3 python3-h5py python3-numpy
python3-matplotlib libsimgrid-dev python3-mpi4py python3-pytest
clang libclang-rt-14-dev libomp-14-dev valgrind
mpich libmpich-dev libhdf5-mpich-dev"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "spa setup: installing$missing" >&2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
