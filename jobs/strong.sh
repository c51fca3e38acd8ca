#!/bin/bash
# Strong scaling: the same problem (SPA_N tokens, default 1048576) on
# SPA_NODES node counts (default "1 2 4 8"). See sweep.sh for all settings.
#
#   SPA_BIN=$PWD/build/spa jobs/strong.sh -p batch
exec "$(dirname "${BASH_SOURCE[0]}")/sweep.sh" strong "$@"
