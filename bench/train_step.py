"""Training step of the tiny default recipe: ours vs diffusers on the same weights and batch.

    python bench/train_step.py [--batches 8 32] [--steps 20] [--threads N] [--channels-last] [--no-full]

`unet` rows: the recipe's UNet alone (forward + backward + AdamW), ours vs diffusers'
UNet2DConditionModel holding the same weights (moved through our key map); latents of the
recipe's image size and a context as long as its prompts; MSE to a fixed target. Each side's
optimizer is what its stack builds by default: ours from the registry (OPTIMIZERS AdamW,
fused on CPU), diffusers' training scripts call torch.optim.AdamW with the same values.
`unet-bf16` rows: the same under bf16 autocast on both sides (our USE_AMP; accelerate's bf16).
`full` rows: the whole step of the recipe (VAE encode of 32 px images, the trainable text
encoder, noising, UNet, backward, AdamW over UNet + text encoder): our LatentDiffusion.forward_train
vs the same work written with diffusers / transformers components (the diffusers
train_text_to_image loop). `ours+cache` adds SOLVER.CACHE_LATENTS in its steady state (every
image seen before, i.e. after the first epoch). Same thread count on both sides, steps run in
turn. Writes bench/results/train_step.json."""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from common import ratio, report, results_name, set_threads, time_interleaved, tiny_model_blocks, unet_twins

COLOURS, SHAPES = ['red', 'green', 'blue', 'yellow'], ['circle', 'square', 'triangle']
ADAMW = {'NAME': 'AdamW', 'LEARNING_RATE': 1e-3, 'WEIGHT_DECAY': 0.0}


def unet_steps(batch: int, channels_last: bool, amp: bool, check: bool = True) -> dict:
    """Each side's step; `check` runs one of each first and compares the losses."""
    from scepter_core.registry import OPTIMIZERS
    blocks = tiny_model_blocks()
    unet = blocks.DIFFUSION_MODEL
    latent = blocks.IMAGE_SIZE[0] // blocks.SIZE_FACTOR
    ours, theirs = unet_twins(unet)
    ours.train(), theirs.train()
    if channels_last:
        ours, theirs = (m.to(memory_format=torch.channels_last) for m in (ours, theirs))
    g = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, unet.IN_CHANNELS, latent, latent, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    ctx = torch.randn(batch, blocks.TOKENIZER.LENGTH, unet.CONTEXT_DIM, generator=g)
    target = torch.randn(x.shape, generator=g)
    opts = {'ours': OPTIMIZERS.build(ADAMW, parameters=list(ours.parameters())),
            'diffusers': torch.optim.AdamW(theirs.parameters(), lr=1e-3, weight_decay=0.0)}

    def make(name: str, model: torch.nn.Module):
        def step() -> torch.Tensor:
            opts[name].zero_grad(set_to_none=True)
            with torch.autocast('cpu', dtype=torch.bfloat16, enabled=amp):  # USE_AMP / accelerate's bf16
                out = model(x, t, ctx)
            loss = F.mse_loss((out if name == 'ours' else out.sample).float(), target)
            loss.backward()
            opts[name].step()
            return loss.detach()
        return step
    steps = {'ours': make('ours', ours), 'diffusers': make('diffusers', theirs)}
    if not check:
        return steps
    first = {k: float(fn()) for k, fn in steps.items()}  # same weights and batch: same first loss
    if abs(first['ours'] - first['diffusers']) > (2e-2 if amp else 1e-4) * max(1.0, abs(first['ours'])):
        raise SystemExit(f'first losses differ: {first}')
    return steps


def full_steps(batch: int, cached: bool = True) -> dict:
    """Each side's whole step; `cached` adds ours with a latent cache, primed by one step."""
    from sampling import build_ours, build_pipeline

    from scepter_core.models.networks.latent_cache import LatentCache
    from scepter_core.registry import OPTIMIZERS
    ours = build_ours().train()
    ours.cond_stage_model.requires_grad_(True)  # the recipe trains its text encoder (FREEZE: false)
    ours.model.requires_grad_(True)
    pipe = build_pipeline(ours)
    unet, vae, text, tok, sched = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler
    unet.train(), text.train()
    size = ours.cfg.IMAGE_SIZE[0]
    g = torch.Generator().manual_seed(batch)
    images = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
    prompts = [f'a {COLOURS[i % 4]} {SHAPES[i % 3]} on a white background' for i in range(batch)]
    trainable = [p for p in ours.parameters() if p.requires_grad]
    opt_ours = OPTIMIZERS.build(ADAMW, parameters=trainable)
    opt_theirs = torch.optim.AdamW(list(unet.parameters()) + list(text.parameters()), lr=1e-3, weight_decay=0.0)
    scale = float(ours.scale_factor)

    def step_ours() -> None:
        opt_ours.zero_grad(set_to_none=True)
        ours.forward_train(image=images, prompt=prompts)['loss'].backward()
        opt_ours.step()

    def step_theirs() -> None:  # diffusers' train_text_to_image.py, one step
        opt_theirs.zero_grad(set_to_none=True)
        with torch.no_grad():
            latents = vae.encode(images).latent_dist.sample() * scale
        ids = tok(prompts, padding='max_length', max_length=tok.model_max_length, truncation=True,
                  return_tensors='pt').input_ids
        ctx = text(ids)[0]
        noise = torch.randn_like(latents)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,))
        pred = unet(sched.add_noise(latents, noise, t), t, ctx).sample
        F.mse_loss(pred.float(), noise.float()).backward()
        opt_theirs.step()

    def step_cached() -> None:
        ours.latent_cache = cache
        try:
            step_ours()
        finally:
            ours.latent_cache = None
    steps = {'ours': step_ours, 'diffusers': step_theirs}
    if cached:
        cache = LatentCache()
        step_cached()  # the steady state: every image cached
        steps['ours+cache'] = step_cached
    return steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--batches', type=int, nargs='+', default=[8, 32])
    ap.add_argument('--steps', type=int, default=20)
    ap.add_argument('--threads', type=int, default=0, help='0: all usable cores')
    ap.add_argument('--channels-last', action='store_true', help='channels_last for both UNets')
    ap.add_argument('--no-full', action='store_true', help='UNet rows only')
    args = ap.parse_args()
    threads = set_threads(args.threads)
    rows = []
    for kind in ['unet', 'unet-bf16'] + ([] if args.no_full else ['full']):
        for batch in args.batches:
            steps = full_steps(batch) if kind == 'full' else unet_steps(batch, args.channels_last, kind == 'unet-bf16')
            res = time_interleaved(steps, args.steps)
            d = res['diffusers']['wall_s']
            for name in [k for k in steps if k != 'diffusers']:
                o = res[name]
                rows.append([f'{kind} batch {batch}: {name}', o['wall_s'] * 1e3, d * 1e3, batch / o['wall_s'],
                             batch / d, ratio(d, o['wall_s']), ratio(res['diffusers']['cpu_s'], o['cpu_s'])])
    report(results_name('train_step', threads), f'tiny recipe training step, {threads} threads',
           ['work', 'ours ms', 'diffusers ms', 'ours img/s', 'diffusers img/s', 'speed-up (wall)',
            'speed-up (CPU)'], rows, {'channels_last': args.channels_last, 'target_speedup': 1.2})


if __name__ == '__main__':
    main()
