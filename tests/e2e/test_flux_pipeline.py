"""A tiny diffusers FLUX folder (random weights, a T5 tokenizer trained here) gives through
`scepter infer --pretrained-model FOLDER`, with no recipe, the image diffusers' FluxPipeline
makes from the same seed, steps and guidance."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from e2e.conftest import run_cli
from models.tiny_flow import write_clip_dir, write_t5_dir
from PIL import Image

PROMPT = 'a red circle on a white background'


def tiny_flux_folder(root: Path, guidance: bool) -> Path:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast
    t5, clip = write_t5_dir(root / 't5'), write_clip_dir(root / 'clip')
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=16,
                                         pooled_projection_dim=24, guidance_embeds=guidance, axes_dims_rope=(4, 6, 6))
    vae = AutoencoderKL(block_out_channels=[32, 64], down_block_types=['DownEncoderBlock2D'] * 2,
                        up_block_types=['UpDecoderBlock2D'] * 2, layers_per_block=1, latent_channels=4,
                        use_quant_conv=False, use_post_quant_conv=False, scaling_factor=0.3611, shift_factor=0.1159)
    with torch.no_grad():  # random everywhere (diffusers zero-initialises the output layers)
        for p in list(transformer.parameters()):
            p.normal_(0, 0.1)
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True),
                        vae=vae, transformer=transformer, text_encoder=CLIPTextModel.from_pretrained(clip),
                        tokenizer=CLIPTokenizer.from_pretrained(clip), text_encoder_2=T5EncoderModel.from_pretrained(t5),
                        tokenizer_2=T5TokenizerFast.from_pretrained(t5))
    folder = root / ('flux-dev' if guidance else 'flux-schnell')
    pipe.save_pretrained(str(folder))
    return folder


@pytest.mark.parametrize('guidance', [True, False], ids=['dev', 'schnell'])
def test_infer_on_a_flux_folder_equals_the_flux_pipeline(tmp_path, guidance):
    from diffusers import FluxPipeline
    folder = tiny_flux_folder(tmp_path, guidance)
    steps, scale = 4, 3.5 if guidance else 0.0
    pipe = FluxPipeline.from_pretrained(str(folder))
    ref = pipe(PROMPT, height=32, width=48, num_inference_steps=steps, guidance_scale=scale,
               max_sequence_length=512 if guidance else 256, generator=torch.Generator().manual_seed(7),
               output_type='np').images[0]
    run_cli('infer', '--pretrained-model', str(folder), '--prompt', PROMPT, '--out', str(tmp_path / 'out'),
            '--steps', str(steps), '--guide-scale', str(scale), '--seed', '7', '--size', '32', '48', timeout=600)
    ours = np.asarray(Image.open(tmp_path / 'out' / '00000.png'), dtype=np.float64) / 255
    expected = np.round(ref * 255) / 255  # the PNG holds 8-bit values
    assert ours.shape == expected.shape == (32, 48, 3)
    assert ours.std() > 0.02  # a real picture, not a flat one
    assert np.abs(ours - expected).max() <= 3 / 255
