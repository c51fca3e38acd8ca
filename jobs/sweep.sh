#!/bin/bash
# Shared body of strong.sh and weak.sh: submits jobs/spa.sbatch once per node
# count (times SPA_REPEAT), all appending to one CSV.
#
#   jobs/sweep.sh strong|weak [sbatch options...]
#
# Environment (besides everything jobs/spa.sbatch reads):
#   SPA_NODES           node counts              (default: "1 2 4 8")
#   SPA_TASKS_PER_NODE  MPI ranks per node       (default: 1)
#   SPA_CPUS            cores per rank (-c)      (default: 1)
#   SPA_REPEAT          jobs per node count      (default: 3)
#   SPA_N               strong: total tokens     (default: 1048576)
#   SPA_N_PER_RANK      weak: tokens per rank    (default: 262144)
#   SPA_TIME            sbatch --time            (default: 00:20:00)
#   SPA_EXCLUSIVE       1: whole nodes (--exclusive), so runs do not share
#                       cores with other jobs; 0: share   (default: 1)
#   SPA_DRY_RUN=1       print the sbatch commands instead of running them
#   SPA_WAIT=1          return only when every submitted job has left the queue
# Options after the kind go to every sbatch call (e.g. -p batch -A myproj).
set -euo pipefail

kind=${1:?usage: sweep.sh strong|weak [sbatch options...]}
shift
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
script=$here/spa.sbatch

nodes_list=${SPA_NODES:-1 2 4 8}
tpn=${SPA_TASKS_PER_NODE:-1}
cpus=${SPA_CPUS:-1}
repeat=${SPA_REPEAT:-3}
export SPA_CSV=${SPA_CSV:-$PWD/results/spa.csv}
export SPA_SWEEP=${SPA_SWEEP:-$kind}
[[ ${SPA_DRY_RUN:-0} == 1 ]] || mkdir -p "$(dirname "$SPA_CSV")"

case $kind in
  strong) n_fixed=${SPA_N:-1048576} ;;
  weak) per_rank=${SPA_N_PER_RANK:-262144} ;;
  *) echo "sweep.sh: kind must be strong or weak, not '$kind'" >&2; exit 2 ;;
esac

excl=()
[[ ${SPA_EXCLUSIVE:-1} == 1 ]] && excl=(--exclusive)
ids=()
for nodes in $nodes_list; do
  if [[ $kind == strong ]]; then n=$n_fixed
  else n=$(( per_rank * nodes * tpn )); fi
  for r in $(seq "$repeat"); do
    cmd=(sbatch --parsable -N "$nodes" --ntasks-per-node="$tpn" -c "$cpus" "${excl[@]}"
         -t "${SPA_TIME:-00:20:00}" -J "spa-$kind-$nodes" "--export=ALL,SPA_N=$n"
         "$@" "$script")
    if [[ ${SPA_DRY_RUN:-0} == 1 ]]; then
      echo "SPA_CSV=$SPA_CSV SPA_SWEEP=$SPA_SWEEP ${cmd[*]}"
    else
      id=$("${cmd[@]}")
      ids+=("${id%%;*}")
      echo "submitted ${id%%;*}: $kind, $nodes nodes x $tpn ranks x $cpus cores, n=$n (run $r/$repeat)"
    fi
  done
done
if [[ ${SPA_WAIT:-0} == 1 && ${#ids[@]} -gt 0 ]]; then
  joined=$(IFS=,; echo "${ids[*]}")
  while [[ -n $(squeue -h -j "$joined" -o %i 2>/dev/null) ]]; do sleep 2; done
  echo "all ${#ids[@]} jobs have left the queue"
fi
echo "results go to $SPA_CSV; summarise with: python3 scripts/collect.py $SPA_CSV"
