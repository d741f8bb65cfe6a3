"""Weights that come without a recipe (`scepter infer` / `scepter test --pretrained-model PATH`):
the recipe saved beside our checkpoint, else the family's, read off the weights; and the test
data that `scepter test` then runs: a prompt file, or images with captions."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import Config
from .errors import ConfigError
from .families import SD15_RECIPE, recipe_for


def find_config(pretrained: str | None) -> Path | None:
    """The recipe saved next to a checkpoint (the step dir a work dir or `latest` names, the
    step dir, checkpoints dir or work dir), else None (no weights: SD1.5's)."""
    if pretrained:
        from .checkpoint import find_step_dir
        p = Path(pretrained)
        step = find_step_dir(p)
        here = p if p.is_dir() else p.parent
        for d in [*([step] if step is not None else []), *[here, *here.parents][:4]]:
            if (d / 'config.yaml').is_file():
                return d / 'config.yaml'
        return None
    return SD15_RECIPE


def weights_recipe(pretrained: str) -> tuple[Config, Path, str]:
    """(recipe, where it came from, a line saying how it was found). Beside a checkpoint: its
    config.yaml; otherwise the family is detected from a diffusers folder's configs or a single
    file's keys and shapes, and `FAMILY` is taken out of the recipe into the line."""
    found = find_config(pretrained)
    if found is not None:
        return Config.load(found), found, f'{pretrained}: recipe {found}'
    path = Path(pretrained)
    cfg = recipe_for(pretrained)
    family = cfg.pop('FAMILY', None) or 'sd15'
    return cfg, path, (f"{pretrained}: no recipe given or beside it; family {family} detected, recipe read off "
                       f"its {'configs' if path.is_dir() else 'keys and shapes'}")


def given_test_data(solver: Config, prompts: str | None = None, data: str | None = None) -> dict[str, Any]:
    """TEST_DATA for `scepter test`: `prompts`, a text file of one prompt a line, or `data`, a
    DATA_DIR path (image folder with captions, metadata.jsonl, parquet, shards, CSV/TXT list)
    whose captions are the prompts and whose images, at the sampling size, are the metrics'
    references. Sizes come from the recipe's SAMPLE_ARGS.IMAGE_SIZE (else the model's)."""
    if prompts and data:
        raise ConfigError('scepter test: give --prompts FILE or --data PATH, not both (each is the whole test data)')
    if not prompts and not data:
        raise ConfigError("'SOLVER.TEST_DATA': the recipe has none; give --prompts FILE or --data PATH")
    size = (solver.get('SAMPLE_ARGS') or {}).get('IMAGE_SIZE') or (solver.get('MODEL') or {}).get('IMAGE_SIZE') or 512
    size = [size, size] if isinstance(size, int) else [int(v) for v in size]
    if prompts:
        if not Path(prompts).is_file():
            raise ConfigError(f"--prompts: no such file '{prompts}' (a text file, one prompt a line)")
        return {'NAME': 'Text2ImageDataset', 'MODE': 'test', 'PROMPT_FILE': str(prompts), 'IMAGE_SIZE': size,
                'BATCH_SIZE': 4}
    # One pass in file order (the bucket sampler never ends), one image a batch: images of other
    # shapes land in other buckets, which one batch cannot mix.
    return {'NAME': 'ImageFolderDataset', 'MODE': 'test', 'DATA_DIR': str(data), 'RESOLUTION': max(size),
            'ALIGNMENT': 8, 'UPSCALE': True, 'BATCH_SIZE': 1, 'SAMPLER': {'NAME': 'SequentialSampler'}}
