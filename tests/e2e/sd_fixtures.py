"""Stable-Diffusion-shaped test material that the tests write themselves: a tiny random SD
model (in our names and every file format), a tiny CLIP directory, a local copy of a
ModelScope image-text dataset, and `--set` overrides that shrink Scepter's SD1.5 recipe."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from fixtures import SCEPTER_RECIPES
from models.tiny_sd import randomize  # random values everywhere: zero-initialised layers hide misses

RECIPES = SCEPTER_RECIPES
SD15_RECIPE = RECIPES / 'stable_diffusion_1.5_512.yaml'
TOKENIZER_FILES = Path(__file__).resolve().parents[2] / 'scepter_core' / 'assets' / 'clip_tokenizer'

# Where the recipe's ms:// URIs resolve inside $SCEPTER_MIRROR.
SD_FILE = Path('ms/AI-ModelScope/stable-diffusion-v1-5/v1-5-pruned-emaonly.safetensors')
CLIP_DIR = Path('ms/AI-ModelScope/clip-vit-large-patch14')
DATASET_DIR = Path('ms/damo/style_custom_dataset')

# The vocabulary must be CLIP's (the packaged tokenizer emits ids up to 49407); the rest is tiny.
TINY_CLIP = {'vocab_size': 49408, 'hidden_size': 32, 'intermediate_size': 64, 'num_hidden_layers': 1,
             'num_attention_heads': 2, 'max_position_embeddings': 77, 'hidden_act': 'quick_gelu'}
TINY_UNET = {'MODEL_CHANNELS': 32, 'NUM_HEADS': 2, 'NUM_RES_BLOCKS': 1, 'CHANNEL_MULT': [1, 2],
             'ATTENTION_RESOLUTIONS': [1], 'CONTEXT_DIM': TINY_CLIP['hidden_size']}
TINY_CODER = {'CH': 32, 'CH_MULT': [1, 2, 2], 'NUM_RES_BLOCKS': 1}  # 4x downscale: 32 px -> 8x8 latents
SIZE_FACTOR = 4
WEIGHT_PREFIXES = ('model.', 'first_stage_model.', 'cond_stage_model.')


def tiny_model_cfg() -> dict:
    """A LatentDiffusion block with the SD1.5 recipe's structure at tiny sizes."""
    return {
        'NAME': 'LatentDiffusion', 'SIZE_FACTOR': SIZE_FACTOR, 'IMAGE_SIZE': [32, 32],
        'DIFFUSION_MODEL': {'NAME': 'DiffusionUNet', 'IN_CHANNELS': 4, 'OUT_CHANNELS': 4, **TINY_UNET},
        'FIRST_STAGE_MODEL': {'NAME': 'AutoencoderKL', 'EMBED_DIM': 4,
                              'ENCODER': {'NAME': 'Encoder', 'Z_CHANNELS': 4, **TINY_CODER},
                              'DECODER': {'NAME': 'Decoder', 'Z_CHANNELS': 4, **TINY_CODER}},
        'COND_STAGE_MODEL': {'NAME': 'FrozenCLIPEmbedder', 'CONFIG': dict(TINY_CLIP)},
        'TOKENIZER': {'NAME': 'ClipTokenizer', 'LENGTH': 77},
    }


def tiny_recipe(**sample_args: object) -> dict:
    """A recipe for `scepter infer --cfg`: the tiny model and SD1.5-style sampling."""
    args = {'SAMPLER': 'ddim', 'SAMPLE_STEPS': 3, 'SEED': 2023, 'GUIDE_SCALE': 7.5, 'GUIDE_RESCALE': 0.5,
            'DISCRETIZATION': 'trailing', 'IMAGE_SIZE': [32, 32], **sample_args}
    return {'SOLVER': {'NAME': 'LatentDiffusionSolver', 'MODEL': tiny_model_cfg(), 'SAMPLE_ARGS': args}}


