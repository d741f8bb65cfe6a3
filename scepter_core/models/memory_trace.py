"""What autograd keeps for the backward of a flow transformer, traced on the meta device
(nothing allocated): the transformer runs forward at the run's batch, size and text length with
the run's trained set (LoRA or full) and dtype, and every tensor autograd saves is counted
(storages once, parameters excluded). Gradient checkpointing keeps each block's inputs and,
during the recomputation, one block's saved tensors. The backward's working set: twice the
largest tensor a block saves (its gradient and its input's); once under checkpointing, where
the recomputed block's tensors go as its backward uses them."""
from __future__ import annotations

import contextlib
import copy
import re
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

TORCH_DTYPES = {'float32': torch.float32, 'float16': torch.float16, 'bfloat16': torch.bfloat16}
TRANSFORMER_LORA = r'model\.(double_blocks|single_blocks|joint_blocks)\.\d+\.(.+\.)?' \
                   r'(qkv|proj|linear1|linear2|lin|fc1|fc2|mlp\.[02])$'


@dataclass(frozen=True)
class Switches:
    dtype: str = 'bfloat16'          # compute dtype (USE_AMP + DTYPE; float32: no AMP)
    quantize: str | None = None      # QUANTIZE_BASE: None, 'int8', 'fp8'
    offload: bool = False            # the transformer's OFFLOAD_BLOCKS
    checkpointing: bool = False      # the transformer's USE_GRAD_CHECKPOINT / USE_CHECKPOINT
    lora_rank: int = 0               # 0: full fine-tune of the transformer
    lora_targets: str = TRANSFORMER_LORA
    batch: int = 1
    size: tuple[int, int] = (1024, 1024)  # image pixels
    text_tokens: int = 512           # text tokens the transformer sees (FLUX-dev T5: 512; SD3: 77 + 256)


def _storage(t: torch.Tensor) -> tuple[int, int]:
    s = t.untyped_storage()
    return s._cdata, s.nbytes()


class SavedBytes:
    """Bytes autograd saves while active, storages counted once, parameters excluded;
    per-block amounts through `block_hooks`."""

    def __init__(self, module: nn.Module):
        self.params = {_storage(p)[0] for p in module.parameters()}
        self.seen: dict[int, int] = {}
        self.blocks: list[tuple[int, int]] = []  # (saved bytes, input bytes) per block call
        self.largest = 0  # the largest tensor saved inside a block
        self._marks: list[tuple[int, int]] = []

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        key, nbytes = _storage(t)
        if key not in self.params and key not in self.seen:
            self.seen[key] = nbytes
            if self._marks:
                self.largest = max(self.largest, nbytes)
        return t

    @property
    def total(self) -> int:
        return sum(self.seen.values())

    def block_hooks(self, block: nn.Module) -> None:
        def before(_m: nn.Module, args: tuple) -> None:
            inputs = {_storage(a) for a in args if isinstance(a, torch.Tensor)}
            self._marks.append((self.total, sum(n for k, n in inputs if k not in self.params)))

        def after(_m: nn.Module, _args: tuple, _out: Any) -> None:
            start, inputs = self._marks.pop()
            self.blocks.append((self.total - start, inputs))
        block.register_forward_pre_hook(before)
        block.register_forward_hook(after)


def transformer_blocks(backbone: nn.Module) -> list[nn.Module]:
    return [b for name in ('double_blocks', 'single_blocks', 'joint_blocks') for b in getattr(backbone, name, [])]


