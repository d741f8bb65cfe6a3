"""FLUX LoRA in diffusers/peft's layout, both ways. A LoRA trained here (tiny FLUX folder, the
`scepter train` CLI, fused qkv / linear1 adapted) is exported with the fused layers split into
to_q / to_k / to_v [/ proj_mlp]; FluxPipeline.load_lora_weights on it draws the image `scepter
infer` draws with our adapters. The reverse: a LoRA made on diffusers' FluxTransformer2DModel
(an A of its own per piece, some pieces not adapted) loads through `scepter infer --lora` and
draws the pipeline's image. Within 3/255 per pixel."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml
from e2e.conftest import run_cli, tiny_recipe
from e2e.test_flux_pipeline import tiny_flux_folder
from PIL import Image

from scepter_core.convert.flux_folder import flux_model_block

PROMPT = 'a red circle on a white background'
STEPS, SCALE, SEED = 3, 3.5, 7
LORA = {'NAME': 'SwiftLoRA', 'R': 4, 'LORA_ALPHA': 8, 'TARGET_MODULES':
        r'model\.(double_blocks\..*(qkv|proj|img_mod\.lin|txt_mlp\.0)|single_blocks\..*(linear1|linear2)'
        r'|final_layer\.adaLN_modulation\.1)$'}


def pipeline_image(folder: Path, lora: Path | None = None) -> np.ndarray:
    from diffusers import FluxPipeline
    pipe = FluxPipeline.from_pretrained(str(folder))
    if lora is not None:
        pipe.load_lora_weights(str(lora))
    image = pipe(PROMPT, height=32, width=32, num_inference_steps=STEPS, guidance_scale=SCALE, max_sequence_length=512,
                 generator=torch.Generator().manual_seed(SEED), output_type='np').images[0]
    return np.round(image * 255) / 255  # as a PNG holds it


def scepter_image(out: Path, *args: str) -> np.ndarray:
    run_cli('infer', *args, '--prompt', PROMPT, '--out', str(out), '--steps', str(STEPS), '--guide-scale', str(SCALE),
            '--seed', str(SEED), '--size', '32', '32', timeout=600)
    return np.asarray(Image.open(out / '00000.png'), dtype=np.float64) / 255


def scepter_image_here(out: Path, pretrained: Path) -> np.ndarray:
    """What `scepter infer` draws, in this process (the same function; one subprocess less)."""
    from scepter_core.inference import generate_images
    generate_images([PROMPT], str(pretrained), str(out), sample_overrides={
        'SAMPLE_STEPS': STEPS, 'GUIDE_SCALE': SCALE, 'SEED': SEED, 'IMAGE_SIZE': [32, 32]})
    return np.asarray(Image.open(out / '00000.png'), dtype=np.float64) / 255


def test_a_lora_trained_here_loads_in_flux_pipeline_with_the_same_image(tmp_path):
    from safetensors.torch import load_file

    from scepter_core.inference import build_model
    from scepter_core.tuners import export_peft_diffusers, import_peft_diffusers
    from scepter_core.tuners.apply import model_lora_state
    from scepter_core.tuners.state import flatten
    folder = tiny_flux_folder(tmp_path, guidance=True)
    cfg = tiny_recipe(tmp_path / 'work', steps=2, MODEL=flux_model_block(folder), TUNER=[LORA],
                      OPTIMIZER={'NAME': 'AdamW', 'LEARNING_RATE': 0.05},
                      SAMPLE_ARGS={'SAMPLER': 'flow_euler', 'SAMPLE_STEPS': 2, 'IMAGE_SIZE': [32, 32]})
    cfg['SOLVER']['TRAIN_DATA'].update(IMAGE_SIZE=32, BATCH_SIZE=2)
    del cfg['SOLVER']['TEST_DATA']
    (tmp_path / 'lora.yaml').write_text(yaml.safe_dump(cfg))
    run_cli('train', '--cfg', str(tmp_path / 'lora.yaml'), timeout=600)
    checkpoint = tmp_path / 'work' / 'checkpoints' / 'latest'
    ours = scepter_image_here(tmp_path / 'ours', checkpoint)

    model, _ = build_model(str(checkpoint))
    path = export_peft_diffusers(model, tmp_path / 'pytorch_lora_weights.safetensors')
    keys = set(load_file(str(path)))
    for piece in ('to_q', 'to_k', 'to_v'):  # the fused qkv, split
        assert f'transformer.transformer_blocks.0.attn.{piece}.lora_A.weight' in keys
        assert f'transformer.single_transformer_blocks.0.attn.{piece}.lora_B.weight' in keys
    assert 'transformer.single_transformer_blocks.0.proj_mlp.lora_A.weight' in keys
    assert 'transformer.norm_out.linear.lora_B.weight' in keys
    theirs = pipeline_image(folder, lora=path)
    plain = pipeline_image(folder)
    assert np.abs(theirs - plain).max() > 10 / 255  # the trained adapters change the picture...
    assert np.abs(ours - theirs).max() <= 3 / 255  # ...as diffusers applies them
    # and back: the same adapters, bit for bit, at the same rank
    trained, back = flatten(model_lora_state(model)), flatten(import_peft_diffusers(path, model))
    assert back.keys() == trained.keys()
    for name, e in back.items():
        assert torch.equal(e.down, trained[name].down) and torch.equal(e.up, trained[name].up), name
        assert e.alpha == trained[name].alpha == 8.0


def randomize_diffusers_lora(transformer) -> None:
    """A LoRA as diffusers' FLUX script trains one: separate A per piece; the text stream's q and
    v and the top proj_out not adapted."""
    from peft import LoraConfig
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=True, target_modules=[
        'to_q', 'to_k', 'to_v', 'to_out.0', 'add_k_proj', 'proj_mlp', 'norm1.linear', 'ff.net.2']))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in transformer.named_parameters():
            if 'lora_' in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def test_a_diffusers_lora_with_split_pieces_draws_the_pipeline_image_here(tmp_path):
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from peft.utils import get_peft_model_state_dict
    folder = tiny_flux_folder(tmp_path, guidance=True)
    transformer = FluxTransformer2DModel.from_pretrained(str(folder / 'transformer'))
    randomize_diffusers_lora(transformer)
    FluxPipeline.save_lora_weights(str(tmp_path / 'theirs'), transformer_lora_layers=get_peft_model_state_dict(
        transformer), safe_serialization=True)
    path = tmp_path / 'theirs' / 'pytorch_lora_weights.safetensors'
    theirs = pipeline_image(folder, lora=path)
    assert np.abs(theirs - pipeline_image(folder)).max() > 10 / 255
    ours = scepter_image(tmp_path / 'ours', '--pretrained-model', str(folder), '--lora', str(path))
    assert np.abs(ours - theirs).max() <= 3 / 255
