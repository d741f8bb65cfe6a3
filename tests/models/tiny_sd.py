"""Tiny Stable-Diffusion-shaped models with random weights, shared by the model, checkpoint
and converter tests (`from tiny_sd import ...` here, `from models.tiny_sd import ...` from tests/)."""
from __future__ import annotations

import copy

import torch

TINY_UNET = {'NAME': 'DiffusionUNet', 'MODEL_CHANNELS': 32, 'CHANNEL_MULT': [1, 2], 'ATTENTION_RESOLUTIONS': [1],
             'NUM_HEADS': 2, 'CONTEXT_DIM': 32, 'NUM_RES_BLOCKS': 1}
_CODER = {'CH': 32, 'CH_MULT': [1, 2], 'NUM_RES_BLOCKS': 1}
TINY_VAE = {'NAME': 'AutoencoderKL', 'BATCH_SIZE': 2, 'ENCODER': {'NAME': 'Encoder', **_CODER},
            'DECODER': {'NAME': 'Decoder', **_CODER}}
# One head of width 32: what the converter infers (hidden // 64, at least 1) from weights alone.
TINY_CLIP = {'vocab_size': 100, 'hidden_size': 32, 'intermediate_size': 64, 'num_hidden_layers': 2,
             'num_attention_heads': 1, 'max_position_embeddings': 16, 'hidden_act': 'quick_gelu'}


def cfg(base: dict, **overrides) -> dict:
    out = copy.deepcopy(base)
    out.update(overrides)
    return out


def randomize(module: torch.nn.Module, seed: int = 0, std: float = 0.1) -> torch.nn.Module:
    """Random values everywhere (zero-initialised output layers would hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def build(registry: str, block: dict, seed: int = 0) -> torch.nn.Module:
    from scepter_core.registry import REGISTRIES
    return randomize(REGISTRIES[registry].build(copy.deepcopy(block)), seed).eval()


def tiny_clip(seed: int = 2) -> torch.nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel
    return randomize(CLIPTextModel(CLIPTextConfig(**TINY_CLIP)), seed).eval()


def tiny_pipeline_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A whole tiny SD model in our names: UNet, VAE, CLIP text encoder, a distinct EMA copy
    of the UNet, EMA counters and schedule buffers (as original LDM files carry)."""
    unet = build('BACKBONES', TINY_UNET, seed).state_dict()
    sd = {f'model.{k}': v for k, v in unet.items()}
    sd.update({f'first_stage_model.{k}': v for k, v in build('MODELS', TINY_VAE, seed + 1).state_dict().items()})
    # our names keep CLIP's `text_model.` level, which transformers 5 no longer has itself
    sd.update({f'cond_stage_model.transformer.text_model.{k.removeprefix("text_model.")}': v
               for k, v in tiny_clip(seed + 2).state_dict().items()})
    g = torch.Generator().manual_seed(seed + 3)
    sd.update({f'model_ema.{k}': v + torch.randn(v.shape, generator=g) * 0.01 for k, v in unet.items()})
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    sd.update({'model_ema.decay': torch.tensor(0.9999), 'model_ema.num_updates': torch.tensor(7, dtype=torch.int32),
               'betas': betas.float(), 'alphas_cumprod': torch.cumprod(1 - betas, 0).float()})
    return sd


def shapes(sd: dict) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in sd.items()}


def assert_same_layout(registry: str, block: dict, diffusers_class: str, diffusers_config: dict, keymap,
                       num_params: int) -> dict[str, torch.Tensor]:
    """Build ours and diffusers' model on meta: ours has `num_params` parameters and every key
    maps onto diffusers' with its shape, and back, nothing left over. Returns our state dict."""
    import diffusers

    from scepter_core.registry import REGISTRIES
    with torch.device('meta'):
        ours = REGISTRIES[registry].build(copy.deepcopy(block))
        theirs = getattr(diffusers, diffusers_class).from_config(diffusers_config)
    assert sum(p.numel() for p in ours.parameters()) == num_params
    ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
    assert shapes(keymap.to_theirs(ours_sd)) == shapes(theirs_sd)
    assert shapes(keymap.to_ours(theirs_sd)) == shapes(ours_sd)
    return ours_sd
