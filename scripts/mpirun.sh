#!/bin/sh
# mpirun with what this kind of machine needs: Open MPI's consent to run as
# root, more ranks than cores, and no ptrace-based shared-memory copies
# (refused in containers). Usage: scripts/mpirun.sh -n 4 build/spa run ...
if [ "$(id -u)" -eq 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
export OMPI_MCA_btl_vader_single_copy_mechanism="${OMPI_MCA_btl_vader_single_copy_mechanism:-none}"
exec mpirun --oversubscribe --bind-to none "$@"