def tiny_sd_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """The weights of a random tiny LatentDiffusion, in our names."""
    from scepter_core.registry import MODELS
    model = randomize(MODELS.build(tiny_model_cfg()), seed, std=0.05)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def write_clip_dir(folder: Path, seed: int = 1, **config: object) -> Path:
    """A transformers CLIPTextModel directory (config + weights) with the CLIP tokenizer files,
    as `clip-vit-large-patch14` is laid out; `config` overrides TINY_CLIP's fields."""
    from transformers import CLIPTextConfig, CLIPTextModel
    model = randomize(CLIPTextModel(CLIPTextConfig(**{**TINY_CLIP, **config})), seed, std=0.05)
    model.save_pretrained(str(folder))
    for f in TOKENIZER_FILES.iterdir():
        shutil.copy(f, folder / f.name)
    return folder


def sdxl_transforms(size: int) -> list[dict]:
    """Training transforms of an SDXL recipe at `size` px: the crop records each sample's
    original size, crop corner and target size, renamed to the conditioner's input keys."""
    sizes = ['original_size_as_tuple', 'crop_coords_top_left', 'target_size_as_tuple']
    return [{'NAME': 'FlexibleResize', 'SIZE': size}, {'NAME': 'FlexibleCropXL'}, {'NAME': 'ImageToTensor'},
            {'NAME': 'Normalize', 'MEAN': [0.5] * 3, 'STD': [0.5] * 3},
            {'NAME': 'Select', 'KEYS': ['img', 'prompt', *[f'img_{k}' for k in sizes]]},
            {'NAME': 'Rename', 'INPUT_KEY': ['img', *[f'img_{k}' for k in sizes]], 'OUTPUT_KEY': ['image', *sizes]}]


def write_ms_dataset(root: Path, subset: str = '3D') -> Path:
    """damo/style_custom_dataset@SUBSET as ModelScope extracts it: `train_short.csv` and
    `test_short.csv` in the subset folder, listing PNGs by their path from the dataset root."""
    from scepter_core.data.shapes import make_prompt, render_shape
    folder = root / subset
    (folder / 'images').mkdir(parents=True, exist_ok=True)
    combos = [('red', 'circle', 'white'), ('blue', 'square', 'black'), ('green', 'triangle', 'white')]
    rows = []
    for i, (color, shape, bg) in enumerate(combos):
        name = f'images/{i:03d}.png'
        render_shape(color, shape, bg, 40, (20, 20, 12)).save(folder / name)
        rows.append((f'{subset}/{name}', subset, make_prompt(color, shape, bg)))
    (folder / 'train_short.csv').write_text(
        'Image:FILE,Style,Prompt\n' + ''.join(f'{p},{s},"{t}"\n' for p, s, t in rows))
    (folder / 'test_short.csv').write_text('Image,Style,Prompt\n' + f'{rows[0][0]},{subset},"{rows[0][2]}"\n')
    return folder


