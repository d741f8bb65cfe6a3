"""`scepter convert SRC DST --to ldm|diffusers|scepter|kohya|peft|comfy`: weights between formats."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import TrustOpt, console


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob('*') if p.is_file())
    return path.stat().st_size if path.exists() else 0


def convert(src: str = typer.Argument(..., help='SD single file (.safetensors/.ckpt), diffusers folder or our checkpoint.'),
            dst: str = typer.Argument(..., help='Output: a file for ldm / scepter, a folder for diffusers.'),
            to: str = typer.Option(..., '--to', help='Target format: ldm, diffusers or scepter; for LoRA adapters '
                                   'kohya, peft (diffusers load_lora_weights) or comfy.'),
            use_ema: bool = typer.Option(False, '--use-ema', help='Write the EMA copy of the UNet as the UNet (EMA-only file).'),
            cfg: Optional[str] = typer.Option(None, '--cfg', '-c', help='Recipe whose DIFFUSION_MODEL / FIRST_STAGE_MODEL '
                                              'describe the model (default: SD1.5, or a diffusers source\'s own configs).'),
            merge_lora: Optional[list[str]] = typer.Option(None, '--merge-lora', help='LoRA file[:scale] to fold into the '
                                                           'weights (repeatable; files as for infer --lora).'),
            trust_imports: bool = TrustOpt,
            base: Optional[str] = typer.Option(None, '--base', help='With --to kohya|peft|comfy and a LoRA file as SRC: '
                                               'the base model the file adapts (names are resolved on it).')) -> None:
    """Convert Stable Diffusion weights between the original single file (ldm), a diffusers
    folder and our checkpoint (scepter). The format of SRC is detected. With --to kohya, peft
    or comfy, a LoRA run's adapters (or a LoRA file's, with --base) are written as that LoRA file.

    With --merge-lora (or a LoRA run's checkpoint as SRC, whose recipe names its base model)
    the adapters are merged into the base weights: DST is a plain full checkpoint that loads
    without any LoRA. The model is built from --cfg, the recipe beside SRC, or SD1.5's.

    Examples:
      [cyan]scepter convert v1-5-pruned-emaonly.safetensors sd15-diffusers --to diffusers[/cyan]
      [cyan]scepter convert sd15-diffusers sd15.safetensors --to ldm[/cyan]
      [cyan]scepter convert work_dirs/run/checkpoints/latest/model.safetensors out.ckpt --to ldm --use-ema --cfg recipe.yaml[/cyan]
      [cyan]scepter convert sd15.safetensors sd15_style.safetensors --to ldm --merge-lora style.safetensors:0.8[/cyan]
      [cyan]scepter convert work_dirs/tiny_shapes_lora merged.safetensors --to scepter[/cyan]
      [cyan]scepter convert work_dirs/sdxl_lora sdxl_lora_kohya.safetensors --to kohya[/cyan]
      [cyan]scepter convert style_kohya.safetensors style_peft.safetensors --to peft --base sdxl-diffusers[/cyan]
    """
    from rich.table import Table

    from scepter_core.convert.run import convert_weights
    with console.status(f'converting {src} to {to} ...'):
        done = convert_weights(src, dst, to, use_ema=use_ema, cfg_path=cfg, merge_lora=merge_lora or [], base=base,
                               trust_imports=trust_imports)
    console.print(f'read [bold]{done.source_format}[/bold] {src}: {done.tensors} tensors'
                  + (f" (LoRA merged: {', '.join(done.merged)})" if done.merged else ''))
    table = Table(title=f'wrote {to}', show_header=True)
    table.add_column('file')
    table.add_column('MB', justify='right')
    for path in done.written:
        table.add_row(str(path), f'{_size(path) / 2 ** 20:.1f}')
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command('convert')(convert)
