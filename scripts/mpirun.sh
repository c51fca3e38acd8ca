#!/bin/sh
# mpirun for this kind of machine, for Open MPI and MPICH alike.
# Usage: scripts/mpirun.sh -n 4 build/spa run ...
#
# The launcher is $SPA_MPIEXEC when set; otherwise mpiexec.mpich when the
# program is linked against MPICH (a build with -DSPA_MPI=mpich), else
# mpirun. Which MPI it is comes from `launcher --version`:
# - Open MPI gets its consent to run as root, more ranks than cores, no
#   binding, and no ptrace-based shared-memory copies (refused in
#   containers).
# - MPICH's hydra needs none of that: the Open MPI-only flags that callers
#   pass (-q, --oversubscribe, --bind-to X) are dropped, and ranks start
#   with fork, not ssh.
launcher="${SPA_MPIEXEC:-}"
if [ -z "$launcher" ]; then
  launcher=mpirun
  for a in "$@"; do
    case "$a" in -*) continue ;; esac
    if [ -f "$a" ] && [ -x "$a" ]; then
      if ldd "$a" 2>/dev/null | grep -q 'libmpich'; then launcher=mpiexec.mpich; fi
      break
    fi
  done
fi

case "$("$launcher" --version 2>&1)" in
*"Open MPI"* | *OpenRTE*)
  if [ "$(id -u)" -eq 0 ]; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  fi
  export OMPI_MCA_btl_vader_single_copy_mechanism="${OMPI_MCA_btl_vader_single_copy_mechanism:-none}"
  exec "$launcher" --oversubscribe --bind-to none "$@"
  ;;
*HYDRA* | *MPICH*)
  # Rebuild "$@" without the Open MPI-only flags, up to the program.
  n=$#
  i=0
  skip=0
  prog=0
  while [ "$i" -lt "$n" ]; do
    a="$1"
    shift
    i=$((i + 1))
    if [ "$prog" -eq 1 ]; then
      set -- "$@" "$a"
      continue
    fi
    if [ "$skip" -eq 1 ]; then
      skip=0
      continue
    fi
    case "$a" in
    -q | --quiet | --oversubscribe | -oversubscribe) ;;
    --bind-to | -bind-to) skip=1 ;;
    --bind-to=*) ;;
    -n | -np | --n | --np | -N) set -- "$@" "$a" "$1"; shift; i=$((i + 1)) ;;
    -*) set -- "$@" "$a" ;;
    *) prog=1; set -- "$@" "$a" ;;
    esac
  done
  exec "$launcher" -launcher fork "$@"
  ;;
*)
  exec "$launcher" "$@"
  ;;
esac
