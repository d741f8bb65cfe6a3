"""Peak training memory of a flow-transformer run, planned before anything is allocated
(`scepter model info --family flux-dev --plan`, `--cfg RECIPE`).

weights   every component resident: frozen ones in the compute dtype (int8 / fp8 QUANTIZE_BASE:
          1 byte per frozen Linear weight + one scale per output row), trained ones in fp32 (+ the
          half-precision copies autocast makes of them under USE_AMP)
gradients 4 bytes per trained parameter (released after each step)
optimizer AdamW: two fp32 moments, and one fp32 temporary of the trained size in its step
activations what autograd keeps for the backward, traced: the transformer runs forward on the
          meta device (nothing allocated) at the run's batch, size and text length with the run's
          trained set (LoRA or full) and dtype, counting the bytes of every tensor autograd saves
          (storages counted once, parameters excluded). Gradient checkpointing keeps each block's
          inputs and, during the recomputation, one block's saved tensors. The backward's working
          set: twice the largest tensor a block saves (its gradient and its input's); once under
          checkpointing, where the recomputed block's tensors go as its backward uses them.
peak      weights + moments + the larger of (activations) and (gradients + the step's temporary).
The frozen VAE and text encoders run under no_grad before the transformer: their working set is
freed before it starts and is not added."""
from __future__ import annotations

import contextlib
import copy
import re
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

DTYPE_BYTES = {'float32': 4, 'float16': 2, 'bfloat16': 2}
TORCH_DTYPES = {'float32': torch.float32, 'float16': torch.float16, 'bfloat16': torch.bfloat16}
ADAMW_BYTES = 12  # two fp32 moments + one fp32 temporary in the step
TRANSFORMER_LORA = r'model\.(double_blocks|single_blocks|joint_blocks)\.\d+\.(.+\.)?' \
                   r'(qkv|proj|linear1|linear2|lin|fc1|fc2|mlp\.[02])$'


@dataclass(frozen=True)
class Switches:
    dtype: str = 'bfloat16'          # compute dtype (USE_AMP + DTYPE; float32: no AMP)
    quantize: str | None = None      # QUANTIZE_BASE: None, 'int8', 'fp8'
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
    if s.lora_rank:
        from ..tuners import apply_tuners
        import logging
        apply_tuners(holder, [{'NAME': 'SwiftLoRA', 'R': s.lora_rank, 'LORA_ALPHA': s.lora_rank,
                               'TARGET_MODULES': s.lora_targets}], logging.getLogger('scepter.plan'))
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


def activation_bytes(block: dict[str, Any], s: Switches, latent_channels: int, size_factor: int) -> dict[str, int]:
    """{'saved': bytes autograd keeps through the forward, 'working': the backward's extra} of
    the transformer `block` (a BACKBONES block) traced on the meta device."""
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
    working = 2 * counter.largest  # a block's backward: the gradients of its largest activation and input
    if not s.checkpointing:
        return {'saved': counter.total, 'working': working}
    per_block = max((saved for saved, _ in counter.blocks), default=0)
    outside = counter.total - sum(saved for saved, _ in counter.blocks)
    inputs = sum(n for _, n in counter.blocks)
    # the recomputed block's tensors are released as its backward consumes them: one gradient more
    return {'saved': outside + inputs + per_block, 'working': counter.largest}


def _quantized_bytes(module: nn.Module, dtype_bytes: int) -> int:
    """int8 / fp8 weight-only: 1 byte per Linear weight, one scale per output row, bias as is."""
    total = 0
    for m in module.modules():
        if isinstance(m, nn.Linear):
            total += m.weight.numel() + m.out_features * dtype_bytes
            total += m.bias.numel() * dtype_bytes if m.bias is not None else 0
        else:
            total += sum(p.numel() for p in m.parameters(recurse=False)) * dtype_bytes
    return total


def plan(transformer_block: dict[str, Any], other_parameters: int, s: Switches, latent_channels: int,
         size_factor: int) -> dict[str, int]:
    """Planned bytes of one training run (weights, gradients, optimizer, activations, peak) of
    the transformer `transformer_block` beside `other_parameters` frozen ones (VAE, text encoders)."""
    size = DTYPE_BYTES[s.dtype]
    transformer = build_meta(transformer_block)
    n_transformer = sum(p.numel() for p in transformer.parameters())
    if s.lora_rank:
        pattern = re.compile(s.lora_targets)  # as peft matches it: the whole name in the network
        trained = sum(s.lora_rank * (m.in_features + m.out_features) for n, m in transformer.named_modules()
                      if isinstance(m, nn.Linear) and pattern.fullmatch('model.' + n))
        base = _quantized_bytes(transformer, size) if s.quantize else n_transformer * size
    else:
        trained, base = n_transformer, 0
    weights = base + trained * 4 + (trained * size if size < 4 else 0) + other_parameters * size
    act = activation_bytes(transformer_block, s, latent_channels, size_factor)
    out = {'weights': weights, 'gradients': trained * 4, 'optimizer': trained * ADAMW_BYTES,
           'activations': act['saved'] + act['working'], 'trained_parameters': trained}
    # Two moments stay; the forward's activations and the step's gradients + temporary never
    # coexist (gradients are released after each step).
    moments = trained * 8
    out['peak'] = weights + moments + max(out['activations'], out['gradients'] + out['optimizer'] - moments)
    return out


