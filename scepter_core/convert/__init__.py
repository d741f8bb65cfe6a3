"""Checkpoint formats and table-driven key maps: original LDM single files <-> ours <-> diffusers.

Ours are the names of our LatentDiffusion module: `model.*` (UNet, LDM names),
`first_stage_model.*` (VAE, LDM names), `cond_stage_model.transformer.*` (transformers
CLIPTextModel names) and `model_ema.*` (EMA copy of the UNet)."""
from .configs import (clip_text_config_from_state, diffusers_unet_config, diffusers_vae_config, filled_unet_cfg,
                      filled_vae_cfg, find_model_blocks, unet_cfg_from_diffusers, vae_cfg_from_diffusers)
from .diffusers_fmt import (diffusers_to_ours, ours_to_diffusers, read_diffusers, read_diffusers_configs,
                            save_diffusers)
from .formats import (FORMATS, check_against_config, detect_format, drop_ema, format_of_keys,
                      load_pipeline_state, save_ldm, save_ours, select_ema)
from .keymap import KeyMap
from .ldm import ldm_to_ours, ours_to_ldm
from .unet_map import unet_keymap, unet_pairs
from .vae_map import rename_scepter_vae_keys, vae_keymap, vae_pairs

__all__ = ['FORMATS', 'KeyMap', 'check_against_config', 'clip_text_config_from_state', 'detect_format',
           'diffusers_to_ours', 'diffusers_unet_config', 'diffusers_vae_config', 'drop_ema', 'filled_unet_cfg',
           'filled_vae_cfg', 'find_model_blocks', 'format_of_keys', 'ldm_to_ours', 'load_pipeline_state',
           'ours_to_diffusers', 'ours_to_ldm', 'read_diffusers', 'read_diffusers_configs',
           'rename_scepter_vae_keys', 'save_diffusers', 'save_ldm', 'save_ours', 'select_ema',
           'unet_cfg_from_diffusers', 'unet_keymap', 'unet_pairs', 'vae_cfg_from_diffusers', 'vae_keymap',
           'vae_pairs']
