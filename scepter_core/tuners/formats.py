"""LoRA interchange formats, so adapters trained here load in other tools and theirs load here.

kohya / A1111 (what kohya sd-scripts writes for SD 1.x and A1111, ComfyUI and diffusers
read): `lora_unet_<diffusers UNet module>` and `lora_te_text_model_<CLIP module>`, dots as
underscores, with `.lora_down.weight` (A), `.lora_up.weight` (B) and `.alpha`. SDXL, as
sd-scripts writes it: the UNet by its SGM modules (`lora_unet_input_blocks_4_1_...`) and the two
encoders as `lora_te1_` / `lora_te2_`. Either UNet layout is read for every family.

diffusers / peft: `unet.<diffusers module>.lora_A.weight` / `.lora_B.weight`,
`text_encoder.text_model.<CLIP module>...` (SDXL: also `text_encoder_2.`), ranks and alphas as LoraConfig fields in the
`lora_adapter_metadata` JSON. UNet names go through the converters' UNet table."""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import load_state_dict, read_safetensors_header, save_state_dict
from ..errors import CheckpointError
from ..convert.fused_map import Entry
from .apply import model_lora_state, record_of
from .fused_lora import backbone_entries, fuse_lora, split_lora
from .state import LoraState, ModuleLora, block_for, flatten, group

UNET, TEXT = 'model.', 'cond_stage_model.transformer.'
OWN_NAMED = ('Flux', 'MMDiT')
COMFY = 'diffusion_model.'
FLOW = 'transformer.'  # diffusers' component of the flow transformers
COMPONENTS = (UNET, 'cond_stage_model.')   # one adapter per component on import
DIFFUSERS_METADATA = 'lora_adapter_metadata'


def _adaptable(module: nn.Module) -> list[str]:
    """Names of the Linear / Conv layers of `module` (adapted or not) that LoRA can target."""
    from peft.tuners.lora import LoraLayer
    names = []
    for name, m in module.named_modules():
        if isinstance(m, LoraLayer) or (isinstance(m, (nn.Linear, nn.Conv2d)) and '.lora_' not in name
                                        and not name.endswith('base_layer')):
            names.append(name)
    return names


def text_encoders(model: nn.Module) -> dict[str, tuple[str, nn.Module]]:
    """{our prefix: (diffusers folder, CLIP text module)} of the model's text encoders: SD's one
    (`cond_stage_model.transformer.`: text_encoder), or the text embedders of SDXL's conditioner
    (`cond_stage_model.embedders.N.transformer.`: text_encoder, text_encoder_2; the refiner's
    bigG alone: text_encoder_2), named as the converters name their folders."""
    from ..convert.text_map import ours_text_folders
    cond = getattr(model, 'cond_stage_model', None)
    if cond is None:
        return {}
    if hasattr(cond, 'transformer'):
        return {TEXT: ('text_encoder', cond.transformer)}
    towers = {f'cond_stage_model.embedders.{i}.transformer.': e.transformer
              for i, e in enumerate(getattr(cond, 'embedders', None) or []) if hasattr(e, 'transformer')}
    folders = ours_text_folders({prefix: None for prefix in towers})
    return {prefix: (folder, towers[prefix]) for folder, prefix in folders.items() if prefix in towers}


def diffusers_names(model: nn.Module) -> dict[str, str]:
    """Our module name -> diffusers module name (`unet.*`, `text_encoder.text_model.*`,
    `text_encoder_2.*`) for every adaptable layer of the UNet (`model`) and the text encoders."""
    from ..convert import unet_keymap
    out: dict[str, str] = {}
    unet = getattr(model, 'model', None)
    if unet is not None and hasattr(unet, 'cfg'):
        keymap = unet_keymap(unet.cfg)
        for name in _adaptable(unet):
            try:
                (theirs,) = keymap.to_theirs({f'{name}.weight': torch.empty(0)})
            except CheckpointError:
                continue  # no diffusers counterpart
            out[UNET + name] = 'unet.' + theirs.removesuffix('.weight')
    for prefix, (folder, text) in text_encoders(model).items():
        out.update({prefix + n: f'{folder}.{n}' for n in _adaptable(text)})
    return out


def sgm_layout(model: nn.Module) -> bool:
    """Whether kohya names this model's UNet by its original SGM modules: SDXL (a UNet taking
    the vector y), which sd-scripts trains on its own SGM UNet; SD 1.x/2.x use diffusers' names."""
    unet = getattr(model, 'model', None)
    return getattr(getattr(unet, 'cfg', None), 'NUM_CLASSES', None) == 'sequential'


