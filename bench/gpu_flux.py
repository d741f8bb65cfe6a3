"""bench/gpu.py's FLUX part (`--parts flux`): the FLUX.1-dev transformer (random weights, bf16)
at 1024 px (64x64 latents = 4096 image tokens, 512 T5 tokens), batch 1.

lora rows:   a rank-16 LoRA training step (forward + backward + AdamW on the adapters) under
             each memory switch: bf16 or int8 base (QUANTIZE_BASE), gradient checkpointing,
             block offload (OFFLOAD_BLOCKS); step seconds and peak allocated GiB, beside the
             transformer's part of the memory plan (models/memory_plan.py) for the same switches.
sample rows: 28 flow-Euler steps of the transformer (guidance 3.5), eager and torch.compile;
             seconds per image (the text encoders and the VAE decode are not in it).
--small runs a tiny FLUX at 64 px instead (a smoke test that runs anywhere, CPU included)."""
from __future__ import annotations

import copy
import time
from typing import Any

import torch
from torch import nn

DEV_BLOCK = {'NAME': 'Flux', 'GUIDANCE_EMBED': True}
TINY_BLOCK = {'NAME': 'Flux', 'IN_CHANNELS': 64, 'HIDDEN_SIZE': 64, 'NUM_HEADS': 2, 'AXES_DIM': [8, 12, 12],
              'VEC_IN_DIM': 768, 'CONTEXT_IN_DIM': 4096, 'DEPTH': 1, 'DEPTH_SINGLE_BLOCKS': 2, 'GUIDANCE_EMBED': True}
LORA = {'NAME': 'SwiftLoRA', 'R': 16, 'LORA_ALPHA': 16,
        'TARGET_MODULES': r'model\.(double_blocks|single_blocks)\.\d+\.(.+\.)?(qkv|proj|linear1|linear2|lin)'}
SWITCHES = [('bfloat16', False, False), ('bfloat16', True, False), ('int8', True, False), ('int8', True, True)]


def _inputs(block: dict, side: int, dev: torch.device, dtype: torch.dtype) -> tuple:
    g = torch.Generator(device='cpu').manual_seed(0)
    x = torch.randn(1, block.get('IN_CHANNELS', 64) // 4, side // 8, side // 8, generator=g).to(dev, dtype)
    cond = {'crossattn': torch.randn(1, 512, block.get('CONTEXT_IN_DIM', 4096), generator=g).to(dev, dtype),
            'y': torch.randn(1, block.get('VEC_IN_DIM', 768), generator=g).to(dev, dtype),
            'guidance': torch.full((1,), 3.5, device=dev)}
    return x, cond


def _build(block: dict, dev: torch.device) -> nn.Module:
    from scepter_core.registry import BACKBONES
    with torch.device(dev):
        model = BACKBONES.build(copy.deepcopy(block))
    return model.to(torch.bfloat16)


def lora_row(run: Any, block: dict, base: str, ckpt: bool, offload: bool, side: int) -> dict:
    from scepter_core.models.memory_plan import Switches, plan
    from scepter_core.models.quantize import quantize_frozen
    from scepter_core.tuners import apply_tuners
    dev = run.dev
    switches = {'USE_GRAD_CHECKPOINT': ckpt, 'OFFLOAD_BLOCKS': offload}
    run.reset_peak()
    holder = nn.Module()
    holder.model = _build({**block, **switches}, dev).requires_grad_(False)
    if base == 'int8':
        quantize_frozen(holder, 'int8')
    apply_tuners(holder, [LORA])
    holder.train()
    trained = [p for p in holder.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trained, lr=1e-4)
    x, cond = _inputs(block, side, dev, torch.bfloat16)
    t = torch.full((1,), 500.0, device=dev)

    def step() -> None:
        holder.model(x, t, cond).float().square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    step()
    run.sync()
    t0 = time.perf_counter()
    for _ in range(run.args.steps):
        step()
    run.sync()
    planned = plan(block, 0, Switches(dtype='bfloat16', quantize=None if base == 'bfloat16' else base,
                                      offload=offload, checkpointing=ckpt, lora_rank=16,
                                      lora_targets=LORA['TARGET_MODULES'],
                                      batch=1, size=(side, side), text_tokens=512), 16, 8)
    row = {'side': 'ours', 'base': base, 'checkpointing': ckpt, 'offload': offload,
           'step_s': (time.perf_counter() - t0) / run.args.steps, 'peak_gib': run.peak_gib(),
           'planned_gib': planned['peak'] / 2 ** 30}
    return row


def sample_row(run: Any, block: dict, compiled: bool, side: int, steps: int = 28) -> dict:
    model = _build(block, run.dev).eval().requires_grad_(False)
    forward = torch.compile(model) if compiled else model
    x, cond = _inputs(block, side, run.dev, torch.bfloat16)
    sigmas = torch.linspace(1.0, 0.0, steps + 1, device=run.dev)

    def sample() -> None:
        z = x.clone()
        with torch.no_grad():
            for s, s_next in zip(sigmas[:-1], sigmas[1:]):
                z = z + (s_next - s) * forward(z, (s * 1000).expand(1), cond)
    sample()
    run.sync()
    times = []
    for _ in range(run.args.runs):
        t0 = time.perf_counter()
        sample()
        run.sync()
        times.append(time.perf_counter() - t0)
    return {'side': 'ours', 'compiled': compiled, 'steps': steps, 'seconds_per_image': sorted(times)[len(times) // 2],
            'peak_gib': run.peak_gib()}


def bench_flux(run: Any) -> None:
    block, side = (TINY_BLOCK, 64) if run.args.small else (DEV_BLOCK, 1024)
    run.data.setdefault('flux', [])
    for base, ckpt, offload in SWITCHES:
        if run.left() < 0:
            return run.note('flux: budget spent')
        if base == 'int8' and not run.cuda and offload:
            continue
        run.data['flux'].append({'row': 'lora', **lora_row(run, block, base, ckpt, offload, side)})
        run.save()
        print(run.data['flux'][-1], flush=True)
    for compiled in (False, True):
        if run.left() < 0:
            return run.note('flux: budget spent')
        run.data['flux'].append({'row': 'sample', **sample_row(run, block, compiled, side)})
        run.save()
        print(run.data['flux'][-1], flush=True)
