"""Sampling through the tiny default model: our forward_test vs diffusers' StableDiffusionPipeline.

    python bench/sampling.py [--steps 20] [--guide-scale 7.5] [--batch 1 4] [--runs 5] [--threads 2]

Both sides hold the same weights: the tiny recipe's LatentDiffusion (random weights: speed
does not depend on training) and a pipeline assembled in code from diffusers'
UNet2DConditionModel and AutoencoderKL and transformers' CLIPTextModel (weights moved with
`scepter_core.convert.ours_to_diffusers`), a CLIPTokenizer read from
scepter_core/assets/clip_tokenizer/, a DDIMScheduler with SD1.5's schedule and trailing
timesteps, and no safety checker. Same prompt, negative prompt, seed, 20 DDIM steps, CFG
7.5, 64 px (--size); the script checks that both give the same images before timing. Writes
bench/results/sampling.json."""
from __future__ import annotations

import argparse

import torch
from common import ROOT, ratio, report, results_name, set_threads, time_interleaved, tiny_model_blocks

PROMPT, N_PROMPT = 'a red circle on a white background', ''


def build_ours() -> torch.nn.Module:
    from scepter_core import accel
    from scepter_core.registry import MODELS
    blocks = tiny_model_blocks()
    blocks.FIRST_STAGE_MODEL.PRETRAINED_MODEL = None  # random weights: no trained stage 1 needed
    blocks.SCALE_FACTOR = 0.5
    torch.manual_seed(0)
    model = MODELS.build(blocks).eval()
    for p in model.parameters():  # zero-initialised output layers would make every image alike
        if p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.02)
    return accel.apply(model.requires_grad_(False), 'infer')  # as `scepter infer` does


def build_pipeline(ours: torch.nn.Module):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from scepter_core.convert import diffusers_unet_config, diffusers_vae_config, ours_to_diffusers
    c = ours.cfg
    parts = ours_to_diffusers(ours.state_dict(), c.DIFFUSION_MODEL, c.FIRST_STAGE_MODEL)
    unet = UNet2DConditionModel.from_config(diffusers_unet_config(c.DIFFUSION_MODEL))
    vae = AutoencoderKL.from_config(diffusers_vae_config(c.FIRST_STAGE_MODEL, float(ours.scale_factor)))
    text = CLIPTextModel(CLIPTextConfig(**ours.cond_stage_model.cfg.CONFIG.to_dict()))
    if not hasattr(text, 'text_model'):  # transformers 5 dropped the text_model level
        parts['text_encoder'] = {k.removeprefix('text_model.'): v for k, v in parts['text_encoder'].items()}
    for module, part in ((unet, 'unet'), (vae, 'vae'), (text, 'text_encoder')):
        missing, unexpected = module.load_state_dict(parts[part], strict=False)
        if missing or [k for k in unexpected if 'position_ids' not in k]:
            raise SystemExit(f'{part}: missing {missing[:3]}, unexpected {unexpected[:3]}')
    tokenizer = CLIPTokenizer.from_pretrained(str(ROOT / 'scepter_core' / 'assets' / 'clip_tokenizer'))
    tokenizer.model_max_length = c.TOKENIZER.LENGTH
    sched = c.SCHEDULE_ARGS
    scheduler = DDIMScheduler(num_train_timesteps=c.TIMESTEPS, beta_start=sched.BETA_MIN, beta_end=sched.BETA_MAX,
                              beta_schedule='scaled_linear', timestep_spacing='trailing', clip_sample=False,
                              set_alpha_to_one=True, steps_offset=0)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sampling_runs(ours: torch.nn.Module, pipe, batch: int, steps: int, guide_scale: float, size: int) -> dict:
    """The two sides' sampling calls for one batch (same prompts, seed and schedule); each
    returns the images [B, 3, H, W] in [0, 1]."""
    kw = dict(sample_steps=steps, guide_scale=guide_scale, guide_rescale=0.0, seed=2023, sampler='ddim',
              discretization='trailing', image_size=[size, size])

    def run_ours() -> torch.Tensor:
        with torch.inference_mode():
            return torch.stack([o['image'] for o in ours.forward_test([PROMPT] * batch, [N_PROMPT] * batch, **kw)])

    def run_theirs() -> torch.Tensor:
        g = torch.Generator().manual_seed(2023)
        return pipe([PROMPT] * batch, negative_prompt=[N_PROMPT] * batch, num_inference_steps=steps,
                    guidance_scale=guide_scale, height=size, width=size, generator=g, output_type='pt').images
    return {'ours': run_ours, 'diffusers': run_theirs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--steps', type=int, default=20)
    ap.add_argument('--guide-scale', type=float, default=7.5)
    ap.add_argument('--batch', type=int, nargs='+', default=[1, 4])
    ap.add_argument('--size', type=int, default=64, help='image side in pixels')
    ap.add_argument('--runs', type=int, default=5)
    ap.add_argument('--threads', type=int, default=0, help='0: all usable cores')
    args = ap.parse_args()
    threads = set_threads(args.threads)
    ours = build_ours()
    pipe = build_pipeline(ours)
    rows, diffs = [], {}
    for batch in args.batch:
        runs = sampling_runs(ours, pipe, batch, args.steps, args.guide_scale, args.size)
        diffs[batch] = float((runs['ours']() - runs['diffusers']()).abs().max())
        if diffs[batch] > 1e-3:
            raise SystemExit(f'batch {batch}: images differ by {diffs[batch]:.3g}: not the same work')
        res = time_interleaved(runs, args.runs, warmup=1)
        o, d = res['ours'], res['diffusers']
        rows.append([f'batch {batch}', o['wall_s'] * 1e3, d['wall_s'] * 1e3, batch / o['wall_s'], batch / d['wall_s'],
                     ratio(d['wall_s'], o['wall_s']), ratio(d['cpu_s'], o['cpu_s'])])
    report(results_name('sampling', threads), f'tiny model, {args.steps} DDIM steps, CFG {args.guide_scale}, {args.size} px, {threads} threads',
           ['work', 'ours ms', 'diffusers ms', 'ours img/s', 'diffusers img/s', 'speed-up (wall)', 'speed-up (CPU)'],
           rows, {'max_abs_image_diff': diffs, 'target_speedup': 1.2})


if __name__ == '__main__':
    main()
