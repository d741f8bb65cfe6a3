"""`bench/gpu.py --parts sdxl`: SDXL base at 1024 px on one CUDA device, the same random weights
on both sides.

train:  the SDXL UNet (DiffusionUNetXL vs diffusers' UNet2DConditionModel) forward + backward +
        fused AdamW under bf16 autocast, fp32 master weights, cached inputs (128x128 latents,
        77x2048 text states, pooled 1280 + add_time_ids: CACHE_LATENTS and cached embeddings),
        each --batch; images/s, peak allocated memory, MFU from FlopCounterMode's count over the
        datasheet bf16 rate.
sample: --sample-steps DDIM steps (30 unless given), CFG 5.0, 1024 px, bf16: our LatentDiffusionXL
        forward_test eager, with cuda_graph=True and (--compile) under torch.compile, against
        diffusers' StableDiffusionXLPipeline assembled from the same weights; s/image.
--small: a tiny SDXL-shaped model at 64 px (a smoke test that runs on a CPU too)."""
from __future__ import annotations

import copy
import logging
import time
from typing import Any, Callable

import torch
from common import bf16_sampler, optimizer_step

TINY = {'MODEL_CHANNELS': 32, 'CHANNEL_MULT': [1, 2], 'ATTENTION_RESOLUTIONS': [2], 'TRANSFORMER_DEPTH': [0, 2],
        'NUM_HEADS_CHANNELS': 16, 'CONTEXT_DIM': 64, 'ADM_IN_CHANNELS': 32 + 6 * 256}
TINY_TEXT = {'hidden_size': 32, 'intermediate_size': 64, 'num_hidden_layers': 2, 'num_attention_heads': 2}


def sdxl_block(small: bool) -> dict:
    """The family table's SDXL model block (tiny widths with --small), no weights to load."""
    from scepter_core.models.family_table import family
    block = family('sdxl')['model']
    if small:
        block['DIFFUSION_MODEL'] = {**block['DIFFUSION_MODEL'], 'NAME': 'DiffusionUNetXL', **TINY}
        block['FIRST_STAGE_MODEL'] = {'NAME': 'AutoencoderKL', 'EMBED_DIM': 4, **{
            part: {'NAME': part.title(), 'CH': 32, 'CH_MULT': [1, 2], 'NUM_RES_BLOCKS': 1, 'Z_CHANNELS': 4}
            for part in ('ENCODER', 'DECODER')}}
        block['SIZE_FACTOR'] = 2
        texts = block['COND_STAGE_MODEL']['EMBEDDERS']
        texts[0] = {**texts[0], 'CONFIG': TINY_TEXT}
        texts[1] = {**texts[1], 'CONFIG': {**TINY_TEXT, 'projection_dim': 32}}
    block['DIFFUSION_MODEL'] = {**block['DIFFUSION_MODEL'], 'NAME': 'DiffusionUNetXL'}
    return block


def diffusers_twin_unet(block: dict, state: dict) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    from scepter_core.convert import diffusers_unet_config, unet_keymap
    unet = UNet2DConditionModel.from_config(diffusers_unet_config(block, time_embed_dim=256))
    unet.load_state_dict(unet_keymap(block).to_theirs(state), strict=True)
    return unet


