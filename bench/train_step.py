"""Training step of the tiny default recipe's UNet: ours vs diffusers' UNet2DConditionModel.

    python bench/train_step.py [--batches 8 32] [--steps 20] [--threads 2] [--channels-last]

Same weights (moved through our key map), same batch (latents of the recipe's 64 px images,
a context as long as its prompts), same loss (MSE to the noise), same AdamW settings (the
recipe's OPTIMIZER block, built by our registry for us; torch.optim.AdamW with the same
values for diffusers), same thread count. One step = zero_grad, forward, backward, step.
Writes bench/results/train_step.json."""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from common import ratio, report, set_threads, time_interleaved, tiny_model_blocks, unet_twins


def make_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, t: torch.Tensor,
              ctx: torch.Tensor, target: torch.Tensor, diffusers: bool):
    def step() -> float:
        opt.zero_grad(set_to_none=True)
        out = model(x, t, ctx).sample if diffusers else model(x, t, ctx)
        loss = F.mse_loss(out, target)
        loss.backward()
        opt.step()
        return loss.detach()
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--batches', type=int, nargs='+', default=[8, 32])
    ap.add_argument('--steps', type=int, default=20)
    ap.add_argument('--threads', type=int, default=0, help='0: all usable cores')
    ap.add_argument('--channels-last', action='store_true', help='channels_last for both sides')
    args = ap.parse_args()
    threads = set_threads(args.threads)
    from scepter_core.registry import OPTIMIZERS
    blocks = tiny_model_blocks()
    unet, opt_block = blocks.DIFFUSION_MODEL, {'NAME': 'AdamW', 'LEARNING_RATE': 1e-3, 'WEIGHT_DECAY': 0.0}
    latent = blocks.IMAGE_SIZE[0] // blocks.SIZE_FACTOR
    ctx_len, ctx_dim = blocks.TOKENIZER.LENGTH, unet.CONTEXT_DIM
    rows = []
    for batch in args.batches:
        ours, theirs = unet_twins(unet)
        ours.train(), theirs.train()
        if args.channels_last:
            ours, theirs = (m.to(memory_format=torch.channels_last) for m in (ours, theirs))
        g = torch.Generator().manual_seed(batch)
        x = torch.randn(batch, unet.IN_CHANNELS, latent, latent, generator=g)
        t = torch.randint(0, 1000, (batch,), generator=g)
        ctx, target = torch.randn(batch, ctx_len, ctx_dim, generator=g), torch.randn(x.shape, generator=g)
        opt_ours = OPTIMIZERS.build(opt_block, parameters=list(ours.parameters()))
        opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=1e-3, weight_decay=0.0)
        steps = {'ours': make_step(ours, opt_ours, x, t, ctx, target, False),
                 'diffusers': make_step(theirs, opt_theirs, x, t, ctx, target, True)}
        # Same weights and batch give the same first loss (a check that we time the same work).
        first = {k: float(fn()) for k, fn in steps.items()}
        if abs(first['ours'] - first['diffusers']) > 1e-4 * max(1.0, abs(first['ours'])):
            raise SystemExit(f'first losses differ: {first}')
        res = time_interleaved(steps, args.steps)
        o, d = res['ours'], res['diffusers']
        rows.append([f'batch {batch}', o['wall_s'] * 1e3, d['wall_s'] * 1e3, batch / o['wall_s'], batch / d['wall_s'],
                     ratio(d['wall_s'], o['wall_s']), ratio(d['cpu_s'], o['cpu_s'])])
    report('train_step', f'tiny UNet training step (forward+backward+AdamW), {threads} threads',
           ['work', 'ours ms', 'diffusers ms', 'ours img/s', 'diffusers img/s', 'speed-up (wall)',
            'speed-up (CPU)'], rows,
           {'unet': unet.to_dict(), 'latent_size': latent, 'context': [ctx_len, ctx_dim],
            'channels_last': args.channels_last, 'target_speedup': 1.2})


if __name__ == '__main__':
    main()
