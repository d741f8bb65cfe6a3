"""`scepter train`, `scepter test` and `scepter infer`."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from scepter_core.sample_args import BY_KEY as SAMPLE_ARGS

from .common import ImportOpt, SetOpt, TrustOpt, console, load_config


def _prepare(cfg_path: str, overrides: Optional[list[str]], imports: Optional[list[str]],
             work_dir: Optional[str], launcher: Optional[str], own_weights: bool = True):
    """The recipe, validated; `own_weights`: it loads the weights it names (no --pretrained-model)."""
    cfg, _ = load_config(cfg_path, overrides, imports)
    return _checked(cfg, cfg_path, work_dir, launcher, own_weights)


def _checked(cfg, where: str, work_dir: Optional[str], launcher: Optional[str], own_weights: bool):
    """`cfg` with the command's work dir and launcher, validated (one line a problem)."""
    from scepter_core.errors import ConfigError
    from scepter_core.validate import missing_weights_producer, validate_recipe
    if work_dir:
        cfg.set('SOLVER.WORK_DIR', work_dir)
    if launcher:
        cfg.set('ENV.LAUNCHER', launcher)
    problems = validate_recipe(cfg)
    if problems:
        raise ConfigError('\n'.join(problems))
    first = missing_weights_producer(cfg, where) if own_weights else None
    if first:
        raise ConfigError(first)
    return cfg


def train(cfg: str = typer.Option(..., '--cfg', '-c', help='Recipe file (YAML or JSON).'),
          overrides: Optional[list[str]] = SetOpt,
          resume: Optional[str] = typer.Option(None, '--resume', help="'latest' or a checkpoint directory."),
          work_dir: Optional[str] = typer.Option(None, '--work-dir', help='Override SOLVER.WORK_DIR.'),
          launcher: Optional[str] = typer.Option(None, '--launcher', help='spawn (default) or torchrun.'),
          imports: Optional[list[str]] = ImportOpt) -> None:
    """Train from a recipe.

    Examples:
      [cyan]scepter train --cfg examples/tiny_shapes.yaml[/cyan]
      [cyan]scepter train --cfg recipe.yaml --set SOLVER.MAX_STEPS=10 --resume latest[/cyan]
      [cyan]torchrun --nproc_per_node 4 -m scepter_cli train --cfg recipe.yaml --launcher torchrun[/cyan]
    """
    import contextlib
    from scepter_core.launch import launch
    from scepter_core.processes import is_first_process
    from scepter_core.solvers.lock import work_dir_lock
    config = _prepare(cfg, overrides, imports, work_dir, launcher)
    if resume:
        config.set('SOLVER.RESUME_FROM', resume)
        if not any(o.split('=', 1)[0].strip() == 'SOLVER.LOAD_MODEL_ONLY' for o in overrides or []):
            config.set('SOLVER.LOAD_MODEL_ONLY', False)  # --resume resumes, unless asked for the weights alone
    out = Path(config.SOLVER.get('WORK_DIR') or './work_dirs/run')
    first = is_first_process()  # torchrun/Lightning workers each run this command: one locks and writes
    with work_dir_lock(out) if first else contextlib.nullcontext():
        if first:
            config.dump(out / 'config.yaml')
        launch(config, mode='train')
    console.print(f'[green]done[/green]: outputs in {out} (checkpoints/, probe/, tensorboard/, loss_curve.png)')


def _detected(pretrained_model: str, overrides: Optional[list[str]], imports: Optional[list[str]],
              work_dir: Optional[str]):
    """The recipe of weights given without --cfg, as `scepter infer` finds it; its IMPORTS do
    not run (a config.yaml beside a checkpoint is anyone's file), --import does."""
    from scepter_core.config import apply_overrides
    from scepter_core.imports import import_user_code
    from scepter_core.no_recipe import weights_recipe
    config, _, note = weights_recipe(pretrained_model)
    console.print(note)
    config.pop('IMPORTS', None)
    apply_overrides(config, overrides or [])
    import_user_code(list(imports or []), label='--import')
    if not work_dir and not config.get_path('SOLVER.WORK_DIR'):
        work_dir = str(Path('work_dirs') / Path(pretrained_model).resolve().name.split('.')[0])
    return config, work_dir