def own_named_backbone(model: nn.Module) -> nn.Module | None:
    """The backbone when its module names are those of the original single file (FLUX's
    BFL names, SD3's Stability names): kohya and ComfyUI LoRA files use them as they are."""
    from ..registry import BACKBONES
    backbone = getattr(model, 'model', None)
    return backbone if BACKBONES.name_of(type(backbone)) in OWN_NAMED else None


KOHYA_TEXT = {'text_encoder': 'lora_te1_', 'text_encoder_2': 'lora_te2_'}  # SDXL's two encoders


def kohya_names(model: nn.Module, sgm: bool | None = None) -> dict[str, str]:
    """Our module name -> kohya name: SD 1.x/2.x `lora_unet_down_blocks_0_...`,
    `lora_te_text_model_...`; SDXL (or `sgm`) `lora_unet_input_blocks_4_1_...` (SGM names),
    `lora_te1_text_model_...`, `lora_te2_text_model_...`; FLUX / SD3
    `lora_unet_double_blocks_0_img_attn_qkv` (the original names)."""
    backbone = own_named_backbone(model)
    if backbone is not None:
        return {UNET + n: 'lora_unet_' + n.replace('.', '_') for n in _adaptable(backbone)}
    sgm = sgm_layout(model) if sgm is None else sgm
    two = len(text_encoders(model)) > 1 or sgm_layout(model)
    unet = getattr(model, 'model', None)
    out = {UNET + n: 'lora_unet_' + n.replace('.', '_') for n in _adaptable(unet)} if sgm and unet is not None else {}
    for ours, theirs in diffusers_names(model).items():
        component, rest = theirs.split('.', 1)
        if component == 'unet':
            if not sgm:
                out[ours] = 'lora_unet_' + rest.replace('.', '_')
        else:
            out[ours] = (KOHYA_TEXT[component] if two else 'lora_te_') + rest.replace('.', '_')
    return out


def _flat_lora(model: nn.Module, source: LoraState | None) -> dict[str, ModuleLora]:
    flat = flatten(source if source is not None else model_lora_state(model))
    if not flat:
        raise CheckpointError('nothing to export: no adapters')
    return flat


def _name_of(names: dict[str, str], module: str, fmt: str) -> str:
    if module not in names:
        raise CheckpointError(f"'{module}' has no {fmt} name: that format covers the UNet and the "
                              f'text encoder only')
    return names[module]


# ---- kohya / A1111 ------------------------------------------------------------------------

def export_kohya(model: nn.Module, path: str | Path, source: LoraState | None = None) -> Path:
    """Write the model's adapters (or `source`) as a kohya / A1111 LoRA file."""
    flat = _flat_lora(model, source)
    names = kohya_names(model)
    sd: dict[str, torch.Tensor] = {}
    for module, e in flat.items():
        if e.magnitude is not None:
            raise CheckpointError(f"'{module}' is a DoRA adapter: write it in the diffusers/peft format")
        k = _name_of(names, module, 'kohya')
        sd.update({f'{k}.lora_down.weight': e.down, f'{k}.lora_up.weight': e.up,
                   f'{k}.alpha': torch.tensor(e.alpha, dtype=torch.float32)})
    first = next(iter(flat.values()))
    save_state_dict(sd, path, metadata={'ss_network_module': 'networks.lora', 'ss_network_dim': str(first.rank),
                                        'ss_network_alpha': f'{first.alpha:g}',
                                        'scepter_base_hash': record_of(model).base_hash})
    return Path(path)


def export_comfy(model: nn.Module, path: str | Path, source: LoraState | None = None) -> Path:
    """Write a FLUX / SD3 model's adapters in ComfyUI's layout: `diffusion_model.<original
    name>.lora_down.weight` / `.lora_up.weight` / `.alpha`."""
    if own_named_backbone(model) is None:
        raise CheckpointError('the ComfyUI diffusion_model.* layout is written for FLUX / SD3 models; '
                              'write SD LoRAs as kohya')
    flat = _flat_lora(model, source)
    sd: dict[str, torch.Tensor] = {}
    for module, e in flat.items():
        if not module.startswith(UNET):
            raise CheckpointError(f"'{module}': the ComfyUI layout holds the transformer's adapters only")
        k = COMFY + module[len(UNET):]
        sd.update({f'{k}.lora_down.weight': e.down, f'{k}.lora_up.weight': e.up,
                   f'{k}.alpha': torch.tensor(e.alpha, dtype=torch.float32)})
    save_state_dict(sd, path, metadata={'scepter_base_hash': record_of(model).base_hash})
    return Path(path)


