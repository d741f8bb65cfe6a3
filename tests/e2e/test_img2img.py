"""img2img and the SDXL refiner through `scepter infer`, against diffusers' img2img pipelines on
the same tiny random weights (the folders of test_families.py, test_flux_pipeline.py and
test_sd3_pipeline.py), same seed, steps and guidance: StableDiffusionImg2ImgPipeline (SD1.5,
SD2-v), StableDiffusionXLImg2ImgPipeline (base, and a refiner: bigG alone, aesthetic score),
base -> refiner (denoising_end / denoising_start), FluxImg2ImgPipeline and
StableDiffusion3Img2ImgPipeline."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scepter_core.families import detect_family
from scepter_core.utils.images import parse_parameters, read_parameters

from .conftest import run_cli
from .test_families import _random, _scheduler, _text, _tokenizer, sd2v_pipeline, sd15_pipeline, sdxl_pipeline

PROMPT = 'a red circle on a white background'
SEED, STEPS, STRENGTH = 7, 4, 0.5  # 4 trailing steps of 1000: diffusers' strided DDIM steps are the grid's
# 1/255: both sides agree to float32 rounding (~1e-6) before our PNG is rounded to 8 bits.
TOL = 1


def _init_png(path: Path, h: int, w: int) -> Path:
    """A picture to start from: a disc on a gradient (not a flat fill, so the encoder sees structure)."""
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx / w, yy / h, 0.5 + 0 * xx], -1) * 255
    rgb[(yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 3) ** 2] = (230, 40, 30)
    Image.fromarray(rgb.astype(np.uint8)).save(path)
    return path


def _refiner(base) -> object:
    """An SDXL refiner's structure at tiny sizes: the base's bigG-like encoder alone (text_encoder_2),
    the UNet's add_embedding over [pooled | original size, crop, aesthetic score], the base's VAE."""
    from diffusers import StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel
    unet = _random(UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, in_channels=4, out_channels=4, norm_num_groups=32,
        sample_size=8, down_block_types=('DownBlock2D', 'CrossAttnDownBlock2D'),
        up_block_types=('CrossAttnUpBlock2D', 'UpBlock2D'), cross_attention_dim=24, attention_head_dim=(2, 4),
        use_linear_projection=True, addition_embed_type='text_time', addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=16 + 5 * 8), 11)
    return StableDiffusionXLImg2ImgPipeline(vae=base.vae, text_encoder=None, text_encoder_2=_text(24, 'gelu', 16, 12),
                                            tokenizer=None, tokenizer_2=_tokenizer('!'), unet=unet,
                                            scheduler=_scheduler(), requires_aesthetics_score=True,
                                            force_zeros_for_empty_prompt=False)


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(SEED)


def _ours(weights: Path, out: Path, guidance: float, *args: str, log=None) -> tuple[np.ndarray, dict]:
    """`scepter infer` as a subprocess, or (with `log`, pytest's caplog) the same command line
    through the CLI's main() in this process: the subprocess's imports cost ~45 s on a loaded
    2-core machine."""
    argv = ['infer', '--pretrained-model', str(weights), '--out', str(out), '--prompt', PROMPT, '--steps', str(STEPS),
            '--seed', str(SEED), '--guide-scale', str(guidance), '--sampler', 'ddim', *args]
    if log is None:
        stderr = run_cli(*argv).stderr
    else:
        from scepter_cli.main import main
        assert main(argv) == 0
        stderr = log.text
    assert 'initialised afresh' not in stderr, stderr  # no layer missing from the weights
    png = out / '00000.png'
    return np.asarray(Image.open(png).convert('RGB')).astype(float), parse_parameters(read_parameters(png))[2]


@pytest.mark.parametrize('family', ['sd15', 'sd21v', 'sdxl'])
def test_img2img_as_diffusers(family: str, tmp_path: Path, caplog):
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline
    torch.manual_seed(0)
    base = {'sd15': sd15_pipeline, 'sd21v': sd2v_pipeline, 'sdxl': sdxl_pipeline}[family]()
    folder = tmp_path / family
    base.save_pretrained(str(folder))
    init = _init_png(tmp_path / 'init.png', 24, 32)
    sd = not family.startswith('sdxl')
    cls = StableDiffusionImg2ImgPipeline if sd else StableDiffusionXLImg2ImgPipeline
    extra = {'requires_safety_checker': False} if sd else {'force_zeros_for_empty_prompt': True}
    pipe = cls(**base.components, **extra)
    guidance = 5.0 if family == 'sdxl' else 7.5
    with torch.no_grad():
        ref = pipe(PROMPT, image=Image.open(init), strength=STRENGTH, num_inference_steps=STEPS,
                   guidance_scale=guidance, generator=_generator(), output_type='np').images[0] * 255
    ours, params = _ours(folder, tmp_path / 'out', guidance, '--init-image', str(init), '--strength', str(STRENGTH),
                         log=None if family == 'sd15' else caplog)
    assert ours.shape == ref.shape == (24, 32, 3)  # the init image's size
    assert ref.std() > 5
    assert np.abs(ours - ref).max() <= TOL
    assert params['Init image'] == str(init) and float(params['Denoising strength']) == STRENGTH


def test_refiner_img2img_and_base_to_refiner(tmp_path: Path, caplog):
    """A refiner folder (and the same weights as an SGM single file) runs with no recipe as
    diffusers' refiner pipeline; base -> refiner through `--refiner` equals diffusers'
    denoising_end / denoising_start hand-over."""
    torch.manual_seed(0)
    base = sdxl_pipeline()
    refiner = _refiner(base)
    base_dir, refiner_dir = tmp_path / 'sdxl', tmp_path / 'refiner'
    base.save_pretrained(str(base_dir))
    refiner.save_pretrained(str(refiner_dir))
    assert detect_family(refiner_dir) == 'sdxl-refiner'
    from scepter_core.models.info import path_info
    found = path_info(str(refiner_dir), 'float16', 4)  # `scepter model info FOLDER` (family: published sizes only)
    assert sorted(found['components']) == ['text_encoder_2', 'unet', 'vae']
    assert found['components']['unet']['parameters'] == sum(p.numel() for p in refiner.unet.parameters())
    init = _init_png(tmp_path / 'init.png', 16, 24)
    with torch.no_grad():
        ref = refiner(PROMPT, image=Image.open(init), strength=STRENGTH, num_inference_steps=STEPS,
                      guidance_scale=5.0, generator=_generator(), output_type='np').images[0] * 255
        latents = base(PROMPT, num_inference_steps=STEPS, guidance_scale=5.0, height=16, width=24,
                       denoising_end=0.6, generator=_generator(), output_type='latent').images
        chain = refiner(PROMPT, image=latents, num_inference_steps=STEPS, guidance_scale=5.0, denoising_start=0.6,
                        generator=_generator(), output_type='np').images[0] * 255
    ours, _ = _ours(refiner_dir, tmp_path / 'a', 5.0, '--init-image', str(init), '--strength', str(STRENGTH),
                    log=caplog)
    assert ref.std() > 5 and np.abs(ours - ref).max() <= TOL

    ours, params = _ours(base_dir, tmp_path / 'b', 5.0, '--size', '16', '24', '--refiner', str(refiner_dir),
                         '--refiner-switch', '0.6')
    assert chain.std() > 5 and np.abs(ours - chain).max() <= TOL
    assert params['Refiner'] == str(refiner_dir) and float(params['Refiner switch at']) == 0.6

    from scepter_cli.main import main
    single = tmp_path / 'refiner.safetensors'
    assert main(['convert', str(refiner_dir), str(single), '--to', 'ldm']) == 0
    assert detect_family(single) == 'sdxl-refiner'
    heads = ['SOLVER.MODEL.DIFFUSION_MODEL.NUM_HEAD_CHANNELS=16',
             'SOLVER.MODEL.COND_STAGE_MODEL.EMBEDDERS.0.CONFIG.num_attention_heads=2']
    ours, _ = _ours(single, tmp_path / 'c', 5.0, '--init-image', str(init), '--strength', str(STRENGTH),
                    *[x for s in heads for x in ('--set', s)], log=caplog)
    assert np.abs(ours - ref).max() <= TOL


@pytest.mark.parametrize('family', ['flux', 'sd3'])
def test_flow_img2img_as_diffusers(family: str, tmp_path: Path, caplog):
    """FLUX and SD3 (flow schedules): FluxImg2ImgPipeline's / StableDiffusion3Img2ImgPipeline's
    start (they skip int(steps - steps * strength) of the shifted sigmas) and scale_noise."""
    from diffusers import FluxImg2ImgPipeline, StableDiffusion3Img2ImgPipeline

    from scepter_cli.main import main
    if family == 'flux':
        from .test_flux_pipeline import tiny_flux_folder
        folder, cls, guidance, extra = tiny_flux_folder(tmp_path, False), FluxImg2ImgPipeline, 0.0, \
            {'max_sequence_length': 256}
    else:
        from .test_sd3_pipeline import tiny_sd3_folder
        folder, cls, guidance, extra = tiny_sd3_folder(tmp_path, 'sd3'), StableDiffusion3Img2ImgPipeline, 5.0, {}
    init = _init_png(tmp_path / 'init.png', 32, 48)
    strength = 0.6  # 4 * 0.6 = 2.4: 3 steps by the flow pipelines' rule, 2 by SD's
    with torch.no_grad():
        ref = cls.from_pretrained(str(folder))(
            PROMPT, image=Image.open(init), height=32, width=48, strength=strength, num_inference_steps=STEPS,
            guidance_scale=guidance, generator=_generator(), output_type='np', **extra).images[0] * 255
    assert main(['infer', '--pretrained-model', str(folder), '--out', str(tmp_path / 'out'), '--prompt', PROMPT,
                 '--steps', str(STEPS), '--seed', str(SEED), '--guide-scale', str(guidance), '--init-image', str(init),
                 '--strength', str(strength)]) == 0
    assert 'initialised afresh' not in caplog.text, caplog.text
    ours = np.asarray(Image.open(tmp_path / 'out' / '00000.png').convert('RGB')).astype(float)
    assert ours.shape == ref.shape == (32, 48, 3) and ref.std() > 5
    assert np.abs(ours - ref).max() <= TOL


@pytest.mark.parametrize('flags,message', [
    (['--init-image', 'NOT_AN_IMAGE', '--strength', '0.5'], "--init-image '{path}': not a readable image"),
    (['--init-image', 'INIT', '--strength', '1.5'], '--strength: expected a value in (0, 1], got 1.5'),
    (['--refiner', 'x', '--refiner-switch', '1.0'], '--refiner-switch: expected a value in (0, 1), got 1.0')])
def test_bad_img2img_flags_fail_in_one_line_before_loading(tmp_path: Path, capsys, flags, message):
    from scepter_cli.main import main
    bad = tmp_path / 'notes.png'
    bad.write_text('not a picture')
    init = _init_png(tmp_path / 'init.png', 16, 16)
    flags = [{'NOT_AN_IMAGE': str(bad), 'INIT': str(init)}.get(f, f) for f in flags]
    # no such model: the flags are checked first, so this is never reached
    assert main(['infer', '--pretrained-model', str(tmp_path / 'absent'), '--prompt', 'x', *flags]) != 0
    err = capsys.readouterr().err
    assert message.format(path=bad) in ' '.join(err.split()) and 'Traceback' not in err, err
