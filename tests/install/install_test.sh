#!/bin/sh
# install_test.sh - spa as an installed library (issue 12).
#
#   install_test.sh BUILD_DIR SOURCE_DIR WORK_DIR VERSION MPIEXEC [MPI flags...]
#
# Installs BUILD_DIR into a fresh prefix, checks the installed files and
# that spa.h's SPA_VERSION_* equal CMake's project version, then builds
# examples/attention.c twice against the prefix, with find_package(spa)
# (shared and static) and with pkg-config, runs each on 2 ranks and checks
# that it prints the checksum of the installed `spa run` on the same
# synthetic input (and passes its own check against spa_reference) and the
# hop counts (spa_plan_block_hops) of the installed `spa plan --stats`.
set -eu
build=$1 src=$2 work=$3 version=$4
shift 4
mpi="$*"
prefix=$work/prefix
rm -rf "$work"
mkdir -p "$work"
fail() { echo "install_test: FAIL: $*" >&2; exit 1; }

cmake --install "$build" --prefix "$prefix" >"$work/install.log" 2>&1 ||
  { cat "$work/install.log" >&2; fail "cmake --install"; }
for f in bin/spa lib/libspa.so lib/libspa.a include/spa.h lib/cmake/spa/spaConfig.cmake \
         lib/cmake/spa/spaConfigVersion.cmake lib/cmake/spa/spaTargets.cmake lib/pkgconfig/spa.pc; do
  [ -e "$prefix/$f" ] || fail "missing $prefix/$f"
done
echo "installed: $(cd "$prefix" && find . -type f | sort | tr '\n' ' ')"

# the header's version numbers against CMake's project(VERSION)
hv=$(awk '/#define SPA_VERSION_(MAJOR|MINOR|PATCH)/ {printf "%s%s", s, $3; s="."}' "$prefix/include/spa.h")
hs=$(sed -n 's/^#define SPA_VERSION "\(.*\)"$/\1/p' "$prefix/include/spa.h")
[ "$hv" = "$version" ] || fail "spa.h SPA_VERSION_* give $hv, CMake's project version is $version"
[ "$hs" = "$version" ] || fail "spa.h SPA_VERSION is $hs, CMake's project version is $version"

args="2048 2 32"
expect=$($mpi -n 2 "$prefix/bin/spa" run --n 2048 --heads 2 --dim 32 --json |
         sed -n 's/.*"checksum": \([^,]*\),.*/\1/p')
[ -n "$expect" ] || fail "no checksum from spa run"
echo "spa run checksum: $expect"
plan=$("$prefix/bin/spa" plan --n 2048 --heads 2 --dim 32 --stats --json)
hops=$(echo "$plan" | sed -n 's/.*"hops": {[^}]*"pairs": \([0-9]*\), "reachable": \([0-9]*\), "max": \([0-9]*\), "mean": \([0-9.]*\).*/hops max \3 mean \4 reachable \2 of \1/p')
[ -n "$hops" ] || fail "no hop counts from spa plan --stats --json"
echo "spa plan: $hops"

check() { # name program
  out=$($mpi -n 2 "$2" $args) || { echo "$out"; fail "$1 exited with an error"; }
  echo "$out" | sed "s/^/$1: /"
  got=$(echo "$out" | sed -n 's/^checksum //p')
  [ "$got" = "$expect" ] || fail "$1 printed checksum '$got', spa run '$expect'"
  echo "$out" | grep -q "^spa $version " || fail "$1: spa_version() is not $version"
  echo "$out" | grep -qx "$hops" || fail "$1 printed no '$hops' (spa_plan_block_hops)"
}

# 1. CMake: find_package(spa)
cmake -S "$src/examples" -B "$work/ex-cmake" -DCMAKE_PREFIX_PATH="$prefix" \
  >"$work/ex-cmake.log" 2>&1 || { cat "$work/ex-cmake.log" >&2; fail "configuring examples"; }
cmake --build "$work/ex-cmake" >>"$work/ex-cmake.log" 2>&1 ||
  { cat "$work/ex-cmake.log" >&2; fail "building examples with find_package"; }
ldd "$work/ex-cmake/attention" | grep -q "$prefix/lib/libspa.so" ||
  fail "the find_package example does not load the installed libspa.so"
check find_package "$work/ex-cmake/attention"
check find_package_static "$work/ex-cmake/attention_static"

# 2. pkg-config
mkdir -p "$work/ex-pc"
PKG_CONFIG_PATH="$prefix/lib/pkgconfig" make -C "$src/examples" OUT="$work/ex-pc" \
  >"$work/ex-pc.log" 2>&1 || { cat "$work/ex-pc.log" >&2; fail "building the example with pkg-config"; }
check pkg-config "$work/ex-pc/attention"
echo "install_test: OK"