def train(run: Any, time_steps: Callable, count_tflop: Callable, datasheet_tflops: float) -> None:
    from scepter_core.models.embedders.timestep_nd import ConcatTimestepEmbedderND
    from scepter_core.registry import BACKBONES
    args, dev = run.args, run.dev
    block = sdxl_block(args.small)['DIFFUSION_MODEL']
    torch.manual_seed(0)
    ours = BACKBONES.build(copy.deepcopy(block))
    state = {k: v.detach().clone() for k, v in ours.state_dict().items()}
    size, pooled_dim = (8, 32) if args.small else (128, 1280)
    sizes = ConcatTimestepEmbedderND({'OUT_DIM': 256})
    for side in ('diffusers', 'ours'):
        unet = (diffusers_twin_unet(block, state) if side == 'diffusers' else ours).to(dev).train()
        unet.to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(unet.parameters(), lr=1e-5, fused=run.cuda)
        for batch in args.batch:
            if run.left() < 60:
                run.note(f'sdxl train {side} batch {batch}: skipped, {run.left():.0f} s of the budget left')
                continue
            g = torch.Generator(device=dev).manual_seed(batch)
            x = torch.randn(batch, 4, size, size, device=dev, generator=g).contiguous(memory_format=torch.channels_last)
            noise = torch.randn(x.shape, device=dev, generator=g)
            ctx = torch.randn(batch, 77, block['CONTEXT_DIM'], device=dev, generator=g)
            pooled = torch.randn(batch, pooled_dim, device=dev, generator=g)
            ids = torch.tensor([[size * 8, size * 8, 0, 0, size * 8, size * 8]], device=dev).float().expand(batch, -1)
            t = torch.randint(0, 1000, (batch,), device=dev, generator=g)

            def forward() -> torch.Tensor:
                with torch.autocast(dev.type, dtype=torch.bfloat16):
                    if side == 'diffusers':
                        out = unet(x, t, ctx, added_cond_kwargs={'text_embeds': pooled, 'time_ids': ids}).sample
                    else:
                        out = unet(x, t, cond={'crossattn': ctx, 'y': torch.cat([pooled, sizes(ids)], 1)})
                return torch.nn.functional.mse_loss(out.float(), noise)

            step = optimizer_step(forward, opt)
            try:
                tflop = count_tflop(lambda: forward().backward()) / batch
                opt.zero_grad(set_to_none=True)
                run.reset_peak()
                sec = time_steps(run, step, args.steps)
            except torch.cuda.OutOfMemoryError:
                opt.zero_grad(set_to_none=True)
                run.note(f'sdxl train {side} batch {batch}: out of GPU memory')
                continue
            ips = batch / sec
            row = {'part': 'sdxl', 'side': side, 'layout': 'channels_last', 'compiled': False, 'batch': batch,
                   'step_s': sec, 'images_per_s': ips, 'peak_gib': run.peak_gib(), 'counted_tflop_per_image': tflop,
                   'mfu_issue_count': ips * tflop / datasheet_tflops, 'mfu_counted': ips * tflop / datasheet_tflops}
            run.data.setdefault('sdxl_train', []).append(row)
            run.save()
            print(f"sdxl train {side:9s} b{batch:<3d} {sec * 1e3:8.1f} ms  {ips:7.2f} img/s  "
                  f"peak {row['peak_gib']:6.1f} GiB  MFU {row['mfu_counted']:.1%}", flush=True)
        unet = opt = None  # freed before the next side
        if run.cuda:
            torch.cuda.empty_cache()


