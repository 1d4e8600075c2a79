#!/usr/bin/env bash
# The GPU checks of docs/configuration.md ("Devices (GPU)"), in one run of under 8 minutes on a
# GPU host that has torch, torchvision, msgpack, click, onnx and onnxruntime but no pyzmq, no
# cryptography and no internet:
#   1. install the wheels brought along (pyzmq, cryptography, cffi, pycparser), and the project
#      without its dependencies
#   2. the gpu-marked tests
#   3. 5 peers on the one GPU with the gpu preset on the dev data
#   4. training throughput on the GPU against the CPU, side by side
#   5. RESULT gpu_img_s=.. cpu_img_s=.. sync_share=.. acc=.. wall_s=..
#
# Usage (from the repository root):
#   bash bench/gpu_check.sh [WHEELS_DIR] [DEV_ARCHIVE]
# Defaults: .whl/ (from `pip download pyzmq cryptography cffi pycparser --only-binary :all:
# --python-version 3.12 --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --no-deps
# -d .whl`) and ../shared/data/cifar10-dev.tar.xz (or shared/cifar10-dev.tar.xz, where a device
# machine's copy of the tree holds it).
# GPU_CHECK_DEVICE=cpu GPU_CHECK_WIDTH=0.1 GPU_CHECK_EPOCHS=1 runs the same steps on a CPU machine
# (a rehearsal: the gpu tests then skip, and the throughput compares the CPU with itself).
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=${1:-.whl}
DEFAULT_DATA=../shared/data/cifar10-dev.tar.xz
[ -f "$DEFAULT_DATA" ] || DEFAULT_DATA=shared/cifar10-dev.tar.xz
DATA=${2:-$DEFAULT_DATA}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
WIDTH=${GPU_CHECK_WIDTH:-1.0}
EPOCHS=${GPU_CHECK_EPOCHS:-30}
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
say() { echo "== $*"; }

say "1. pyzmq and the project"
if ! $PY -c "import zmq, cryptography" 2>/dev/null; then
    $PY -m pip install -q --no-index --no-deps --target /tmp/site "$WHEELS"/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# the project's torch pin does not apply here: no dependencies, and no build step that needs the internet
$PY -m pip install -q --no-deps --no-build-isolation --no-index -e . 2>/dev/null \
    || export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
$PY -c "import torch, zmq, p2pfed; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '', 'pyzmq', zmq.__version__)" || exit 1
$PY -m pip install -q --no-index pytest pytest-timeout 2>/dev/null || true

say "2. gpu tests"
$PY -m pytest -q -ra -m gpu tests/test_device.py -p no:cacheprovider 2>&1 | tail -5

say "3. 5 peers on one device, gpu preset, dev data ($DATA)"
START=$(date +%s)
$PY launch.py --peers 5 --preset gpu --dataset folder --data-dir "$DATA" --epochs "$EPOCHS" --width-mult "$WIDTH" \
    --run-dir "$OUT/run" --no-report --timeout-s 420 $( [ "$DEVICE" = cpu ] && echo "--threads 1" ) \
    > "$OUT/launch.log" 2>&1
CODE=$?
WALL=$(( $(date +%s) - START ))
tail -8 "$OUT/launch.log"
[ "$DEVICE" = cpu ] || grep -h "starting on" "$OUT"/run/peer-*.log | head -2

say "4. throughput, side by side"
$PY -m bench.device_throughput --devices "cpu,$DEVICE" --width-mult "$WIDTH" --batch 256 --steps 20 \
    --threads "$(nproc)" 2>&1 | tail -3 | tee "$OUT/throughput.txt"

say "5. result"
$PY - "$OUT" "$WALL" "$CODE" "$DEVICE" <<'EOF'
import json, sys
from pathlib import Path
out, wall, code, dev = Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
res = dict(kv.split("=") for kv in (out / "throughput.txt").read_text().split("RESULT ")[-1].split())
acc = share = float("nan")
summ = out / "run" / "summary.json"
if summ.exists():
    s = json.loads(summ.read_text())
    acc = s["final"]["accuracy"] or float("nan")
    from p2pfed.outputs import metrics
    recs = [r for rs in metrics.read_run(out / "run").values() for r in rs if r["type"] == "round"]
    sync = sum(r["sync_s"] for r in recs) / max(1, len(metrics.read_run(out / "run")))
    t = [r["t"] for rs in metrics.read_run(out / "run").values() for r in rs]
    share = sync / (max(t) - min(t)) if t else float("nan")
print(f"launch exit code {code}")
print(f"RESULT gpu_img_s={res.get(f'{dev}_img_s', res.get('cuda_img_s', 'nan'))} cpu_img_s={res.get('cpu_img_s')} "
      f"sync_share={share:.3f} acc={100 * acc:.2f} wall_s={wall:.0f}")
EOF