def switch_table(transformer_block: dict[str, Any], other_parameters: int, base: Switches, latent_channels: int,
                 size_factor: int, lora_rank: int) -> list[dict[str, Any]]:
    """The plan for each switch: full / LoRA (dtype or int8 base), checkpointing off / on."""
    rows = []
    for lora, quantize in ((0, None), (lora_rank, None), (lora_rank, 'int8')):
        for ckpt in (False, True):
            s = Switches(**{**asdict(base), 'lora_rank': lora, 'quantize': quantize, 'checkpointing': ckpt})
            rows.append({'switches': {k: v for k, v in asdict(s).items() if k != 'lora_targets'},
                         **plan(transformer_block, other_parameters, s, latent_channels, size_factor)})
    return rows


# ---- the plan of a family (`--family`) or a recipe (`--cfg`) ---------------------------------

def latent_geometry(model: dict[str, Any]) -> tuple[int, int, int]:
    """(latent channels, pixels per latent cell, text tokens the transformer sees) of a flow
    network block."""
    backbone = model['DIFFUSION_MODEL']
    if backbone.get('NAME') == 'Flux':
        channels = int(backbone.get('IN_CHANNELS', 64)) // int(backbone.get('PATCH_SIZE', 2)) ** 2
        t5 = model.get('COND_STAGE_MODEL', {}).get('T5_MODEL') or {}
        tokens = int(t5.get('MAX_LENGTH', 512 if backbone.get('GUIDANCE_EMBED', True) else 256))
    else:
        channels = int(backbone.get('IN_CHANNELS', 16))
        t5 = model.get('COND_STAGE_MODEL', {}).get('T5_XXL') or {}
        tokens = 77 + int(t5.get('LENGTH', t5.get('MAX_LENGTH', 256)))
    encoder = (model.get('FIRST_STAGE_MODEL') or {}).get('ENCODER') or {}
    factor = 2 ** (len(encoder.get('CH_MULT', [1, 2, 4, 4])) - 1)  # the VAE's downsampling, as it encodes
    return channels, factor, tokens


def family_plan(name: str, dtype: str, lora_rank: int, batch: int, size: tuple[int, int]) -> list[dict[str, Any]]:
    """The switch table of a flow family of the table (flux-dev, flux-schnell, sd35-*)."""
    from .family_table import family
    from .info import build_components
    from ..errors import ConfigError
    entry = family(name)
    if 'transformer' not in entry['components']:
        raise ConfigError(f"--plan: '{name}' is not a flow-transformer family (flux-dev, flux-schnell, sd35-medium, "
                          f'sd35-large)')
    others = sum(p.numel() for k, m in build_components(name).items() if k != 'transformer' for p in m.parameters())
    channels, factor, tokens = latent_geometry(entry['model'])
    base = Switches(dtype=dtype, batch=batch, size=size, text_tokens=tokens)
    return switch_table(entry['model']['DIFFUSION_MODEL'], others, base, channels, factor, lora_rank)


def _encoder_parameters(block: dict[str, Any]) -> int:
    """Parameters of a text encoder block, from its folder's safetensors headers (or CONFIG)."""
    from pathlib import Path

    from .info import _header_counts
    counted = 0
    for key, value in block.items():
        if isinstance(value, dict) and 'NAME' in value:
            counted += _encoder_parameters(value)
    path = block.get('MODEL_PATH') or (block.get('PRETRAINED_MODEL') if block.get('NAME') != 'Flux' else None)
    if path and Path(str(path)).is_dir():
        counted += sum(_header_counts(sorted(Path(str(path)).glob('*.safetensors'))).values())
    return counted


def recipe_plan(cfg: Any, size: tuple[int, int] | None = None) -> dict[str, Any]:
    """The plan of a recipe's run: its switches (USE_AMP / DTYPE, QUANTIZE_BASE, the tuner's rank
    and targets, the transformer's checkpointing, TRAIN_DATA.BATCH_SIZE) at `size` pixels
    (default: the model's IMAGE_SIZE)."""
    from ..errors import ConfigError
    from ..registry import MODELS
    solver = cfg['SOLVER'] if 'SOLVER' in cfg else cfg
    model = dict(solver['MODEL'].to_dict() if hasattr(solver['MODEL'], 'to_dict') else solver['MODEL'])
    backbone = model.get('DIFFUSION_MODEL') or {}
    if backbone.get('NAME') not in ('Flux', 'MMDiT'):
        raise ConfigError("plan: 'SOLVER.MODEL.DIFFUSION_MODEL' is not a flow transformer (Flux, MMDiT)")
    vae = {k: v for k, v in model['FIRST_STAGE_MODEL'].items() if k != 'PRETRAINED_MODEL'}
    with torch.device('meta'):
        vae_parameters = sum(p.numel() for p in MODELS.build(vae).parameters())
    others = vae_parameters + _encoder_parameters(model.get('COND_STAGE_MODEL') or {})
    tuner = solver.get('TUNER') or []
    tuner = (tuner[0] if isinstance(tuner, list) else tuner) if tuner else None
    channels, factor, tokens = latent_geometry(model)
    s = Switches(dtype=solver.get('DTYPE', 'float32') if solver.get('USE_AMP') else 'float32',
                 quantize=solver.get('QUANTIZE_BASE'), lora_rank=int(tuner['R']) if tuner else 0,
                 lora_targets=tuner['TARGET_MODULES'] if tuner else TRANSFORMER_LORA,
                 checkpointing=bool(backbone.get('USE_GRAD_CHECKPOINT') or backbone.get('USE_CHECKPOINT')),
                 batch=int(solver['TRAIN_DATA'].get('BATCH_SIZE', 1)),
                 size=tuple(size or model.get('IMAGE_SIZE') or (1024, 1024)), text_tokens=tokens)
    return {'switches': {k: v for k, v in asdict(s).items() if k != 'lora_targets'},
            **plan(backbone, others, s, channels, factor)}
