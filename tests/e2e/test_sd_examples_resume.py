"""The SD-sized examples resume exactly through the CLI: N steps straight == K steps +
`--resume latest` + N - K steps, bit for bit, for each recipe in examples/ that names real
weights (SD1.5, SDXL, FLUX.1, SD3.5; full and LoRA). The weights are tiny, written by the
test in the layout the example reads (an SD single file in our names, a diffusers FLUX / SD3
folder); the recipe itself is shrunk with --set to their sizes, 32 px images and short
sampling, with the probe and the checkpoint firing at every step (between the two halves)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest
from models.tiny_sd import randomize

from scepter_core.checkpoint import save_state_dict
from scepter_core.config import Config
from scepter_core.data.shapes import make_prompt, render_shape

from .conftest import ROOT
from .resume_checks import assert_same_checkpoint, resume_in_two, step_dir, train_example
from .sd_fixtures import SIZE_FACTOR, TINY_CLIP, TINY_CODER, TINY_UNET, WEIGHT_PREFIXES
from .test_flux_pipeline import tiny_flux_folder
from .test_sd3_pipeline import tiny_sd3_folder
from .test_sdxl_train import OUT_DIM, TEXT_1, TEXT_2

N, K = 2, 1
M = 'SOLVER.MODEL'
# every example: one image a step, no loader processes, 32 px, 2 sampling steps, a log line, a
# probe and a checkpoint at every step (TRAIN_HOOKS: backward, log, probe, checkpoint, tensorboard)
COMMON = ['SOLVER.TRAIN_DATA.NUM_WORKERS=0', 'SOLVER.TRAIN_DATA.BATCH_SIZE=1', f'{M}.IMAGE_SIZE=[32,32]',
          'SOLVER.SAMPLE_ARGS.IMAGE_SIZE=[32,32]', 'SOLVER.SAMPLE_ARGS.SAMPLE_STEPS=2',
          'SOLVER.TRAIN_HOOKS.1.LOG_INTERVAL=1', 'SOLVER.TRAIN_HOOKS.2.PROB_INTERVAL=1',
          'SOLVER.TRAIN_HOOKS.2.NUM_SAMPLES=1', 'SOLVER.TRAIN_HOOKS.3.INTERVAL=1',
          'SOLVER.TRAIN_HOOKS.4.LOG_INTERVAL=1']
CODER = [f'{M}.FIRST_STAGE_MODEL.{c.upper()}.{k}={json.dumps(v)}' for c in ('Encoder', 'Decoder')
         for k, v in {'NAME': c, **TINY_CODER}.items()]


def leaves(prefix: str, block: dict, top: bool = True) -> list[str]:
    """`--set` lines giving `block`'s values (nested blocks key by key; the top NAME stays the example's)."""
    out = []
    for k, v in block.items():
        if isinstance(v, dict) and 'NAME' in v:
            out += leaves(f'{prefix}.{k}', v, top=False)
        elif k != 'NAME' or not top:
            out.append(f'{prefix}.{k}={json.dumps(v)}')
    return out


SD15 = ([f'{M}.SIZE_FACTOR={SIZE_FACTOR}', 'SOLVER.USE_AMP=false',  # fp16 autocast is emulated, and slow, on CPU
         'SOLVER.TRAIN_DATA.TRANSFORMS.1.SIZE=32', 'SOLVER.TRAIN_DATA.TRANSFORMS.2.SIZE=32',
         f'{M}.COND_STAGE_MODEL.CONFIG={json.dumps(TINY_CLIP)}'] + CODER
        + leaves(f'{M}.DIFFUSION_MODEL', TINY_UNET))
XL_UNET = {'MODEL_CHANNELS': 32, 'NUM_HEAD_CHANNELS': 16, 'NUM_RES_BLOCKS': 1, 'CHANNEL_MULT': [1, 2],
           'ATTENTION_RESOLUTIONS': [2], 'TRANSFORMER_DEPTH': [1, 1],
           'CONTEXT_DIM': TEXT_1['hidden_size'] + TEXT_2['hidden_size'],
           'ADM_IN_CHANNELS': TEXT_2['projection_dim'] + 6 * OUT_DIM}
SDXL = ([f'{M}.SIZE_FACTOR={SIZE_FACTOR}', 'SOLVER.TRAIN_DATA.TRANSFORMS.1.SIZE=32'] + CODER
        + leaves(f'{M}.DIFFUSION_MODEL', XL_UNET)
        + [f'{M}.COND_STAGE_MODEL.EMBEDDERS.{i}.{k}={json.dumps(v)}'
           for i, text in enumerate((TEXT_1, TEXT_2)) for k, v in (('CONFIG', text), ('MAX_LENGTH', 8))]
        + [f'{M}.COND_STAGE_MODEL.EMBEDDERS.{i}.OUT_DIM={OUT_DIM}' for i in (2, 3, 4)])
FLOW = ['SOLVER.TRAIN_DATA.TRANSFORMS.1.SIZE=32', 'SOLVER.TRAIN_DATA.TRANSFORMS.2.SIZE=32']


def single_file(example: str, sets: list[str], root: Path) -> Path:
    """Random weights of the shrunk example's model, in our names, as its PRETRAINED_MODEL file."""
    from scepter_core.registry import MODELS
    cfg = Config.load(ROOT / 'examples' / f'{example}.yaml', sets + [f'{M}.PRETRAINED_MODEL=null'])
    model = randomize(MODELS.build(cfg.SOLVER.MODEL), seed=3, std=0.05)
    path = root / f'{example}.safetensors'
    save_state_dict({k: v for k, v in model.state_dict().items() if k.startswith(WEIGHT_PREFIXES)}, path)
    return path