def backbone_inputs(backbone: nn.Module, s: Switches, latent_channels: int, size_factor: int) -> tuple:
    """Meta inputs (x, t, cond) of a Flux or MMDiT backbone for the run's batch and size."""
    c, (h, w) = backbone.cfg, (s.size[0] // size_factor, s.size[1] // size_factor)
    flux = hasattr(backbone, 'double_blocks')
    context = c.CONTEXT_IN_DIM if flux else int(dict(c.CONTEXT_EMBEDDER_CONFIG.get('params') or {}).get(
        'in_features', 4096))
    pooled = c.VEC_IN_DIM if flux else c.ADM_IN_CHANNELS
    dtype = TORCH_DTYPES[s.dtype]
    meta = dict(device='meta', dtype=dtype)
    cond = {'crossattn': torch.empty(s.batch, s.text_tokens, context, **meta), 'y': torch.empty(s.batch, pooled, **meta),
            'guidance': torch.full((s.batch,), 3.5, device='meta')}
    return torch.empty(s.batch, latent_channels, h, w, **meta), torch.full((s.batch,), 500.0, device='meta'), cond


def _with_lora(backbone: nn.Module, s: Switches) -> nn.Module:
    """The backbone under `.model` of a holder, with the run's LoRA adapters when it has them."""
    holder = nn.Module()
    holder.model = backbone
    pattern = re.compile(s.lora_targets)
    if s.lora_rank and any(isinstance(m, nn.Linear) and pattern.fullmatch('model.' + n)
                           for n, m in backbone.named_modules()):  # else: no adapter, nothing trains
        import logging

        from ..tuners import apply_tuners
        apply_tuners(holder, [{'NAME': 'SwiftLoRA', 'R': s.lora_rank, 'LORA_ALPHA': s.lora_rank,
                               'TARGET_MODULES': s.lora_targets}], logging.Logger('plan'))  # not the run's log
    return holder


def build_meta(block: dict[str, Any]) -> nn.Module:
    """The transformer of a BACKBONES block on the meta device, without its weights file."""
    from ..registry import BACKBONES
    block = copy.deepcopy(block)
    for key in ('USE_GRAD_CHECKPOINT', 'USE_CHECKPOINT', 'OFFLOAD_BLOCKS', 'PRETRAINED_MODEL'):
        block.pop(key, None)
    with torch.device('meta'):
        return BACKBONES.build(block).to('meta')  # MMDiT's fixed positions are made on the CPU


@contextlib.contextmanager
def _flash_attention() -> Iterator[None]:
    """SDPA as flash attention for the trace: on the meta device SDPA takes the math path, which
    saves the [L, L] attention weights; GPUs (and torch's CPU flash kernel) save q, k, v, the
    output and the log-sum-exp only."""
    sdpa = F.scaled_dot_product_attention

    def flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: Any = None, dropout_p: float = 0.0,
              is_causal: bool = False, scale: float | None = None, **kw: Any) -> torch.Tensor:
        if attn_mask is not None or dropout_p:
            return sdpa(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, **kw)
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, is_causal=is_causal,
                                                                            scale=scale)[0]
    F.scaled_dot_product_attention = flash
    try:
        yield
    finally:
        F.scaled_dot_product_attention = sdpa


def activation_bytes(block: dict[str, Any], s: Switches, latent_channels: int,
                     size_factor: int) -> dict[bool, dict[str, int]]:
    """{checkpointing: {'saved': bytes autograd keeps through the forward, 'working': the
    backward's extra}} of the transformer `block` (a BACKBONES block), from one trace on the meta
    device (the trace does not depend on checkpointing: the per-block amounts give both)."""
    backbone = build_meta(block)
    holder = _with_lora(backbone, s)
    if not s.lora_rank:
        backbone.requires_grad_(True)
    if s.dtype != 'float32':  # autocast computes (and saves) in the compute dtype
        holder.to(TORCH_DTYPES[s.dtype])
    counter = SavedBytes(holder)
    for b in transformer_blocks(backbone):
        counter.block_hooks(b)
    backbone.train()
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t), _flash_attention():
        backbone(*backbone_inputs(backbone, s, latent_channels, size_factor))
    per_block = max((saved for saved, _ in counter.blocks), default=0)
    outside = counter.total - sum(saved for saved, _ in counter.blocks)
    inputs = sum(n for _, n in counter.blocks)
    # a block's backward: the gradients of its largest activation and its input; under
    # checkpointing the recomputed block's tensors are released as its backward consumes them
    return {False: {'saved': counter.total, 'working': 2 * counter.largest},
            True: {'saved': outside + inputs + per_block, 'working': counter.largest}}
