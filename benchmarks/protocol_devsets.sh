#!/usr/bin/env bash
# The leave-one-time-out protocol on every development set in ../shared/data and the simulator.
# Usage: benchmarks/protocol_devsets.sh OUT_ROOT [quick|full] [extra `sctrace protocol` options...]
# Each set's results go to OUT_ROOT/<set>/ (protocol.md, protocol.json); finished splits are kept, so the
# script can be stopped and started again. benchmarks/protocol_table.py builds one table from them.
# SETS="klein shalek" limits the sets.
set -euo pipefail
root=${1:?usage: protocol_devsets.sh OUT_ROOT [quick|full] [options]}
profile=${2:-quick}
shift $(( $# > 1 ? 2 : 1 ))
here=$(cd "$(dirname "$0")/.." && pwd)
data=${SCTRACE_DATA:-$here/../shared/data}
sctrace=${SCTRACE:-$here/.venv/bin/sctrace}
sets=${SETS:-shalek trapnell klein enge simulator}
mkdir -p "$root"
for name in $sets; do
  case $name in
    shalek) file=$data/shalek2014_mdc_lps.h5ad key=time_hours ;;
    trapnell) file=$data/trapnell2014_hsmm.h5ad key=time_value ;;
    klein) file=$data/klein2015_mesc.h5ad key=time_days ;;
    enge) file=$data/enge2017_acinar_age.h5ad key=time_value ;;
    simulator) file=$root/simulator.h5ad key=time
               [ -f "$file" ] || "$sctrace" simulate --out "$file" --seed 0 ;;
    *) echo "unknown set $name"; exit 2 ;;
  esac
  if [ ! -f "$file" ]; then echo "skipping $name: $file is absent"; continue; fi
  echo "== $name ($(date +%H:%M:%S))"
  "$sctrace" protocol "$file" --time-key "$key" --out "$root/$name" --profile "$profile" "$@" >"$root/$name.log" 2>&1 \
    || echo "$name failed, see $root/$name.log"
done
echo "== done ($(date +%H:%M:%S))"