def import_kohya(path: str | Path, model: nn.Module) -> LoraState:
    """A kohya / A1111 LoRA file (or ComfyUI's `diffusion_model.*` layout, read the same
    way) -> LoraState in our names (a missing alpha means alpha = rank)."""
    sd = load_state_dict(path)
    sd = {k.replace('.lora_A.weight', '.lora_down.weight').replace('.lora_B.weight', '.lora_up.weight'): v
          for k, v in sd.items()}
    # either UNet layout (SGM / LDM names, as for SDXL and old SD files, or diffusers')
    lookup = {k: o for sgm in (True, False) for o, k in kohya_names(model, sgm).items()}
    backbone = own_named_backbone(model)
    if backbone is not None:
        lookup.update({COMFY + n: UNET + n for n in _adaptable(backbone)})
    flat: dict[str, ModuleLora] = {}
    used: set[str] = set()
    for key, down in sd.items():
        if not key.endswith('.lora_down.weight'):
            continue
        name = key.removesuffix('.lora_down.weight')
        if name not in lookup:
            raise CheckpointError(f"'{path}': LoRA module '{name}' matches no layer of this model")
        up, alpha = sd.get(f'{name}.lora_up.weight'), sd.get(f'{name}.alpha')
        if up is None:
            raise CheckpointError(f"'{path}': '{name}' has lora_down but no lora_up")
        flat[lookup[name]] = ModuleLora(down, up, float(alpha) if alpha is not None else float(down.shape[0]))
        used |= {key, f'{name}.lora_up.weight', f'{name}.alpha'}
    left = sorted(set(sd) - used)
    if left:
        raise CheckpointError(f"'{path}': {len(left)} entries this tool does not read (LoCon/LoHa/DoRA?), "
                              f"e.g. '{left[0]}'")
    state = group(flat, COMPONENTS)
    state.metadata = {'base_hash': _file_metadata(path).get('scepter_base_hash', '')}
    return state


# ---- diffusers / peft ---------------------------------------------------------------------

def _diffusers_config(rel: dict[str, ModuleLora]) -> dict:
    """LoraConfig fields for one diffusers component, names relative to it (the text
    encoder's without `text_model.`, which transformers 5 no longer nests)."""
    rel = {n.removeprefix('text_model.'): e for n, e in rel.items()}
    block = block_for(rel)
    return {'r': block['R'], 'lora_alpha': block['LORA_ALPHA'], 'use_dora': block['USE_DORA'],
            'target_modules': sorted(rel), 'rank_pattern': block['RANK_PATTERN'],
            'alpha_pattern': block['ALPHA_PATTERN']}


def _flow_diffusers_names(backbone: nn.Module) -> dict[str, tuple[Entry, str]]:
    """diffusers name (`transformer.*`) -> (the table entry of our fused / renamed layer, its piece)."""
    return {FLOW + t: (entry, t) for entry in backbone_entries(backbone).values() for t in entry.theirs}


def _to_diffusers(model: nn.Module, flat: dict[str, ModuleLora]) -> dict[str, ModuleLora]:
    """Our adapters -> diffusers module name -> adapter (a fused layer's split into its pieces)."""
    backbone = own_named_backbone(model)
    if backbone is None:
        names = diffusers_names(model)
        return {_name_of(names, m, 'diffusers'): e for m, e in flat.items()}
    table = backbone_entries(backbone)
    out: dict[str, ModuleLora] = {}
    for module, e in flat.items():
        rel = module.removeprefix(UNET)
        if not module.startswith(UNET) or rel not in table:
            raise CheckpointError(f"'{module}' has no diffusers name: the diffusers layout of "
                                  f"{type(backbone).__name__} covers the transformer's layers only")
        out.update({FLOW + n: piece for n, piece in split_lora(table[rel], e).items()})
    return out


