#!/usr/bin/env bash
# The GPU checks in one run on a CUDA machine: the CUDA unit tests, the tiny example's
# train / test / infer on CUDA in bf16 (a few hundred steps: a path check, not a quality
# check), then bench/gpu.py (arguments after the script's name go to it).
#   OUT=dir bash bench/gpu_suite.sh [gpu.py args]      (logs and gpu.json in $OUT)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD:$PWD/bench${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -m pytest -q -p no:cacheprovider tests/diffusion/test_cuda_graph.py 2>&1 | tail -2

export TINY_WORK_DIR=/tmp/tiny_gpu
steps="${TINY_STEPS:-300}"
amp=(--set SOLVER.USE_AMP=true --set SOLVER.DTYPE=bfloat16 --set "SOLVER.MAX_STEPS=$steps")
start=$(date +%s)
{
  "$PY" -m scepter_cli train --cfg examples/tiny_shapes_vae.yaml "${amp[@]}" &&
  "$PY" -m scepter_cli train --cfg examples/tiny_shapes.yaml "${amp[@]}" &&
  "$PY" -m scepter_cli test --cfg examples/tiny_shapes.yaml --pretrained-model "$TINY_WORK_DIR/tiny_shapes" &&
  "$PY" -m scepter_cli infer --pretrained-model "$TINY_WORK_DIR/tiny_shapes" --cuda-graph --num-samples 2 \
    --prompt "a red circle on a white background" --out "$TINY_WORK_DIR/infer"
} >"$OUT/tiny_e2e.log" 2>&1
rc=$?
echo "tiny example, $steps steps per stage: rc=$rc in $(( $(date +%s) - start )) s"
grep -E "step +$steps|it/s|checkpoint:|metrics|Error|error" "$OUT/tiny_e2e.log" | tail -8
cp "$TINY_WORK_DIR/infer/grid.png" "$OUT/tiny_infer_grid.png" 2>/dev/null

"$PY" bench/gpu.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu.log" | grep -vE "^\s+(warnings|File|\^)"
