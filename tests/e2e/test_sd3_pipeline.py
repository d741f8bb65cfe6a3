"""A tiny diffusers SD3 / SD3.5 folder (random weights, a T5 tokenizer trained here) gives
through `scepter infer --pretrained-model FOLDER`, with no recipe, the image diffusers'
StableDiffusion3Pipeline makes from the same seed, steps and guidance."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from e2e.conftest import run_cli
from models.tiny_flow import write_clip_dir, write_t5_dir
from PIL import Image

PROMPT = 'a red circle on a white background'


def tiny_sd3_folder(root: Path, variant: str) -> Path:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel, T5TokenizerFast
    t5 = write_t5_dir(root / 't5', d_model=32)
    clip_l, clip_g = write_clip_dir(root / 'l', 8, 5, True), write_clip_dir(root / 'g', 16, 6, True)
    torch.manual_seed(0)
    medium = variant == 'sd35-medium'
    transformer = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=4, num_layers=2,
                                        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                                        caption_projection_dim=16, pooled_projection_dim=24, out_channels=4,
                                        pos_embed_max_size=16, qk_norm='rms_norm' if variant != 'sd3' else None,
                                        dual_attention_layers=(0,) if medium else ())
    vae = AutoencoderKL(block_out_channels=[32, 64], down_block_types=['DownEncoderBlock2D'] * 2,
                        up_block_types=['UpDecoderBlock2D'] * 2, layers_per_block=1, latent_channels=4,
                        use_quant_conv=False, use_post_quant_conv=False, scaling_factor=1.5305, shift_factor=0.0609)
    with torch.no_grad():
        for p in transformer.parameters():
            p.normal_(0, 0.1)
    pipe = StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae, transformer=transformer,
        text_encoder=CLIPTextModelWithProjection.from_pretrained(clip_l), tokenizer=CLIPTokenizer.from_pretrained(clip_l),
        text_encoder_2=CLIPTextModelWithProjection.from_pretrained(clip_g),
        tokenizer_2=CLIPTokenizer.from_pretrained(clip_g), text_encoder_3=T5EncoderModel.from_pretrained(t5),
        tokenizer_3=T5TokenizerFast.from_pretrained(t5))
    folder = root / variant
    pipe.save_pretrained(str(folder))
    return folder


@pytest.mark.parametrize('variant', ['sd3', 'sd35-medium'])
def test_infer_on_an_sd3_folder_equals_the_sd3_pipeline(tmp_path, variant):
    from diffusers import StableDiffusion3Pipeline
    folder = tiny_sd3_folder(tmp_path, variant)
    pipe = StableDiffusion3Pipeline.from_pretrained(str(folder))
    ref = pipe(PROMPT, height=32, width=16, num_inference_steps=4, guidance_scale=5.0,
               generator=torch.Generator().manual_seed(3), output_type='np').images[0]
    run_cli('infer', '--pretrained-model', str(folder), '--prompt', PROMPT, '--out', str(tmp_path / 'out'),
            '--steps', '4', '--guide-scale', '5.0', '--seed', '3', '--size', '32', '16', timeout=600)
    ours = np.asarray(Image.open(tmp_path / 'out' / '00000.png'), dtype=np.float64) / 255
    expected = np.round(ref * 255) / 255
    assert ours.shape == expected.shape == (32, 16, 3)
    assert ours.std() > 0.02
    assert np.abs(ours - expected).max() <= 3 / 255