def diffusers_pipeline(model: torch.nn.Module) -> Any:
    """StableDiffusionXLPipeline holding `model`'s weights (our names -> diffusers' in memory)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from scepter_core.convert import diffusers_unet_config, diffusers_vae_config, ours_to_diffusers
    from scepter_core.models.tokenizers.clip_tokenizer import PACKAGED_VOCAB
    unet_cfg, vae_cfg = dict(model.cfg.DIFFUSION_MODEL), dict(model.cfg.FIRST_STAGE_MODEL)
    parts = ours_to_diffusers(model.state_dict(), unet_cfg, vae_cfg)
    unet = UNet2DConditionModel.from_config(diffusers_unet_config(unet_cfg, time_embed_dim=256))
    vae = AutoencoderKL.from_config(diffusers_vae_config(vae_cfg, float(model.scale_factor)))
    texts = [e.transformer for e in model.cond_stage_model.embedders if hasattr(e, 'transformer')]
    te1, te2 = CLIPTextModel(texts[0].text_model.config), CLIPTextModelWithProjection(texts[1].config)
    for module, part in ((unet, 'unet'), (vae, 'vae'), (te1, 'text_encoder'), (te2, 'text_encoder_2')):
        flat = not any(k.startswith('text_model.') for k in module.state_dict())  # transformers 5's CLIPTextModel
        module.load_state_dict({k.removeprefix('text_model.') if flat else k: v for k, v in parts[part].items()},
                               strict=True)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule='scaled_linear', clip_sample=False,
                              set_alpha_to_one=True, timestep_spacing='trailing')
    return StableDiffusionXLPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, unet=unet, scheduler=scheduler,
                                     tokenizer=CLIPTokenizer.from_pretrained(str(PACKAGED_VOCAB)),
                                     tokenizer_2=CLIPTokenizer.from_pretrained(str(PACKAGED_VOCAB), pad_token='!'))


def sample(run: Any, time_steps: Callable, prompt: str) -> None:
    from scepter_core.accel.switches import cast_parameters, compile_model
    from scepter_core.registry import MODELS
    args, dev = run.args, run.dev
    steps = args.sample_steps if args.sample_steps != 50 else 30
    size = 64 if args.small else 1024
    torch.manual_seed(0)
    # both VAEs in bf16: its range is float32's, so the fp16 overflow that FIRST_STAGE_FP32 avoids cannot occur
    ours = MODELS.build({**sdxl_block(args.small), 'FIRST_STAGE_FP32': False}).eval().requires_grad_(False)
    pipe = diffusers_pipeline(ours).to(dev, torch.bfloat16)
    cast_parameters(ours.to(dev), torch.bfloat16)
    kw = dict(sample_steps=steps, guide_scale=5.0, guide_rescale=0.0, seed=2023, sampler='ddim',
              discretization='trailing', image_size=[size, size])

    ours_fn = bf16_sampler(ours, prompt, dev, kw)

    def theirs() -> torch.Tensor:
        with torch.inference_mode():
            return pipe([prompt], num_inference_steps=steps, guidance_scale=5.0, height=size, width=size,
                        generator=torch.Generator(device=dev).manual_seed(2023), output_type='pt').images[0]
    plans = [('diffusers', theirs), ('ours', ours_fn(False)), ('ours cuda_graph', ours_fn(True))]
    if args.compile:
        plans.append(('ours compiled + cuda_graph', ours_fn(True)))
    images: dict[str, torch.Tensor] = {}
    for name, make in plans:
        def fn(name: str = name, make: Callable = make) -> None:  # keeps the last image to compare the sides
            images[name] = make().float().cpu()
        if run.left() < (150 if 'compiled' in name else 30):
            run.note(f'sdxl sample {name}: skipped, {run.left():.0f} s of the budget left')
            continue
        if 'compiled' in name:
            compile_model(ours, dev, logging.getLogger('bench'))
        run.reset_peak()
        started = time.perf_counter()
        sec = time_steps(run, fn, max(1, args.runs), warmup=1)
        diff = float((images[name] - images['diffusers']).abs().mean()) if 'diffusers' in images else None
        row = {'part': 'sdxl', 'plan': name, 'seconds_per_image': sec, 'peak_gib': run.peak_gib(),
               'sample_steps': steps, 'size': size, 'mean_abs_diff_vs_diffusers': diff,
               'wall_s': time.perf_counter() - started}
        run.data.setdefault('sdxl_sample', []).append(row)
        run.save()
        print(f'sdxl sample {name:28s} {sec:7.3f} s/image  peak {row["peak_gib"]:.1f} GiB  '
              f'|diff| vs diffusers {diff}', flush=True)


def bench_sdxl(run: Any, time_steps: Callable, count_tflop: Callable, datasheet_tflops: float, prompt: str) -> None:
    train(run, time_steps, count_tflop, datasheet_tflops)
    sample(run, time_steps, prompt)
