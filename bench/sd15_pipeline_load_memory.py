"""Peak memory of building SD1.5's whole LatentDiffusion (UNet + VAE + CLIP text encoder) with
whole-model PRETRAINED_MODEL, against building it and copying the weights in.

    python bench/sd15_pipeline_load_memory.py [--dir /tmp] [--dtype float32|float16] [--keep]

Writes a random SD1.5-sized original single file (LDM names; fp32 4.0 GiB, fp16 2.0 GiB) once,
then for each path starts a fresh process that builds the model, touches every parameter (so
each weight page is really in memory) and reports its peak RSS above the interpreter's
baseline, as a multiple of the fp32 weights' size."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

CHILD = r'''
import json, sys, time
import torch
import transformers  # noqa: F401  (imports settle before the baseline)
from scepter_core.checkpoint import load_into
from scepter_core.config import Config
from scepter_core.convert import load_pipeline_state
from scepter_core.inference import SD15_RECIPE
from scepter_core.registry import MODELS
import scepter_core.models  # noqa: F401
mode, path = sys.argv[1], sys.argv[2]


def high_water_kb():  # VmHWM, unlike ru_maxrss, does not inherit the parent's peak across exec
    return int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])


cfg = Config.load(SD15_RECIPE).SOLVER.MODEL
base, start = high_water_kb(), time.perf_counter()
if mode == 'pretrained':
    cfg.PRETRAINED_MODEL = path
    model = MODELS.build(cfg)
else:
    model = MODELS.build(cfg)
    load_into(model, load_pipeline_state(path))
built = time.perf_counter() - start
with torch.no_grad():
    total = sum(float(p.sum()) for p in model.parameters())  # touch every page
weights = sum(p.numel() * p.element_size() for p in model.parameters())
peak = high_water_kb()
print(json.dumps({'mode': mode, 'weights_gib': round(weights / 2**30, 2),
                  'peak_above_baseline_gib': round((peak - base) / 2**20, 2),
                  'ratio': round((peak - base) * 1024 / weights, 2), 'build_s': round(built, 1)}))
'''


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument('--dir', default=tempfile.gettempdir())
    ap.add_argument('--dtype', default='float32', choices=('float32', 'float16'))
    ap.add_argument('--keep', action='store_true', help='keep the checkpoint file')
    args = ap.parse_args()
    import torch

    from scepter_core.config import Config
    from scepter_core.convert import save_ldm
    from scepter_core.inference import SD15_RECIPE
    from scepter_core.registry import MODELS
    path = os.path.join(args.dir, f'sd15_random_pipeline_{args.dtype}.safetensors')
    if not os.path.exists(path):
        start = time.perf_counter()
        torch.manual_seed(0)
        sd = MODELS.build(Config.load(SD15_RECIPE).SOLVER.MODEL).state_dict()
        sd = {k: v.to(getattr(torch, args.dtype)) for k, v in sd.items() if k != 'scale_factor'}
        save_ldm(sd, path)
        del sd
        print(f'wrote {path} ({os.path.getsize(path) / 2**30:.2f} GiB) in {time.perf_counter() - start:.0f} s')
    try:
        for mode in ('pretrained', 'copy'):
            out = subprocess.run([sys.executable, '-c', CHILD, mode, path], capture_output=True, text=True, check=True)
            print(out.stdout.strip().splitlines()[-1])
    finally:
        if not args.keep:
            os.remove(path)


if __name__ == '__main__':
    main()
