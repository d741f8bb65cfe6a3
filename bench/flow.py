"""Tiny flow transformers, ours vs diffusers on the same weights: the training step of the
FLUX and SD3 (MMDiT) backbones (forward + backward + AdamW, flow-matching loss) and their
denoising loop (flow Euler, FLUX-dev guidance embedded / SD3 with CFG).

    python bench/flow.py [--steps 10] [--threads N] [--batch 4] [--size 32]

Each side runs its own stack: our backbone under FlowMatchDiffusion.loss / .sample; diffusers'
FluxTransformer2DModel / SD3Transformer2DModel with the loss of its training scripts and
FlowMatchEulerDiscreteScheduler's loop; ours twice, with the CPU fast paths (accel.apply: the
flow blocks' attention table, oneDNN linears) and without, so one run shows the ratio before and
after. Same thread count, calls run in turn. Writes bench/results/flow.json."""
from __future__ import annotations

import copy

import torch
from common import ratio, report, results_name, set_threads, time_interleaved, tiny_args

from scepter_core import accel
from scepter_core.convert.flux_map import flux_from_diffusers
from scepter_core.convert.mmdit_map import mmdit_from_diffusers
from scepter_core.diffusion import FlowMatchDiffusion
from scepter_core.models.backbones.flux import Flux, pack, unpack
from scepter_core.models.backbones.mmdit import MMDiT

FLUX = dict(patch_size=1, in_channels=64, num_layers=2, num_single_layers=4, attention_head_dim=32,
            num_attention_heads=4, joint_attention_dim=64, pooled_projection_dim=32, guidance_embeds=True,
            axes_dims_rope=(8, 12, 12))
SD3 = dict(sample_size=32, patch_size=2, in_channels=16, num_layers=4, attention_head_dim=32, num_attention_heads=4,
           joint_attention_dim=64, caption_projection_dim=128, pooled_projection_dim=32, out_channels=16,
           pos_embed_max_size=32, qk_norm='rms_norm')


def twins(kind: str):
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
    torch.manual_seed(0)
    if kind == 'flux':
        ref = FluxTransformer2DModel(**FLUX)
        ours = Flux({'IN_CHANNELS': 64, 'HIDDEN_SIZE': 128, 'NUM_HEADS': 4, 'AXES_DIM': [8, 12, 12], 'VEC_IN_DIM': 32,
                     'CONTEXT_IN_DIM': 64, 'DEPTH': 2, 'DEPTH_SINGLE_BLOCKS': 4})
        ours.load_state_dict(flux_from_diffusers(ref.state_dict()))
    else:
        ref = SD3Transformer2DModel(**SD3)
        ours = MMDiT({'IN_CHANNELS': 16, 'OUT_CHANNELS': 16, 'DEPTH': 4, 'HIDDEN_SIZE': 128, 'NUM_HEADS': 4,
                      'ADM_IN_CHANNELS': 32, 'CONTEXT_EMBEDDER_CONFIG': {'params': {'in_features': 64}},
                      'QK_NORM': 'rms', 'POS_EMBED_MAX_SIZE': 32, 'POS_EMBED_BASE_SIZE': 16})
        ours.load_state_dict(mmdit_from_diffusers(ref.state_dict()))
    return ours, ref


def inputs(kind: str, batch: int, size: int):
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(batch, 16, size, size, generator=g)
    txt, pooled = torch.randn(batch, 16, 64, generator=g), torch.randn(batch, 32, generator=g)
    return x0, txt, pooled