def export_peft_diffusers(model: nn.Module, path: str | Path, source: LoraState | None = None) -> Path:
    """Write the model's adapters (or `source`) in the diffusers/peft LoRA format
    (`pipeline.load_lora_weights` reads it; FLUX / SD3: `transformer.*`, fused layers split)."""
    theirs = _to_diffusers(model, _flat_lora(model, source))
    sd: dict[str, torch.Tensor] = {}
    by_component: dict[str, dict[str, ModuleLora]] = {}
    for n, e in theirs.items():
        sd.update({f'{n}.lora_A.weight': e.down, f'{n}.lora_B.weight': e.up})
        if e.magnitude is not None:
            sd[f'{n}.lora_magnitude_vector.weight'] = e.magnitude
        component, rel = n.split('.', 1)
        by_component.setdefault(component + '.', {})[rel] = e
    meta = {}
    for prefix, rel in by_component.items():
        meta.update({prefix + k: v for k, v in _diffusers_config(rel).items()})
    save_state_dict(sd, path, metadata={'format': 'pt', DIFFUSERS_METADATA: json.dumps(meta, sort_keys=True),
                                        'scepter_base_hash': record_of(model).base_hash})
    return Path(path)


def _file_metadata(path: str | Path) -> dict[str, str]:
    if not str(path).endswith('.safetensors'):
        return {}
    header, _ = read_safetensors_header(path)
    return dict(header.get('__metadata__') or {})


def _diffusers_alpha(meta: dict, component: str, rel_name: str, rank: int, alpha_key: torch.Tensor | None) -> float:
    """Alpha of one module: its `.alpha` entry, the metadata's alpha_pattern / lora_alpha,
    or (diffusers' default) the rank."""
    if alpha_key is not None:
        return float(alpha_key)
    for pattern, value in (meta.get(f'{component}alpha_pattern') or {}).items():
        if re.match(rf'(.*\.)?({pattern})$', rel_name):
            return float(value)
    return float(meta.get(f'{component}lora_alpha', rank))


def import_peft_diffusers(path: str | Path, model: nn.Module) -> LoraState:
    """A diffusers/peft LoRA file -> LoraState in our names."""
    sd = load_state_dict(path)
    meta = json.loads(_file_metadata(path).get(DIFFUSERS_METADATA) or '{}')
    backbone = own_named_backbone(model)
    lookup = {d: o for o, d in diffusers_names(model).items()} if backbone is None else _flow_diffusers_names(backbone)
    # Files written against transformers 5 may name the text encoders without `text_model.`.
    lookup.update({d.replace('.text_model.', '.', 1): o for d, o in list(lookup.items())
                   if d.startswith(('text_encoder.text_model.', 'text_encoder_2.text_model.'))})
    flat: dict[str, ModuleLora] = {}
    parts = ('.lora_A.weight', '.lora_B.weight', '.lora_magnitude_vector.weight', '.alpha')
    for key in sd:
        if not key.endswith(parts):
            raise CheckpointError(f"'{path}': unrecognised entry '{key}' (expected {', '.join(parts)})")
        if not key.endswith('.lora_A.weight'):
            continue
        name = key.removesuffix('.lora_A.weight')
        if name not in lookup or f'{name}.lora_B.weight' not in sd:
            raise CheckpointError(f"'{path}': '{name}' matches no layer of this model or lacks lora_B")
        component, rel_name = name.split('.', 1)
        down = sd[key]
        alpha = _diffusers_alpha(meta, component + '.', rel_name.removeprefix('text_model.'),
                                 int(down.shape[0]), sd.get(f'{name}.alpha'))
        flat[lookup[name]] = ModuleLora(down, sd[f'{name}.lora_B.weight'], alpha,
                                        sd.get(f'{name}.lora_magnitude_vector.weight'))
    if backbone is not None:
        flat = _fuse(backbone, flat)
    state = group(flat, COMPONENTS)
    state.metadata = {'base_hash': _file_metadata(path).get('scepter_base_hash', '')}
    return state


def _fuse(backbone: nn.Module, pieces: dict[tuple[Entry, str], ModuleLora]) -> dict[str, ModuleLora]:
    """Adapters on diffusers' pieces -> adapters on our layers."""
    by_layer: dict[Entry, dict[str, ModuleLora]] = {}
    for (entry, piece), e in pieces.items():
        by_layer.setdefault(entry, {})[piece] = e
    out = {}
    for entry, found in by_layer.items():
        layer = backbone.get_submodule(entry.ours)
        shape = getattr(layer, 'base_layer', layer).weight.shape
        out[UNET + entry.ours] = fuse_lora(entry, found, shape)
    return out
