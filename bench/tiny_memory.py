"""Peak memory of the tiny benchmarks' work (benchmarks 1 and 2): ours vs diffusers.

    python bench/tiny_memory.py [--works unet full sampling] [--calls 3] [--threads N]

Each measurement is a fresh process that builds what train_step.py / sampling.py build (both
sides, same weights), resets the kernel's high-water mark, runs one side's call `--calls`
times and reads the peak resident memory. `work MB` is that peak above the resident memory
right before the first call: activations, gradients and optimizer state for a training step
(the first step allocates the AdamW moments), activations for sampling. Everything built
beforehand (both models) is the same for both sides and sits below the line. Rows:
`unet`: the tiny UNet's fp32 step (batch 8, 32); `full`: the recipe's whole step (VAE encode,
text encoder, UNet, AdamW; batch 8, 32); `sampling`: 20 DDIM steps, CFG 7.5, 64 px (batch 1, 4).
Writes bench/results/tiny_memory.json."""
from __future__ import annotations

import argparse
import json
import os
import sys

from common import HWM_SNIPPET, ratio, report, results_name, run_child

BATCHES = {'unet': (8, 32), 'full': (8, 32), 'sampling': (1, 4)}
exec(HWM_SNIPPET)  # high_water_mb(), reset_high_water()


def child(work: str, batch: int, side: str, calls: int) -> dict:
    if work == 'sampling':
        from sampling import build_ours, build_pipeline, sampling_runs
        ours = build_ours()
        run = sampling_runs(ours, build_pipeline(ours), batch, 20, 7.5, 64)[side]
    else:
        from train_step import full_steps, unet_steps
        run = (unet_steps(batch, False, False, check=False) if work == 'unet'
               else full_steps(batch, cached=False))[side]
    import gc
    gc.collect()
    reset_high_water()
    before = high_water_mb()  # the resident memory now
    for _ in range(calls):
        run()
    return {'work': work, 'batch': batch, 'side': side, 'before_mb': before, 'peak_mb': high_water_mb(),
            'work_mb': high_water_mb() - before}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--works', nargs='+', default=list(BATCHES), choices=list(BATCHES))
    ap.add_argument('--calls', type=int, default=3)
    ap.add_argument('--threads', type=int, default=0, help='0: all usable cores')
    ap.add_argument('--child', nargs=3, metavar=('WORK', 'BATCH', 'SIDE'), help=argparse.SUPPRESS)
    args = ap.parse_args()
    threads = args.threads or len(os.sched_getaffinity(0))
    if args.child:
        import torch
        torch.set_num_threads(threads)
        work, batch, side = args.child
        print(json.dumps(child(work, int(batch), side, args.calls)))
        return
    rows, raw = [], []
    for work in args.works:
        for batch in BATCHES[work]:
            got = {side: run_child(__file__, *sys.argv[1:], '--threads', str(threads), '--child', work, str(batch),
                                   side) for side in ('ours', 'diffusers')}
            raw += list(got.values())
            o, d = got['ours'], got['diffusers']
            rows.append([f'{work} batch {batch}', o['work_mb'], d['work_mb'], ratio(d['work_mb'], o['work_mb']),
                         o['peak_mb'], d['peak_mb']])
    report(results_name('tiny_memory', threads), f'tiny benchmarks: peak memory of the work, {threads} threads',
           ['work', 'ours work MB', 'diffusers work MB', 'diffusers / ours', 'ours peak MB', 'diffusers peak MB'],
           rows, {'raw': raw, 'calls': args.calls})


if __name__ == '__main__':
    main()
