#!/usr/bin/env bash
# The README's main job: set up, then train the tiny default model from scratch on a
# generated shapes dataset (autoencoder, then text-to-image latent diffusion), test it on
# colour/shape combinations it never saw, and sample a few prompts. CPU only, no downloads.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
PIP=("$PYTHON" -m pip install --disable-pip-version-check -q)
if ! "$PYTHON" -c 'import torch' >/dev/null 2>&1; then
  "${PIP[@]}" 'torch==2.13.0'   # the CPU build; a plain `torch` pulls a multi-GB CUDA build
fi
"${PIP[@]}" -e .
# The command of the Python just set up, not whichever `scepter` comes first on PATH
# (PYTHON=venv/bin/python runs without the venv activated).
scepter() { "$PYTHON" -m scepter_cli "$@"; }

export TINY_WORK_DIR="${TINY_WORK_DIR:-./work_dirs}"
start=$(date +%s)
scepter train --cfg examples/tiny_shapes_vae.yaml "$@"
scepter train --cfg examples/tiny_shapes.yaml "$@"
scepter test --cfg examples/tiny_shapes.yaml --pretrained-model "$TINY_WORK_DIR/tiny_shapes"
scepter infer --pretrained-model "$TINY_WORK_DIR/tiny_shapes" --out "$TINY_WORK_DIR/tiny_shapes/infer" \
  --prompt "a blue triangle on a white background" --prompt "a red square on a black background" \
  --prompt "a green circle on a gray background" --prompt "a yellow triangle on a black background" \
  --num-samples 4
echo "demo finished in $(( $(date +%s) - start )) s; held-out prompt scores: $TINY_WORK_DIR/tiny_shapes/test/metrics.json"