def test(cfg: Optional[str] = typer.Option(None, '--cfg', '-c', help='Recipe file with TEST_DATA; without it, the '
                                                                     "recipe of --pretrained-model's weights."),
         pretrained_model: Optional[str] = typer.Option(None, '--pretrained-model', '--pretrained_model',
                                                        help='Weights: our checkpoint (a LoRA run\'s too), SD single '
                                                             'file or diffusers folder.'),
         prompts: Optional[str] = typer.Option(None, '--prompts', help='Text file, one prompt a line: the test data '
                                                                       '(instead of TEST_DATA).'),
         data: Optional[str] = typer.Option(None, '--data', help='Images with captions (folder, metadata.jsonl, '
                                                                 'parquet, .tar shards, CSV/TXT list): the test '
                                                                 'data, captions as prompts, images as the '
                                                                 "metrics' references."),
         overrides: Optional[list[str]] = SetOpt,
         work_dir: Optional[str] = typer.Option(None, '--work-dir', help='Override SOLVER.WORK_DIR.'),
         imports: Optional[list[str]] = ImportOpt) -> None:
    """Run TEST_DATA (or --prompts / --data) through the model: images, a grid and metrics.json.

    Examples:
      [cyan]scepter test --cfg examples/tiny_shapes.yaml --pretrained-model work_dirs/tiny_shapes/checkpoints/latest[/cyan]
      [cyan]scepter test --pretrained-model sdxl_diffusers_folder --prompts prompts.txt --work-dir sdxl_test[/cyan]
    """
    import json
    from rich.table import Table
    from scepter_core.errors import ConfigError
    from scepter_core.launch import launch
    if not cfg and not pretrained_model:
        raise ConfigError('scepter test: give --cfg RECIPE (with TEST_DATA) or --pretrained-model WEIGHTS (our '
                          'checkpoint, an SD single file or a diffusers folder) with --prompts FILE or --data PATH')
    if cfg:
        config, _ = load_config(cfg, overrides, imports)
    else:
        config, work_dir = _detected(pretrained_model, overrides, imports, work_dir)
    if prompts or data or not config.get_path('SOLVER.TEST_DATA'):
        from scepter_core.no_recipe import given_test_data
        config.set('SOLVER.TEST_DATA', given_test_data(config.SOLVER, prompts, data))
    config = _checked(config, cfg or pretrained_model, work_dir, None, own_weights=not pretrained_model)
    if pretrained_model:  # a LoRA run's checkpoint: the recipe's base model, its adapters on top
        from scepter_core.inference import use_pretrained
        adapters = use_pretrained(config.SOLVER.MODEL, pretrained_model)
        if adapters:
            config.set('SOLVER.TUNER', adapters)
    launch(config, mode='test')
    out = Path(config.SOLVER.WORK_DIR) / 'test'
    metrics = json.loads((out / 'metrics.json').read_text()) if (out / 'metrics.json').is_file() else {}
    if len(metrics) > 1:
        table = Table(title='test metrics')
        table.add_column('metric', style='cyan')
        table.add_column('value', justify='right')
        for k, v in metrics.items():
            table.add_row(k, f'{v:.4f}' if isinstance(v, float) else str(v))
        console.print(table)
    console.print(f'[green]done[/green]: images, grid.png and metrics.json in {out}')


def _sample_opt(key: str, default: Any = None) -> Any:
    """The `scepter infer` option of a sampling argument, spelled as scepter_core.sample_args declares it."""
    arg = SAMPLE_ARGS[key]
    return typer.Option(default, *arg.flags, help=arg.description)


