"""Peak memory of loading a full SD1.5-sized checkpoint (random UNet + VAE, fp32, ~3.7 GB).

    python bench/checkpoint_memory.py [--dir /tmp] [--compare-copy] [--keep]

Writes the checkpoint once (LDM names, safetensors), then for each loading path starts a
fresh process that builds DiffusionUNet and AutoencoderKL with PRETRAINED_MODEL, touches
every parameter (so each weight page is really in memory) and reports its peak RSS above
the interpreter's baseline, as a multiple of the weights' size. `--compare-copy` adds the
naive path (modules initialised on CPU, weights copied in) for reference."""
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
from scepter_core.registry import BACKBONES, MODELS
from scepter_core.checkpoint import load_into, load_state_dict, strip_prefix
import scepter_core.models  # noqa: F401  (imports settle before the baseline)
mode, path = sys.argv[1], sys.argv[2]


def high_water_kb():  # VmHWM, unlike ru_maxrss, does not inherit the parent's peak across exec
    return int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])


base = high_water_kb()
start = time.perf_counter()
if mode == 'pretrained':
    unet = BACKBONES.build({'NAME': 'DiffusionUNet', 'PRETRAINED_MODEL': path})
    vae = MODELS.build({'NAME': 'AutoencoderKL', 'PRETRAINED_MODEL': path})
else:
    unet, vae = BACKBONES.build({'NAME': 'DiffusionUNet'}), MODELS.build({'NAME': 'AutoencoderKL'})
    sd = load_state_dict(path)
    load_into(unet, strip_prefix(sd, ('model.diffusion_model.',)))
    load_into(vae, strip_prefix(sd, ('first_stage_model.',)))
    del sd
loaded = time.perf_counter() - start
with torch.no_grad():
    total = sum(float(p.sum()) for m in (unet, vae) for p in m.parameters())  # touch every page
weights = sum(p.numel() * p.element_size() for m in (unet, vae) for p in m.parameters())
peak = high_water_kb()
print(json.dumps({'mode': mode, 'weights_gb': weights / 2**30, 'peak_above_baseline_gb': (peak - base) / 2**20,
                  'ratio': (peak - base) * 1024 / weights, 'load_s': loaded}))
'''


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument('--dir', default=tempfile.gettempdir())
    ap.add_argument('--compare-copy', action='store_true')
    ap.add_argument('--keep', action='store_true', help='keep the checkpoint file')
    args = ap.parse_args()
    import torch

    from scepter_core.convert import save_ldm
    from scepter_core.registry import BACKBONES, MODELS
    path = os.path.join(args.dir, 'sd15_random_ldm.safetensors')
    if not os.path.exists(path):
        start = time.perf_counter()
        torch.manual_seed(0)
        sd = {f'model.{k}': v for k, v in BACKBONES.build({'NAME': 'DiffusionUNet'}).state_dict().items()}
        sd.update({f'first_stage_model.{k}': v for k, v in MODELS.build({'NAME': 'AutoencoderKL'}).state_dict().items()})
        save_ldm(sd, path)
        del sd
        print(f'wrote {path} ({os.path.getsize(path) / 2**30:.2f} GB) in {time.perf_counter() - start:.0f} s')
    try:
        for mode in ['pretrained'] + (['copy'] if args.compare_copy else []):
            out = subprocess.run([sys.executable, '-c', CHILD, mode, path], capture_output=True, text=True, check=True)
            print(json.dumps(json.loads(out.stdout.strip().splitlines()[-1])))
    finally:
        if not args.keep:
            os.remove(path)


if __name__ == '__main__':
    main()