def theirs_call(kind: str, ref, x, s, txt, pooled):
    """diffusers' transformer on our [B, C, H, W] latent at levels s (what its pipelines pass)."""
    if kind == 'sd3':
        return ref(hidden_states=x, encoder_hidden_states=txt, pooled_projections=pooled, timestep=s * 1000).sample
    h, w = x.shape[-2:]
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1], ids[..., 2] = torch.arange(h // 2)[:, None], torch.arange(w // 2)[None]
    out = ref(hidden_states=pack(x), encoder_hidden_states=txt, pooled_projections=pooled, timestep=s,
              img_ids=ids.reshape(-1, 3), txt_ids=torch.zeros(txt.shape[1], 3),
              guidance=torch.full((x.shape[0],), 3.5)).sample
    return unpack(out, h, w)


def steps(kind: str, batch: int, size: int) -> dict:
    ours, ref = twins(kind)
    x0, txt, pooled = inputs(kind, batch, size)
    cond = {'crossattn': txt, 'y': pooled, 'guidance': torch.full((batch,), 3.5)}
    diffusion = FlowMatchDiffusion({'NOISE_SCHEDULER': {'NAME': 'FlowMatchSigmaScheduler',
                                                        'WEIGHTING_SCHEME': 'logit_normal', 'SHIFT': 3.0}})
    opt_theirs = torch.optim.AdamW(ref.parameters(), lr=1e-4, fused=True)

    def ours_step(model):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

        def step():
            loss = diffusion.loss(x0, None, model, {'cond': cond}, reduction='mean')
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step

    def theirs_step():
        s = torch.sigmoid(torch.randn(batch))
        s = 3 * s / (1 + 2 * s)
        sb = s.view(-1, 1, 1, 1)
        noise = torch.randn_like(x0)
        pred = theirs_call(kind, ref, (1 - sb) * x0 + sb * noise, s, txt, pooled)
        loss = ((pred.float() - (noise - x0)) ** 2).mean()
        loss.backward()
        opt_theirs.step()
        opt_theirs.zero_grad(set_to_none=True)
    fast = accel.apply(copy.deepcopy(ours), 'train')
    return {'ours': ours_step(ours), 'ours_accel': ours_step(fast), 'diffusers': theirs_step}


def sampling(kind: str, batch: int, size: int, n: int = 8) -> dict:
    from diffusers import FlowMatchEulerDiscreteScheduler
    ours, ref = twins(kind)
    ours.eval(), ref.eval()
    x0, txt, pooled = inputs(kind, batch, size)
    shift = {'NAME': 'FlowMatchShiftScheduler', 'SHIFT': 3.0}
    diffusion = FlowMatchDiffusion({'SAMPLER_SCHEDULER': shift})
    noise = torch.randn_like(x0)
    cfg = kind == 'sd3'
    cond = {'crossattn': txt, 'y': pooled, 'guidance': torch.full((batch,), 3.5)}
    kwargs = [{'cond': cond}, {'cond': {**cond, 'crossattn': torch.zeros_like(txt)}}] if cfg else {'cond': cond}

    def ours_run(model):
        def run():
            with torch.inference_mode():
                diffusion.sample(noise, model, kwargs, solver='flow_euler', steps=n, guide_scale=5.0 if cfg else None)
        return run

    def theirs_run():
        sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
        sched.set_timesteps(n)
        x = noise.clone()
        with torch.inference_mode():
            for t in sched.timesteps:
                s = (t / 1000).expand(batch)
                if cfg:
                    both = theirs_call(kind, ref, torch.cat([x, x]), torch.cat([s, s]), torch.cat([txt, txt * 0]),
                                       torch.cat([pooled, pooled]))
                    c, u = both.chunk(2)
                    v = u + 5.0 * (c - u)
                else:
                    v = theirs_call(kind, ref, x, s, txt, pooled)
                x = sched.step(v, t, x).prev_sample
    fast = accel.apply(copy.deepcopy(ours), 'infer')
    return {'ours': ours_run(ours), 'ours_accel': ours_run(fast), 'diffusers': theirs_run}


def main() -> None:
    args = tiny_args()
    threads = set_threads(args.threads)
    rows = []
    for kind in ('flux', 'sd3'):
        for what, make in (('train step', steps), ('sampling (8 steps)', sampling)):
            t = time_interleaved(make(kind, args.batch, args.size), args.steps)
            d = t['diffusers']['wall_s']
            rows.append([f'{kind} {what}', t['ours']['wall_s'] * 1000, t['ours_accel']['wall_s'] * 1000, d * 1000,
                         ratio(d, t['ours']['wall_s']), ratio(d, t['ours_accel']['wall_s'])])
    report(results_name('flow', threads), f'tiny flow transformers, batch {args.batch}, {args.size}x{args.size} latents',
           ['run', 'ours ms (stock)', 'ours ms (accel)', 'diffusers ms', 'diffusers / ours before',
            'diffusers / ours after'], rows)


if __name__ == '__main__':
    main()
