"""OpenCLIP text-tower names (SD2's `cond_stage_model.model.*`, SDXL's
`conditioner.embedders.1.model.*`) <-> transformers' CLIPTextModel / CLIPTextModelWithProjection
names. A key table plus two tensor rules: the fused attention input projection
(`attn.in_proj_weight`, [3D, D]) is q/k/v stacked, and `text_projection` is stored as the
matrix x @ P where transformers keeps the Linear weight P^T."""
from __future__ import annotations

from typing import Mapping

import torch

from ..errors import CheckpointError
from .keymap import KeyMap

LAYER_LEAVES = (('layer_norm1', 'ln_1'), ('self_attn.out_proj', 'attn.out_proj'), ('layer_norm2', 'ln_2'),
                ('mlp.fc1', 'mlp.c_fc'), ('mlp.fc2', 'mlp.c_proj'))
QKV = ('q_proj', 'k_proj', 'v_proj')
# Tensors of an OpenCLIP text tower that no CLIP text model holds (the contrastive temperature).
UNUSED = ('logit_scale',)


def _layers(sd: Mapping[str, torch.Tensor], pattern: str) -> list[int]:
    head, tail = pattern.split('{}')
    return sorted({int(k[len(head):].split('.')[0]) for k in sd if k.startswith(head) and tail in k})


def _table(n_layers: int) -> KeyMap:
    pairs = [('text_model.embeddings.token_embedding', 'token_embedding'),
             ('text_model.final_layer_norm', 'ln_final')]
    pairs += [(f'text_model.encoder.layers.{i}.{o}', f'transformer.resblocks.{i}.{t}')
              for i in range(n_layers) for o, t in LAYER_LEAVES]
    return KeyMap(pairs, name='OpenCLIP text')


def openclip_to_hf(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenCLIP text-tower state dict (prefix removed) -> transformers CLIP text names.
    `text_projection` becomes `text_projection.weight` (CLIPTextModelWithProjection); the
    position table, a bare parameter there, becomes `position_embedding.weight`."""
    rest = {k: v for k, v in sd.items() if k not in UNUSED}
    out: dict[str, torch.Tensor] = {}
    if 'positional_embedding' in rest:
        out['text_model.embeddings.position_embedding.weight'] = rest.pop('positional_embedding')
    if 'text_projection' in rest:
        out['text_projection.weight'] = rest.pop('text_projection').t().contiguous()
    for i in _layers(rest, 'transformer.resblocks.{}.attn.in_proj_'):
        for kind in ('weight', 'bias'):
            fused = rest.pop(f'transformer.resblocks.{i}.attn.in_proj_{kind}', None)
            if fused is None:
                continue
            if fused.shape[0] % 3:
                raise CheckpointError(f"OpenCLIP text: 'transformer.resblocks.{i}.attn.in_proj_{kind}' has "
                                      f'{fused.shape[0]} rows, not three equal q/k/v blocks')
            for name, part in zip(QKV, fused.chunk(3, dim=0)):
                out[f'text_model.encoder.layers.{i}.self_attn.{name}.{kind}'] = part.contiguous()
    out.update(_table(len(_layers(rest, 'transformer.resblocks.{}.'))).to_ours(rest))
    return out


def hf_to_openclip(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers CLIP text names -> OpenCLIP text-tower names (q/k/v fused again)."""
    rest = dict(sd)
    out: dict[str, torch.Tensor] = {}
    pos = rest.pop('text_model.embeddings.position_embedding.weight', None)
    if pos is not None:
        out['positional_embedding'] = pos
    proj = rest.pop('text_projection.weight', None)
    if proj is not None:
        out['text_projection'] = proj.t().contiguous()
    rest.pop('text_model.embeddings.position_ids', None)  # a buffer of older transformers files
    for i in _layers(rest, 'text_model.encoder.layers.{}.self_attn.q_proj'):
        for kind in ('weight', 'bias'):
            names = [f'text_model.encoder.layers.{i}.self_attn.{n}.{kind}' for n in QKV]
            if all(n in rest for n in names):
                out[f'transformer.resblocks.{i}.attn.in_proj_{kind}'] = torch.cat([rest.pop(n) for n in names])
    out.update(_table(len(_layers(rest, 'text_model.encoder.layers.{}.'))).to_theirs(rest))
    return out


def openclip_text_config(sd: Mapping[str, torch.Tensor]) -> dict:
    """A `CLIPTextConfig` dict read off OpenCLIP text-tower weights. Heads are hidden / 64, as in
    ViT-H/14 (SD2, 16 heads) and ViT-bigG/14 (SDXL, 20 heads); OpenCLIP uses exact GELU."""
    emb, pos = sd['token_embedding.weight'], sd['positional_embedding']
    hidden = emb.shape[1]
    return {
        'architectures': ['CLIPTextModelWithProjection' if 'text_projection' in sd else 'CLIPTextModel'],
        'model_type': 'clip_text_model', 'vocab_size': emb.shape[0], 'hidden_size': hidden,
        'intermediate_size': sd['transformer.resblocks.0.mlp.c_fc.weight'].shape[0],
        'num_hidden_layers': len(_layers(sd, 'transformer.resblocks.{}.')),
        'num_attention_heads': max(1, hidden // 64), 'max_position_embeddings': pos.shape[0],
        'hidden_act': 'gelu', 'layer_norm_eps': 1e-5,
        'projection_dim': sd['text_projection'].shape[1] if 'text_projection' in sd else hidden,
        'bos_token_id': 49406, 'eos_token_id': 49407, 'pad_token_id': 1,
    }
