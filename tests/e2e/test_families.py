"""A diffusers folder of each family, written here by diffusers itself with tiny random weights
(SD1.5 at non-default sizes, SD2-v with zero-terminal SNR, SDXL), gives through
`scepter infer --pretrained-model FOLDER` with no recipe the image that diffusers' own pipeline
makes with the same seed, steps, guidance and a DDIM trailing scheduler."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image

from scepter_core.families import detect_family, folder_recipe

from .conftest import run_cli
from .sd_fixtures import TOKENIZER_FILES

PROMPT = 'a red circle on a white background'
SEED, STEPS = 7, 3
# 3/255: the two pipelines agree to float32 rounding in the latents (~1e-6); the PNG is rounded
# to 8 bits on our side and compared with diffusers' float image here.
TOL = 3


def _random(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random values everywhere: diffusers zero-initialises output layers, which would hide misses.
    Norm scales stay near 1, as in a trained model."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1 + 0.1 * noise if 'norm' in name and name.endswith('weight') else 0.05 * noise)
    return module.eval()


def _tokenizer(pad: str | None = None):
    from transformers import CLIPTokenizer
    return CLIPTokenizer.from_pretrained(str(TOKENIZER_FILES), **({'pad_token': pad} if pad else {}))


def _text(hidden: int, act: str, projection: int | None = None, seed: int = 0, heads: int = 2) -> torch.nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    config = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                            num_attention_heads=heads, max_position_embeddings=77, hidden_act=act,
                            projection_dim=projection or hidden)
    return _random((CLIPTextModelWithProjection if projection else CLIPTextModel)(config), seed)


def _vae(scaling: float, seed: int) -> torch.nn.Module:
    from diffusers import AutoencoderKL
    return _random(AutoencoderKL(block_out_channels=(32, 32), down_block_types=('DownEncoderBlock2D',) * 2,
                                 up_block_types=('UpDecoderBlock2D',) * 2, layers_per_block=1, latent_channels=4,
                                 sample_size=16, scaling_factor=scaling), seed)


def _scheduler(**kw: object):
    from diffusers import DDIMScheduler
    # set_alpha_to_one: the last trailing step lands on the clean image, as our DDIM does
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule='scaled_linear', clip_sample=False,
                         set_alpha_to_one=True, steps_offset=1, timestep_spacing='trailing', **kw)


def _unet(seed: int, **kw: object) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel
    return _random(UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, in_channels=4,
                                        out_channels=4, norm_num_groups=32, **kw), seed)


def sd15_pipeline():
    """SD1.5's structure at sizes of its own: 2 levels, 4 heads, 32-wide context, 2x VAE."""
    from diffusers import StableDiffusionPipeline
    unet = _unet(1, sample_size=12, down_block_types=('CrossAttnDownBlock2D', 'DownBlock2D'),
                 up_block_types=('UpBlock2D', 'CrossAttnUpBlock2D'), cross_attention_dim=32, attention_head_dim=4)
    return StableDiffusionPipeline(vae=_vae(0.3, 2), text_encoder=_text(32, 'quick_gelu', seed=3),
                                   tokenizer=_tokenizer(), unet=unet, scheduler=_scheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def sd2v_pipeline():
    """SD2-768-v's structure: linear projections, fixed head width, upcast attention, OpenCLIP-style
    text encoder (GELU, '!' padding), v-prediction on a zero-terminal-SNR schedule."""
    from diffusers import StableDiffusionPipeline
    unet = _unet(4, sample_size=8, down_block_types=('CrossAttnDownBlock2D', 'CrossAttnDownBlock2D'),
                 up_block_types=('CrossAttnUpBlock2D', 'CrossAttnUpBlock2D'), cross_attention_dim=32,
                 attention_head_dim=(2, 4), use_linear_projection=True, upcast_attention=True)
    return StableDiffusionPipeline(vae=_vae(0.18215, 5), text_encoder=_text(32, 'gelu', seed=6),
                                   tokenizer=_tokenizer('!'), unet=unet,
                                   scheduler=_scheduler(prediction_type='v_prediction', rescale_betas_zero_snr=True),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def sdxl_pipeline():
    """SDXL's structure: no attention at the first level, two transformer blocks at the second,
    two text encoders (CLIP-L-like; bigG-like with projection), size embeddings in add_embedding."""
    from diffusers import StableDiffusionXLPipeline
    unet = _unet(7, sample_size=8, down_block_types=('DownBlock2D', 'CrossAttnDownBlock2D'),
                 up_block_types=('CrossAttnUpBlock2D', 'UpBlock2D'), cross_attention_dim=32 + 24,
                 attention_head_dim=(2, 4), transformer_layers_per_block=(1, 2), use_linear_projection=True,
                 addition_embed_type='text_time', addition_time_embed_dim=8,
                 projection_class_embeddings_input_dim=16 + 6 * 8)
    return StableDiffusionXLPipeline(vae=_vae(0.13025, 8), text_encoder=_text(32, 'quick_gelu', seed=9),
                                     text_encoder_2=_text(24, 'gelu', projection=16, seed=10),
                                     tokenizer=_tokenizer(), tokenizer_2=_tokenizer('!'), unet=unet,
                                     scheduler=_scheduler(), force_zeros_for_empty_prompt=True)


def saved_pipeline(make: Callable[[], Any], root: Path) -> Path:
    """The diffusers folder (`root/diffusers`) of the pipeline `make` builds from seed 0."""
    torch.manual_seed(0)
    make().save_pretrained(str(root / 'diffusers'))
    return root / 'diffusers'


CASES = {'sd15': (sd15_pipeline, 7.5, None), 'sd21v': (sd2v_pipeline, 7.5, (32, 24)),
         'sdxl': (sdxl_pipeline, 5.0, (16, 32))}


def _reference(family: str, tmp_path: Path) -> tuple[Path, np.ndarray, list[str]]:
    """(the folder diffusers wrote, the image its pipeline makes, our matching infer arguments)."""
    make, guidance, size = CASES[family]
    torch.manual_seed(0)
    pipe = make()
    folder = tmp_path / f'{family}-diffusers'
    pipe.save_pretrained(str(folder))
    kwargs = {'height': size[0], 'width': size[1]} if size else {}  # sd15: the folder's default size
    with torch.no_grad():
        ref = pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=guidance, output_type='np',
                   generator=torch.Generator().manual_seed(SEED), **kwargs).images[0] * 255
    args = ['--prompt', PROMPT, '--steps', str(STEPS), '--seed', str(SEED), '--guide-scale', str(guidance),
            '--sampler', 'ddim', *(['--size', str(size[0]), str(size[1])] if size else [])]
    return folder, ref, args


def _infer(weights: Path, out: Path, args: list[str]) -> np.ndarray:
    proc = run_cli('infer', '--pretrained-model', str(weights), '--out', str(out), *args)
    assert 'initialised afresh' not in proc.stderr, proc.stderr  # no layer missing from the weights
    assert 'no recipe; model family' in ' '.join(proc.stdout.split()), proc.stdout  # the detection, said once
    return np.asarray(Image.open(out / '00000.png').convert('RGB')).astype(float)


@pytest.mark.parametrize('family', list(CASES))
def test_diffusers_folder_runs_with_no_recipe_as_diffusers_does(family, tmp_path: Path):
    folder, ref, args = _reference(family, tmp_path)
    assert detect_family(folder) == family
    ours = _infer(folder, tmp_path / 'out', args)
    assert ours.shape == ref.shape
    assert ref.std() > 5  # a picture, not a flat fill
    assert np.abs(ours - ref).max() <= TOL


# What weights do not record (head splits, a latent scale other than the family's), stated for
# the tiny models; the published models have what the single-file reader assumes (SD1.x 8 heads;
# 64-wide heads; CLIP width / 64; 0.18215, SDXL 0.13025).
HEADS = {'sd15': ['SOLVER.MODEL.DIFFUSION_MODEL.NUM_HEADS=4',
                  'SOLVER.MODEL.COND_STAGE_MODEL.CONFIG.num_attention_heads=2',
                  'SOLVER.MODEL.SCALE_FACTOR=0.3'],
         'sdxl': ['SOLVER.MODEL.DIFFUSION_MODEL.NUM_HEAD_CHANNELS=16',
                  'SOLVER.MODEL.COND_STAGE_MODEL.EMBEDDERS.0.CONFIG.num_attention_heads=2',
                  'SOLVER.MODEL.COND_STAGE_MODEL.EMBEDDERS.1.CONFIG.num_attention_heads=2']}


@pytest.mark.parametrize('family', list(HEADS))
def test_single_file_runs_with_no_recipe(family, tmp_path: Path):
    """The same weights as an original single file (`scepter convert --to ldm`: SGM names for SDXL)
    run with no recipe: family from the names, sizes from the shapes; the diffusers image again."""
    folder, ref, args = _reference(family, tmp_path)
    single = tmp_path / f'{family}.safetensors'
    run_cli('convert', str(folder), str(single), '--to', 'ldm')
    assert detect_family(single) == family
    sets = [x for s in HEADS[family] for x in ('--set', s)]
    if '--size' not in args:  # a single file has no sample size of its own: the family's is 512
        args += ['--size', str(ref.shape[0]), str(ref.shape[1])]
    ours = _infer(single, tmp_path / 'out', args + sets)
    assert np.abs(ours - ref).max() <= TOL


def test_folder_recipe_reads_sizes_and_scheduler(tmp_path: Path):
    """What the folder's configs say becomes the recipe: sizes, prediction, schedule, spacing."""
    folder = tmp_path / 'sd2v'
    sd2v_pipeline().save_pretrained(str(folder))
    model = folder_recipe(folder).SOLVER.MODEL
    assert model.PARAMETERIZATION == 'v' and model.ZERO_TERMINAL_SNR is True
    assert model.DIFFUSION_MODEL.NUM_HEAD_CHANNELS == 16 and model.DIFFUSION_MODEL.UPCAST_ATTENTION is True
    assert model.DIFFUSION_MODEL.USE_LINEAR_IN_TRANSFORMER is True and model.SIZE_FACTOR == 2
    assert folder_recipe(folder).SOLVER.SAMPLE_ARGS.DISCRETIZATION == 'trailing'
    assert model.IMAGE_SIZE == [16, 16]  # unet sample_size x VAE factor, as diffusers' default
    shutil.rmtree(folder / 'text_encoder')
    with pytest.raises(Exception, match='text_encoder/config.json'):
        folder_recipe(folder)
