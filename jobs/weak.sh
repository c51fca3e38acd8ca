#!/bin/bash
# Weak scaling: SPA_N_PER_RANK tokens per rank (default 262144), so n grows
# with the node count. See sweep.sh for all settings.
#
#   SPA_BIN=$PWD/build/spa jobs/weak.sh -p batch
exec "$(dirname "${BASH_SOURCE[0]}")/sweep.sh" weak "$@"