def flow_sets(folder: Path) -> list[str]:
    """The sizes of a diffusers FLUX / SD3 folder's backbone, VAE and T5, as --set lines."""
    from scepter_core.families import flow_recipe
    model = flow_recipe(folder).SOLVER.MODEL.to_dict()
    sets = [f'{M}.SIZE_FACTOR={model.get("SIZE_FACTOR", 2)}'] + leaves(f'{M}.DIFFUSION_MODEL', model['DIFFUSION_MODEL'])
    sets += leaves(f'{M}.FIRST_STAGE_MODEL', model['FIRST_STAGE_MODEL'])
    if 'T5_SHAPE' in model['COND_STAGE_MODEL']:
        sets.append(f'{M}.COND_STAGE_MODEL.T5_SHAPE={json.dumps(model["COND_STAGE_MODEL"]["T5_SHAPE"])}')
    return sets


# example -> (its weights' environment variable, its data's, its --set lines, writer of the weights)
Writer = Callable[[str, list[str], Path], Path]
EXAMPLES: dict[str, tuple[str, str, list[str], Writer]] = {
    'sd15_512_full': ('SD15_CKPT', 'SD15_DATA', SD15, single_file),
    'sdxl_1024_full': ('SDXL_CKPT', 'SDXL_DATA', SDXL, single_file),
    'sdxl_1024_lora': ('SDXL_CKPT', 'SDXL_DATA', SDXL, single_file),
    'flux1_schnell_lora': ('FLUX_SCHNELL_DIR', 'FLUX_DATA', FLOW, lambda e, s, root: tiny_flux_folder(root, False)),
    'flux1_dev_1024_lora': ('FLUX_DIR', 'FLUX_DATA', FLOW, lambda e, s, root: tiny_flux_folder(root, True)),
    'sd35_medium_lora': ('SD35_DIR', 'SD35_DATA', FLOW, lambda e, s, root: tiny_sd3_folder(root, 'sd35-medium')),
    'sd35_medium_full': ('SD35_DIR', 'SD35_DATA', FLOW, lambda e, s, root: tiny_sd3_folder(root, 'sd35-medium')),
}


def write_image_folder(folder: Path) -> Path:
    """DATA_FOLDER as the examples read it: train.csv (`Target:FILE,Prompt`) and its PNGs."""
    (folder / 'images').mkdir(parents=True)
    rows = []
    for i, (color, shape, bg) in enumerate([('red', 'circle', 'white'), ('blue', 'square', 'black'),
                                            ('green', 'triangle', 'white')]):
        render_shape(color, shape, bg, 40, (20, 20, 12)).save(folder / 'images' / f'{i}.png')
        rows.append(f'images/{i}.png,"{make_prompt(color, shape, bg)}"\n')
    (folder / 'train.csv').write_text('Target:FILE,Prompt\n' + ''.join(rows))
    return folder


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp('data') / 'set')


@pytest.mark.timeout(900)
@pytest.mark.parametrize('example', list(EXAMPLES))
def test_sd_example_resumes_exactly(example: str, data: Path, tmp_path: Path):
    weights_var, data_var, sets, write = EXAMPLES[example]
    weights = write(example, COMMON + sets, tmp_path)
    if weights.is_dir():
        sets = sets + flow_sets(weights)
    sets = COMMON + sets
    env = {weights_var: str(weights), data_var: str(data)}
    train_example(example, tmp_path / 's', N, sets, env, cwd=tmp_path)  # cwd: the recipes' ./cache
    resume_in_two(example, tmp_path / 'r', K, N, sets, env, cwd=tmp_path)
    assert_same_checkpoint(step_dir(tmp_path / 's', N), step_dir(tmp_path / 'r', N), N)
