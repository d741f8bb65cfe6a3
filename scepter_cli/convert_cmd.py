"""`scepter convert SRC DST --to ldm|diffusers|scepter`: Stable Diffusion weights between formats."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from .common import console, load_config


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob('*') if p.is_file())
    return path.stat().st_size if path.exists() else 0


def convert(src: str = typer.Argument(..., help='SD single file (.safetensors/.ckpt), diffusers folder or our checkpoint.'),
            dst: str = typer.Argument(..., help='Output: a file for ldm / scepter, a folder for diffusers.'),
            to: str = typer.Option(..., '--to', help='Target format: ldm, diffusers or scepter.'),
            use_ema: bool = typer.Option(False, '--use-ema', help='Write the EMA copy of the UNet as the UNet (EMA-only file).'),
            cfg: Optional[str] = typer.Option(None, '--cfg', '-c', help='Recipe whose DIFFUSION_MODEL / FIRST_STAGE_MODEL '
                                              'describe the model (default: SD1.5, or a diffusers source\'s own configs).'),
            merge_lora: Optional[list[str]] = typer.Option(None, '--merge-lora', help='LoRA file[:scale] to fold into the '
                                                           'weights (repeatable; files as for infer --lora).')) -> None:
    """Convert Stable Diffusion weights between the original single file (ldm), a diffusers
    folder and our checkpoint (scepter). The format of SRC is detected.

    With --merge-lora (or a LoRA run's checkpoint as SRC, whose recipe names its base model)
    the adapters are merged into the base weights: DST is a plain full checkpoint that loads
    without any LoRA. The model is built from --cfg, the recipe beside SRC, or SD1.5's.

    Examples:
      [cyan]scepter convert v1-5-pruned-emaonly.safetensors sd15-diffusers --to diffusers[/cyan]
      [cyan]scepter convert sd15-diffusers sd15.safetensors --to ldm[/cyan]
      [cyan]scepter convert work_dirs/run/checkpoints/latest/model.safetensors out.ckpt --to ldm --use-ema --cfg recipe.yaml[/cyan]
      [cyan]scepter convert sd15.safetensors sd15_style.safetensors --to ldm --merge-lora style.safetensors:0.8[/cyan]
      [cyan]scepter convert work_dirs/tiny_shapes_lora merged.safetensors --to scepter[/cyan]
    """
    from rich.table import Table

    from scepter_core.convert import (FORMATS, check_against_config, detect_format, drop_ema, find_model_blocks,
                                      load_pipeline_state, read_diffusers_configs, save_diffusers, save_ldm,
                                      save_ours, unet_cfg_from_diffusers, vae_cfg_from_diffusers)
    from scepter_core.errors import ConfigError
    if to not in FORMATS:
        raise ConfigError(f"--to: '{to}' is not one of {', '.join(FORMATS)}")
    unet_cfg = vae_cfg = text_cfg = None
    if cfg:
        unet_cfg, vae_cfg = find_model_blocks(load_config(cfg, []))
        if unet_cfg is None and vae_cfg is None:
            raise ConfigError(f"--cfg '{cfg}': no DIFFUSION_MODEL or FIRST_STAGE_MODEL block (looked under "
                              f"SOLVER.MODEL, MODEL and the top level)")
    from scepter_core.inference import adapter_checkpoint, merged_weights
    merge = list(merge_lora or [])
    lora_run = adapter_checkpoint(src) is not None
    with console.status(f'reading {src} ...'):
        fmt = 'LoRA run' if lora_run else detect_format(src)
        if fmt == 'diffusers':
            configs = read_diffusers_configs(src)
            unet_cfg = unet_cfg or (unet_cfg_from_diffusers(configs['unet']) if configs.get('unet') else None)
            vae_cfg = vae_cfg or (vae_cfg_from_diffusers(configs['vae']) if configs.get('vae') else None)
            text_cfg = configs.get('text_encoder') or None
        if merge or lora_run:  # build the model, add the adapters, fold them in
            blocks = None if cfg or fmt != 'diffusers' else \
                {k: v for k, v in (('DIFFUSION_MODEL', unet_cfg), ('FIRST_STAGE_MODEL', vae_cfg)) if v}
            sd, recipe = merged_weights(src, merge, cfg_path=cfg, blocks=blocks, use_ema=use_ema)
            if unet_cfg is None and vae_cfg is None:
                unet_cfg, vae_cfg = find_model_blocks(recipe)
        else:
            sd = load_pipeline_state(src, use_ema=use_ema, unet_cfg=unet_cfg)
            if use_ema:
                sd = drop_ema(sd)
    console.print(f'read [bold]{fmt}[/bold] {src}: {len(sd)} tensors'
                  + (f" (LoRA merged: {', '.join(merge) or 'its adapters'})" if merge or lora_run else ''))
    out = Path(dst)
    with console.status(f'writing {to} to {dst} ...'):
        if to == 'diffusers':
            check_against_config(sd, unet_cfg, vae_cfg)
            tokenizer = Path(src) / 'tokenizer' if fmt == 'diffusers' else None
            written = save_diffusers(sd, out, unet_cfg, vae_cfg, text_cfg,
                                     tokenizer_dir=tokenizer if tokenizer and tokenizer.is_dir() else None)
        else:
            meta = {'source': os.path.basename(src.rstrip('/'))}
            if merge:
                meta['merged_lora'] = ' '.join(merge)
            if to == 'ldm':  # an SD2 file's text encoder goes back to OpenCLIP's names
                from scepter_core.families import detect_family
                save_ldm(sd, out, meta, openclip=fmt == 'ldm' and detect_family(src) == 'sd21')
            else:
                save_ours(sd, out, meta)
            written = [out]
    table = Table(title=f'wrote {to}', show_header=True)
    table.add_column('file')
    table.add_column('MB', justify='right')
    for path in written:
        table.add_row(str(path), f'{_size(Path(path)) / 2 ** 20:.1f}')
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command('convert')(convert)
