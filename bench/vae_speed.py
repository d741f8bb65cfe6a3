"""SD1.5 VAE at 512 px: encode and decode time and peak RSS, ours vs diffusers' AutoencoderKL,
and tiled / sliced decoding to cap memory.

    python bench/vae_speed.py [--size 512] [--batch 1] [--steps 2] [--threads N] [--runs ...]

Each run is a fresh process (one side, one operation), so its peak RSS (VmHWM) is its own;
`work MB` is the peak above the RSS right after building the model (activations). Runs:
encode, decode (whole image); decode-tiled (ours: TILE_SIZE 32 latents; diffusers:
enable_tiling with 256 px tiles, the same 32-latent tiles); decode-sliced (a batch of 4 latents,
ours BATCH_SIZE 1, diffusers enable_slicing). Random weights, the SD1.5 config for both.
Writes bench/results/vae_speed.json."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from common import HWM_SNIPPET, ratio, report, results_name, run_child

RUNS = ('encode', 'decode', 'decode-tiled', 'decode-sliced')
TILE_LATENTS = 32
exec(HWM_SNIPPET)  # high_water_mb()


def child(side: str, run: str, args: argparse.Namespace) -> dict:
    import torch
    torch.set_num_threads(args.threads)
    base = high_water_mb()
    torch.manual_seed(0)
    batch = 4 if run == 'decode-sliced' else args.batch
    if side == 'ours':
        from scepter_core.registry import MODELS
        cfg = {'NAME': 'AutoencoderKL', 'BATCH_SIZE': 1 if run == 'decode-sliced' else batch,
               'TILE_SIZE': TILE_LATENTS if run == 'decode-tiled' else None}
        vae = MODELS.build(cfg).eval()
        encode = lambda x: vae.encode_posterior(x).mode()  # noqa: E731
        decode = vae.decode
    else:
        from diffusers import AutoencoderKL

        from scepter_core.convert import diffusers_vae_config
        vae = AutoencoderKL.from_config(diffusers_vae_config()).eval()
        if run == 'decode-tiled':
            vae.enable_tiling()
            vae.tile_sample_min_size, vae.tile_latent_min_size = TILE_LATENTS * 8, TILE_LATENTS
        if run == 'decode-sliced':
            vae.enable_slicing()
        encode = lambda x: vae.encode(x).latent_dist.mode()  # noqa: E731
        decode = lambda z: vae.decode(z).sample  # noqa: E731
    x = torch.rand(batch, 3, args.size, args.size) * 2 - 1
    z = torch.randn(batch, 4, args.size // 8, args.size // 8)
    fn = (lambda: encode(x)) if run == 'encode' else (lambda: decode(z))
    built = high_water_mb()
    times, cpu = [], []
    with torch.inference_mode():
        out = fn()
        for _ in range(args.steps):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return {'side': side, 'run': run, 'wall_s': statistics.median(times), 'cpu_s': statistics.median(cpu),
            'peak_rss_mb': high_water_mb(), 'work_mb': high_water_mb() - built, 'base_mb': base,
            'out_shape': list(out.shape)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--size', type=int, default=512, help='image side in pixels')
    ap.add_argument('--batch', type=int, default=1)
    ap.add_argument('--steps', type=int, default=2)
    ap.add_argument('--threads', type=int, default=0, help='0: all usable cores')
    ap.add_argument('--runs', nargs='+', default=list(RUNS), choices=RUNS)
    ap.add_argument('--child', nargs=2, metavar=('SIDE', 'RUN'), help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.threads = args.threads or len(os.sched_getaffinity(0))
    if args.child:
        print(json.dumps(child(*args.child, args)))
        return
    passthrough = sys.argv[1:] + ['--threads', str(args.threads)]
    rows, raw = [], []
    for run in args.runs:
        got = {side: run_child(__file__, *passthrough, '--child', side, run) for side in ('ours', 'diffusers')}
        raw += list(got.values())
        o, d = got['ours'], got['diffusers']
        for name, r in got.items():
            rows.append([f'{run} {name}', r['wall_s'], r['cpu_s'], r['peak_rss_mb'] / 1024, r['work_mb'] / 1024])
        rows.append([f'{run} diffusers/ours', ratio(d['wall_s'], o['wall_s']), ratio(d['cpu_s'], o['cpu_s']),
                     ratio(d['peak_rss_mb'], o['peak_rss_mb']), ratio(d['work_mb'], o['work_mb'])])
    report(results_name('vae_speed', args.threads), f'SD1.5 VAE, {args.size} px, batch {args.batch} (sliced: 4), fp32, {args.threads} threads',
           ['run', 'wall s', 'CPU s', 'peak RSS GB', 'work GB'], rows, {'raw': raw, 'args': vars(args)})


if __name__ == '__main__':
    main()