def write_sd15_mirror(mirror: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """Everything Scepter's SD1.5 recipe names, in `mirror`: the original single-file
    checkpoint (LDM names), the CLIP directory and the dataset. Returns the file's weights
    in our names."""
    from scepter_core.convert import save_ldm
    state = tiny_sd_state(seed)
    save_ldm(state, mirror / SD_FILE)
    write_clip_dir(mirror / CLIP_DIR, seed + 1)
    write_ms_dataset(mirror / DATASET_DIR)
    return state


def shrink_sets(work_dir: Path, unet: dict | None = None) -> list[str]:
    """`KEY=VALUE` overrides that turn one of Scepter's SD recipes (SD1.5, SDXL: the same hook
    and transform positions) into a 2-step CPU run of a tiny model (`unet`: its UNet sizes).
    Weights, CLIP and data still come from the recipe's own ms:// locations."""
    m = 'SOLVER.MODEL'
    sets = [f'SOLVER.WORK_DIR={work_dir}', 'SOLVER.MAX_STEPS=2', 'SOLVER.EVAL_INTERVAL=2',
            'SOLVER.USE_AMP=false',  # fp16 autocast is emulated, and slow, on CPU
            f'{m}.SIZE_FACTOR={SIZE_FACTOR}',
            'SOLVER.SAMPLE_ARGS.IMAGE_SIZE=[32,32]', 'SOLVER.SAMPLE_ARGS.SAMPLE_STEPS=2',
            'SOLVER.TRAIN_DATA.NUM_WORKERS=0', 'SOLVER.TRAIN_DATA.BATCH_SIZE=1',
            'SOLVER.TRAIN_DATA.TRANSFORMS.1.SIZE=32', 'SOLVER.TRAIN_DATA.TRANSFORMS.2.SIZE=32',
            'SOLVER.EVAL_DATA.NUM_WORKERS=0', 'SOLVER.EVAL_DATA.OUTPUT_SIZE=[32,32]',
            'SOLVER.TRAIN_HOOKS.1.LOG_INTERVAL=1', 'SOLVER.TRAIN_HOOKS.2.INTERVAL=2',
            'SOLVER.TRAIN_HOOKS.3.PROB_INTERVAL=2', 'SOLVER.EVAL_HOOKS.0.PROB_INTERVAL=2']
    sets += [f'{m}.DIFFUSION_MODEL.{k}={json.dumps(v)}' for k, v in (unet or TINY_UNET).items()]
    sets += [f'{m}.FIRST_STAGE_MODEL.{coder}.{k}={json.dumps(v)}'
             for coder in ('ENCODER', 'DECODER') for k, v in TINY_CODER.items()]
    return sets


def set_args(sets: list[str]) -> list[str]:
    """`KEY=VALUE` overrides as `scepter` arguments."""
    return [x for s in sets for x in ('--set', s)]


def shrink_sd15_recipe(work_dir: Path) -> list[str]:
    """The `--set` arguments that shrink Scepter's SD1.5 recipe (see shrink_sets)."""
    return set_args(shrink_sets(work_dir))


def sd15_shapes() -> dict[str, tuple[int, ...]]:
    """Names (original LDM single-file layout) and shapes of full-size SD1.5 weights, from
    the built-in SD1.5 recipe built on the meta device (no memory, no initialisation)."""
    from scepter_core.config import Config
    from scepter_core.convert import ours_to_ldm
    from scepter_core.inference import SD15_RECIPE
    from scepter_core.registry import MODELS
    with torch.device('meta'):
        model = MODELS.build(Config.load(SD15_RECIPE).SOLVER.MODEL)
    weights = {k: v for k, v in model.state_dict().items() if k.startswith(WEIGHT_PREFIXES)}
    return {k: tuple(v.shape) for k, v in ours_to_ldm(weights).items()}


def write_random_safetensors(path: Path, shapes: dict[str, tuple[int, ...]],
                             fixed: dict[str, torch.Tensor] | None = None, dtype: torch.dtype = torch.float16,
                             seed: int = 0, std: float = 0.02) -> Path:
    """Stream random weights (or the `fixed` tensors) into a safetensors file one tensor at a
    time, so a multi-GB checkpoint never sits in memory. Each tensor is a random slice of one
    pool of normal noise (drawing a billion values one by one takes minutes on a small CPU);
    norm scales are 1, as in a trained model."""
    names = {torch.float16: 'F16', torch.float32: 'F32', torch.bfloat16: 'BF16'}
    item = torch.empty((), dtype=dtype).element_size()
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = torch.Size(shape).numel() * item
        header[name] = {'dtype': names[dtype], 'shape': list(shape), 'data_offsets': [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    blob += b' ' * (-len(blob) % 8)
    g = torch.Generator().manual_seed(seed)
    largest = max(torch.Size(s).numel() for s in shapes.values())
    pool = (torch.randn(2 * largest, generator=g) * std).to(dtype)
    with open(path, 'wb') as f:
        f.write(len(blob).to_bytes(8, 'little') + blob)
        for name, shape in shapes.items():
            n = torch.Size(shape).numel()
            if fixed and name in fixed:
                t = fixed[name].to(dtype).reshape(-1)
            elif name.endswith('.weight') and len(shape) == 1:  # GroupNorm / LayerNorm scales
                t = torch.ones(n, dtype=dtype)
            else:
                start = int(torch.randint(0, len(pool) - n + 1, (1,), generator=g))
                t = pool[start:start + n]
            f.write(t.view(torch.uint8).numpy().tobytes())
    return path
