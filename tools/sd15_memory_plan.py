"""Hardware planning numbers for fine-tuning SD1.5 (examples/sd15_512_full.yaml): parameters
per component, weight sizes, AdamW state, and the UNet's activation memory at 512 px.

    python tools/sd15_memory_plan.py [--batch 1 2 4 8] [--size 512]

Nothing is allocated: the model is built on the meta device and one training forward is
traced. Activation memory is the set of distinct tensors autograd keeps for the backward
pass (plus, with gradient checkpointing, the block inputs the checkpoints keep), under an
emulation of CUDA fp16 autocast (matmuls and convolutions in fp16 with parameters cast once
and cached, normalisations in fp32) and a flash-attention SDPA (q, k, v, output and the fp32
log-sum-exp are kept, never the attention matrix). Allocator slack, the CUDA context and
the cuDNN workspace come on top."""
from __future__ import annotations

import argparse
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

GIB = 2 ** 30
LOW_PRECISION = {F.conv2d, F.linear, torch.matmul, torch.bmm, torch.baddbmm, torch.mm, torch.addmm}
FULL_PRECISION = {F.group_norm, F.layer_norm, F.softmax, torch.softmax, F.log_softmax}


class AmpEmulation(TorchFunctionMode):
    """CUDA autocast(float16)'s casting policy. It acts above autograd, as autocast does, so
    the casts and the tensors they produce are what autograd saves."""

    def __init__(self) -> None:
        super().__init__()
        self.weight_cache: dict[int, torch.Tensor] = {}

    def _cast(self, dtype: torch.dtype) -> Callable[[Any], Any]:
        def cast(x: Any) -> Any:
            if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dtype == dtype:
                return x
            if isinstance(x, torch.nn.Parameter):  # autocast casts each weight once per forward
                return self.weight_cache.setdefault(id(x), x.to(dtype))
            return x.to(dtype)
        return cast

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in LOW_PRECISION:
            args, kwargs = tree_map(self._cast(torch.float16), (args, kwargs))
        elif func in FULL_PRECISION:
            args, kwargs = tree_map(self._cast(torch.float32), (args, kwargs))
        return func(*args, **kwargs)


class FlashAttention(torch.autograd.Function):
    """Shape-only stand-in for a fused attention kernel: what it keeps for the backward."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out


def flash_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return FlashAttention.apply(*(x.to(torch.float16) for x in (q, k, v)))


def storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


def unet_activation_bytes(unet_cfg: dict, batch: int, size: int, use_checkpoint: bool) -> tuple[int, int]:
    """(activation bytes kept for the backward, fp16 weight copies) of one training forward."""
    from scepter_core.models.backbones import attention, unet_blocks
    from scepter_core.registry import BACKBONES
    with torch.device('meta'):
        unet = BACKBONES.build({**unet_cfg, 'USE_CHECKPOINT': use_checkpoint}).train()
        x = torch.empty(batch, 4, size // 8, size // 8)
        t = torch.zeros(batch, dtype=torch.long)
        context = torch.empty(batch, 77, unet_cfg['CONTEXT_DIM'])
    params = {storage_key(p) for p in unet.parameters()}
    kept: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        key = storage_key(tensor)
        if key not in params:
            kept[key] = tensor.untyped_storage().nbytes()
        return tensor

    def checkpoint(fn: Callable, *args: Any, **kwargs: Any) -> Any:  # the inputs stay alive for recompute
        for a in args:
            if isinstance(a, torch.Tensor):
                keep(a)
        return real_checkpoint(fn, *args, **kwargs)

    real_checkpoint, real_sdpa = unet_blocks.checkpoint, attention.F.scaled_dot_product_attention
    amp = AmpEmulation()
    unet_blocks.checkpoint, F.scaled_dot_product_attention = checkpoint, flash_sdpa
    try:
        with amp, torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            unet(x.requires_grad_(False), t, context).float().pow(2).mean()
    finally:
        unet_blocks.checkpoint, F.scaled_dot_product_attention = real_checkpoint, real_sdpa
    cache = {storage_key(w) for w in amp.weight_cache.values()}
    activations = sum(n for k, n in kept.items() if k not in cache)
    return activations, sum(w.untyped_storage().nbytes() for w in amp.weight_cache.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--batch', type=int, nargs='+', default=[1, 2, 4, 8])
    ap.add_argument('--size', type=int, default=512)
    args = ap.parse_args()
    from scepter_core.config import Config
    from scepter_core.inference import SD15_RECIPE
    from scepter_core.registry import MODELS
    model_cfg = Config.load(SD15_RECIPE).SOLVER.MODEL
    with torch.device('meta'):
        model = MODELS.build(model_cfg)
    print('component            parameters    fp32 GiB  fp16 GiB')
    counts = {name: sum(p.numel() for p in getattr(model, name).parameters())
              for name in ('model', 'first_stage_model', 'cond_stage_model')}
    for name, n in {**counts, 'total': sum(counts.values())}.items():
        print(f'{name:<20} {n:>13,}  {n * 4 / GIB:8.2f}  {n * 2 / GIB:8.2f}')
    unet, frozen = counts['model'], counts['first_stage_model'] + counts['cond_stage_model']
    # fp32 UNet + fp32 gradients + two fp32 AdamW moments + fp32 frozen parts
    static = (unet * 4 * 4 + frozen * 4) / GIB
    print(f'UNet fine-tune: fp32 grads {unet * 4 / GIB:.2f} GiB, AdamW moments {unet * 8 / GIB:.2f} GiB, '
          f'weights + grads + moments + frozen parts {static:.2f} GiB')
    unet_cfg = model_cfg.DIFFUSION_MODEL.to_dict()
    print(f'\nUNet activations at {args.size} px (GiB; fp16 autocast, flash attention) and the training '
          f'peak bound (static + fp16 weight copies + activations)')
    print('batch  no checkpointing  checkpointing  fp16 weight copies  peak  peak (checkpointing)')
    for b in args.batch:
        plain, copies = unet_activation_bytes(unet_cfg, b, args.size, False)
        ckpt, _ = unet_activation_bytes(unet_cfg, b, args.size, True)
        plain, ckpt, copies = plain / GIB, ckpt / GIB, copies / GIB
        print(f'{b:>5}  {plain:16.2f}  {ckpt:13.2f}  {copies:18.2f}  {static + copies + plain:4.1f}  '
              f'{static + copies + ckpt:20.1f}')


if __name__ == '__main__':
    main()
