#!/usr/bin/env bash
# Long rounds with outer Nesterov momentum (0.5, outer lr 0.5) at k = 16, 64 and 256, against the
# default plain recipe (k = 1, 2, 4), one run after the other on the loopback, at the small size of
# the other benches (10,000 dev images, 3 epochs, width 0.5, 5 peers). Prints each run's wall time
# and final accuracy on the dev test split (no RESULT line).
#     bash bench/long_rounds.sh [path/to/cifar10-dev.tar.xz]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/cifar10-dev.tar.xz}
PY=${PYTHON:-python}
TMP=$(mktemp -d /tmp/p2pfed-long-rounds-XXXX)
run() {    # name, extra launch.py flags...
  local name=$1; shift
  local t0 t1
  t0=$(date +%s.%N)
  "$PY" launch.py --peers 5 --dataset folder --data-dir "$DATA" --train-limit 10000 --epochs 3 --width-mult 0.5 \
    --run-dir "$TMP/$name" --no-report --no-quantize "$@" > "$TMP/$name.log" 2>&1
  t1=$(date +%s.%N)
  echo "$name wall=$(echo "$t1 - $t0" | bc) $(grep 'final accuracy' "$TMP/$name.log")"
}
printf '[train]\nouter_momentum = 0.5\nouter_lr = 0.5\n' > "$TMP/outer.toml"
for k in 16 64 256; do
  run "k=$k" --config "$TMP/outer.toml" --local-steps "$k"
done
run default