def infer(prompt: list[str] = typer.Option(..., '--prompt', '-p', help='Prompt (repeatable).'),
          n_prompt: Optional[str] = _sample_opt('N_PROMPT'),
          num_samples: int = typer.Option(1, '--num-samples', '--num_samples', min=1, help='Images per prompt.'),
          batch_size: int = typer.Option(8, '--batch-size', '--batch_size', min=1,
                                         help='Images sampled at once (batch k draws its noise from seed + k).'),
          pretrained_model: Optional[str] = typer.Option(None, '--pretrained-model', '--pretrained_model',
                                                         help='Our checkpoint (a LoRA run: its base model and '
                                                              'adapters), an SD single file or a diffusers folder.'),
          cfg: Optional[str] = typer.Option(None, '--cfg', '-c', help='Recipe; found next to the checkpoint when omitted.'),
          sampler: Optional[str] = _sample_opt('SAMPLER'),
          sample_steps: Optional[int] = _sample_opt('SAMPLE_STEPS'),
          seed: Optional[int] = _sample_opt('SEED'),
          guide_scale: Optional[float] = _sample_opt('GUIDE_SCALE'),
          guide_rescale: Optional[float] = _sample_opt('GUIDE_RESCALE'),
          discretization: Optional[str] = _sample_opt('DISCRETIZATION'),
          image_size: Optional[tuple[int, int]] = _sample_opt('IMAGE_SIZE'),
          lora: Optional[list[str]] = typer.Option(None, '--lora', help='LoRA file[:scale] (repeatable).'),
          init_image: Optional[str] = typer.Option(None, '--init-image', '--init_image',
                                                   help=SAMPLE_ARGS['INIT_IMAGE'].description),
          strength: Optional[float] = _sample_opt('STRENGTH'),
          refiner: Optional[str] = typer.Option(None, '--refiner', help='SDXL refiner (a diffusers folder, single '
                                                                        'file or checkpoint) for the last timesteps.'),
          refiner_switch: float = typer.Option(0.8, '--refiner-switch', '--denoising-end',
                                               help='Fraction of the timesteps the model runs before the refiner.'),
          cuda_graph: bool = _sample_opt('CUDA_GRAPH', False),
          out: str = typer.Option('outputs', '--out', '-o', help='Output directory.'),
          overrides: Optional[list[str]] = SetOpt, imports: Optional[list[str]] = ImportOpt,
          trust_imports: bool = TrustOpt) -> None:
    """Generate images from prompts. Builds only the model, never the training data.

    Sampling options left out take the recipe's SOLVER.SAMPLE_ARGS. img2img: --init-image PNG
    --strength 0.6. SDXL base -> refiner: --refiner FOLDER --refiner-switch 0.8. The recipe's
    IMPORTS (user code) are not run unless --trust-imports: a checkpoint folder's config.yaml is
    anyone's file.

    Example: [cyan]scepter infer --pretrained-model work_dirs/tiny_shapes/checkpoints/latest --prompt "a red circle on a white background" --num-samples 4[/cyan]
    """
    given = locals()  # the sampling options are named after their forward_test keywords
    from scepter_core.inference import find_config, generate_images
    # an absent path is generate_images' to report, after the flags are checked
    if pretrained_model and not cfg and Path(pretrained_model).exists() and find_config(pretrained_model) is None:
        from scepter_core.families import recipe_for
        family = recipe_for(pretrained_model).get('FAMILY') or 'sd15'
        console.print(f'{pretrained_model}: no recipe; model family [bold]{family}[/bold] detected, its recipe '
                      f'read off the weights')
    sample = {a.key: given[a.kwarg] for a in SAMPLE_ARGS.values() if a.flags and a.kwarg}
    sample['IMAGE_SIZE'] = list(image_size) if image_size else None
    sample['CUDA_GRAPH'] = cuda_graph or None  # an unset flag leaves the recipe's choice
    sample['INIT_IMAGE'] = init_image
    paths, grid = generate_images(
        prompts=[p for p in prompt for _ in range(num_samples)], pretrained_model=pretrained_model,
        cfg_path=cfg, overrides=overrides or [], imports=imports or [], lora=lora or [], out_dir=out,
        sample_overrides=sample, batch_size=batch_size, trust_imports=trust_imports,
        refiner=refiner, refiner_switch=refiner_switch)
    for p in paths[:16]:
        console.print(f'  {p}')
    more = f' ({len(paths) - 16} more in {out})' if len(paths) > 16 else ''
    console.print(f'[green]done[/green]: {len(paths)} images{more} and the grid {grid}')


def register(app: typer.Typer) -> None:
    app.command()(train)
    app.command()(test)
    app.command()(infer)
