"""A tiny SDXL-architecture UNet, ours vs diffusers on the same weights: the training step
(forward + backward + AdamW, eps loss, SDXL's vector condition built from pooled text and
add_time_ids) and 8-step DDIM sampling with CFG (trailing spacing).

    python bench/sdxl.py [--steps 10] [--threads N] [--batch 4] [--size 32]

Our DiffusionUNetXL under GaussianDiffusion.loss / .sample, the vector y from
ConcatTimestepEmbedderND (as LatentDiffusionXL's conditioner makes it); diffusers'
UNet2DConditionModel (addition_embed_type text_time) with the loss of its SDXL training script
and DDIMScheduler's loop. Same thread count, calls run in turn. Writes bench/results/sdxl.json."""
from __future__ import annotations


import torch
from common import ratio, report, results_name, set_threads, time_interleaved, tiny_args, unet_twins

from scepter_core.models.embedders.timestep_nd import ConcatTimestepEmbedderND
from scepter_core.registry import DIFFUSIONS

POOLED, CONTEXT = 64, 128
# SDXL's layout at small widths: no attention at the first level, deeper transformers below.
UNET = {'NAME': 'DiffusionUNetXL', 'MODEL_CHANNELS': 64, 'CHANNEL_MULT': [1, 2, 4], 'ATTENTION_RESOLUTIONS': [2, 4],
        'TRANSFORMER_DEPTH': [0, 1, 2], 'NUM_HEADS_CHANNELS': 32, 'CONTEXT_DIM': CONTEXT,
        'ADM_IN_CHANNELS': POOLED + 6 * 256}


def inputs(batch: int, size: int):
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(batch, 4, size, size, generator=g)
    txt, pooled = torch.randn(batch, 16, CONTEXT, generator=g), torch.randn(batch, POOLED, generator=g)
    ids = torch.tensor([[size * 8, size * 8, 0, 0, size * 8, size * 8]], dtype=torch.float32).expand(batch, -1)
    return x0, txt, pooled, ids


def diffusion():
    return DIFFUSIONS.build({'NAME': 'GaussianDiffusion'})  # SD's scaled-linear betas, eps, 1000 steps


def ours_cond(txt: torch.Tensor, pooled: torch.Tensor, ids: torch.Tensor) -> dict:
    sizes = ConcatTimestepEmbedderND({'OUT_DIM': 256})(ids)  # what the conditioner's three size embedders give
    return {'crossattn': txt, 'y': torch.cat([pooled, sizes], dim=1)}


def train_steps(batch: int, size: int) -> dict:
    ours, ref = unet_twins(UNET)
    x0, txt, pooled, ids = inputs(batch, size)
    gd = diffusion()
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-4, fused=True)
    opt_theirs = torch.optim.AdamW(ref.parameters(), lr=1e-4, fused=True)

    def ours_step():
        t = gd.sample_t(batch, x0.device)
        loss = gd.loss(x0=x0, t=t, model=ours, model_kwargs={'cond': ours_cond(txt, pooled, ids)}).mean()
        loss.backward()
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)

    def theirs_step():
        from diffusers import DDPMScheduler
        sched = theirs_step.sched = getattr(theirs_step, 'sched', None) or DDPMScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule='scaled_linear')
        t = torch.randint(0, 1000, (batch,))
        noise = torch.randn_like(x0)
        pred = ref(sched.add_noise(x0, noise, t), t, txt,
                   added_cond_kwargs={'text_embeds': pooled, 'time_ids': ids}).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
        loss.backward()
        opt_theirs.step()
        opt_theirs.zero_grad(set_to_none=True)
    return {'ours': ours_step, 'diffusers': theirs_step}


def sampling(batch: int, size: int, n: int = 8) -> dict:
    from diffusers import DDIMScheduler
    ours, ref = unet_twins(UNET)
    ours.eval(), ref.eval()
    x0, txt, pooled, ids = inputs(batch, size)
    gd = diffusion()
    noise = torch.randn_like(x0)
    cond = ours_cond(txt, pooled, ids)
    uncond = {'crossattn': torch.zeros_like(txt), 'y': torch.cat([torch.zeros_like(pooled), cond['y'][:, POOLED:]], 1)}

    def ours_run():
        with torch.inference_mode():
            gd.sample(solver='ddim', noise=noise, model=ours, model_kwargs=[{'cond': cond}, {'cond': uncond}],
                      steps=n, guide_scale=5.0, guide_rescale=0.0, discretization='trailing')

    def theirs_run():
        sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule='scaled_linear', clip_sample=False,
                              set_alpha_to_one=True, timestep_spacing='trailing')
        sched.set_timesteps(n)
        x = noise.clone()
        both_txt, both_pooled = torch.cat([torch.zeros_like(txt), txt]), torch.cat([torch.zeros_like(pooled), pooled])
        with torch.inference_mode():
            for t in sched.timesteps:
                u, c = ref(torch.cat([x, x]), t, both_txt, added_cond_kwargs={
                    'text_embeds': both_pooled, 'time_ids': torch.cat([ids, ids])}).sample.chunk(2)
                x = sched.step(u + 5.0 * (c - u), t, x).prev_sample
    return {'ours': ours_run, 'diffusers': theirs_run}


def main() -> None:
    args = tiny_args()
    threads = set_threads(args.threads)
    rows = []
    for what, make in (('train step', train_steps), ('sampling (8 DDIM steps, CFG)', sampling)):
        t = time_interleaved(make(args.batch, args.size), args.steps)
        rows.append([f'sdxl {what}', t['ours']['wall_s'] * 1000, t['diffusers']['wall_s'] * 1000,
                     ratio(t['diffusers']['wall_s'], t['ours']['wall_s'])])
    report(results_name('sdxl', threads), f'tiny SDXL UNet, batch {args.batch}, {args.size}x{args.size} latents',
           ['run', 'ours ms', 'diffusers ms', 'diffusers / ours'], rows)


if __name__ == '__main__':
    main()
