"""`scepter model info`: exact parameter counts of each family's components, built on the meta
device, checked against diffusers' / transformers' own classes with the published configs; and
the same report for checkpoints on disk, read from safetensors headers alone."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scepter_core.models.info import TRAIN_BYTES, build_components, family_info, path_info

ROOT = Path(__file__).resolve().parents[1]
# The published sizes (issue 18), with the family and component they belong to.
COUNTS = {('sd21', 'unet'): 865_910_724, ('sdxl', 'unet'): 2_567_463_684, ('sdxl', 'text_encoder'): 123_060_480,
          ('sdxl', 'text_encoder_2'): 694_659_840, ('sdxl', 'vae'): 83_653_863,
          ('sdxl-refiner', 'unet'): 2_259_526_660, ('sd15', 'unet'): 859_520_964}

# diffusers' configs of the same UNets (stabilityai's model cards), the independent check.
_UP_DOWN = {'down_block_types': ['CrossAttnDownBlock2D'] * 3 + ['DownBlock2D'],
            'up_block_types': ['UpBlock2D'] + ['CrossAttnUpBlock2D'] * 3}
DIFFUSERS_UNETS = {
    'sd15': {'cross_attention_dim': 768},
    'sd21': {**_UP_DOWN, 'block_out_channels': [320, 640, 1280, 1280], 'attention_head_dim': [5, 10, 20, 20],
             'cross_attention_dim': 1024, 'use_linear_projection': True},
    'sdxl': {'block_out_channels': [320, 640, 1280], 'attention_head_dim': [5, 10, 20],
             'down_block_types': ['DownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D'],
             'up_block_types': ['CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'UpBlock2D'],
             'transformer_layers_per_block': [1, 2, 10], 'cross_attention_dim': 2048, 'use_linear_projection': True,
             'addition_embed_type': 'text_time', 'addition_time_embed_dim': 256,
             'projection_class_embeddings_input_dim': 2816},
    'sdxl-refiner': {'block_out_channels': [384, 768, 1536, 1536], 'attention_head_dim': [6, 12, 24, 24],
                     'down_block_types': ['DownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D',
                                          'DownBlock2D'],
                     'up_block_types': ['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'UpBlock2D'],
                     'transformer_layers_per_block': 4, 'cross_attention_dim': 1280, 'use_linear_projection': True,
                     'addition_embed_type': 'text_time', 'addition_time_embed_dim': 256,
                     'projection_class_embeddings_input_dim': 2560},
}
BIGG_TEXT = {'hidden_size': 1280, 'intermediate_size': 5120, 'num_hidden_layers': 32, 'num_attention_heads': 20,
             'hidden_act': 'gelu', 'projection_dim': 1280}


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_cli_json_gives_the_exact_sdxl_counts_without_allocating():
    # VmHWM, not ru_maxrss: Linux carries the forked parent's size (a long pytest run's) into the
    # child's ru_maxrss across exec; the high-water mark of the child's own memory starts at exec.
    code = ('import json, re, sys; from scepter_cli.main import main; rc = main(sys.argv[1:]); '
            'hwm = int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)); '
            'print(json.dumps({"maxrss_kb": hwm}))')
    proc = subprocess.run([sys.executable, '-c', code, 'model', 'info', '--family', 'sdxl', '--json'],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    split = proc.stdout.rindex('{"maxrss_kb"')
    data, rss = json.loads(proc.stdout[:split]), json.loads(proc.stdout[split:])
    assert data['family'] == 'sdxl'
    for (fam, comp), n in COUNTS.items():
        if fam == 'sdxl':
            assert data['components'][comp]['parameters'] == n, comp
    assert data['components']['unet']['bytes'] == {'float32': 4 * COUNTS['sdxl', 'unet'],
                                                   'float16': 2 * COUNTS['sdxl', 'unet'],
                                                   'bfloat16': 2 * COUNTS['sdxl', 'unet']}
    # 3.5 billion parameters would be 13 GiB in fp32: the process stayed far below one.
    assert rss['maxrss_kb'] < 3 * 2 ** 20


@pytest.mark.parametrize('family', ['sd15', 'sd21', 'sdxl', 'sdxl-refiner'])
def test_family_counts_equal_diffusers_and_transformers_classes(family):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    ours = build_components(family)
    assert all(p.is_meta for m in ours.values() for p in m.parameters())
    with torch.device('meta'):
        unet = UNet2DConditionModel(**DIFFUSERS_UNETS[family])
        vae = AutoencoderKL(block_out_channels=[128, 256, 512, 512], latent_channels=4,
                            down_block_types=['DownEncoderBlock2D'] * 4, up_block_types=['UpDecoderBlock2D'] * 4,
                            layers_per_block=2)
        theirs = {'unet': unet, 'vae': vae}
        if family in ('sd15', 'sdxl'):
            theirs['text_encoder'] = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072,
                                                                  num_attention_heads=12, num_hidden_layers=12))
        if family == 'sd21':  # SD2's text_encoder: OpenCLIP ViT-H without its unused last block
            theirs['text_encoder'] = CLIPTextModel(CLIPTextConfig(**{**BIGG_TEXT, 'hidden_size': 1024,
                                                                     'intermediate_size': 4096,
                                                                     'num_attention_heads': 16,
                                                                     'num_hidden_layers': 23}))
        if family.startswith('sdxl'):
            theirs['text_encoder_2'] = CLIPTextModelWithProjection(CLIPTextConfig(**BIGG_TEXT))
    assert {k: _count(m) for k, m in ours.items()} == {k: _count(m) for k, m in theirs.items()}
    for (fam, comp), n in COUNTS.items():
        if fam == family:
            assert _count(ours[comp]) == n


def test_memory_figures_follow_from_the_counts():
    data = family_info('sdxl', dtype='bfloat16', lora_rank=8)
    comps, mem = data['components'], data['memory']
    total = sum(c['parameters'] for c in comps.values())
    assert mem['inference'] == 2 * total
    unet = comps['unet']['parameters']  # + its bf16 copies under autocast
    assert mem['full_training'] == TRAIN_BYTES * unet + 2 * unet + 2 * (total - unet)
    assert family_info('sdxl', dtype='float32')['memory']['full_training'] == TRAIN_BYTES * unet + 4 * (total - unet)
    lora = sum(c.get('lora_parameters', 0) for c in comps.values())
    assert mem['lora_training'] == 2 * total + TRAIN_BYTES * lora
    # rank 8 on the UNet's attention / feed-forward projections, counted on diffusers' UNet too
    from diffusers import UNet2DConditionModel
    with torch.device('meta'):
        theirs = UNet2DConditionModel(**DIFFUSERS_UNETS['sdxl'])
    targets = re.compile(r'(to_q|to_k|to_v|to_out\.0|ff\.net\.0\.proj|ff\.net\.2)$')
    assert comps['unet']['lora_parameters'] == sum(8 * (m.in_features + m.out_features)
                                                   for n, m in theirs.named_modules() if targets.search(n))
    assert family_info('sdxl', lora_rank=16)['components']['unet']['lora_parameters'] == 2 * comps['unet']['lora_parameters']


def _header_only_file(path: Path, shapes: dict[str, tuple[int, ...]]) -> Path:
    """A safetensors file with a real header and sparse (unwritten) data: full-size checkpoints
    cost neither disk nor time, and only headers are read."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = torch.Size(shape).numel() * 2
        header[name] = {'dtype': 'F16', 'shape': list(shape), 'data_offsets': [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    blob += b' ' * (-len(blob) % 8)
    with open(path, 'wb') as f:
        f.write(len(blob).to_bytes(8, 'little') + blob)
        f.truncate(8 + len(blob) + offset)
    return path


def test_an_original_sd15_file_is_recognised_from_its_header(tmp_path):
    from e2e.sd_fixtures import sd15_shapes
    shapes = sd15_shapes()
    shapes['model_ema.decay'] = ()
    path = _header_only_file(tmp_path / 'v1-5.safetensors', shapes)
    data = path_info(path)
    assert data['family'] == 'sd15' and data['source'] == str(path)
    assert {k: c['parameters'] for k, c in data['components'].items()} == {
        'unet': 859_520_964, 'vae': 83_653_863, 'text_encoder': 123_060_480}
    assert data['components']['unet']['lora_parameters'] == family_info('sd15')['components']['unet']['lora_parameters']


def test_a_diffusers_folder_counts_each_component(tmp_path):
    from diffusers import UNet2DConditionModel
    with torch.device('meta'):
        unet = UNet2DConditionModel(**DIFFUSERS_UNETS['sdxl'])
    (tmp_path / 'unet').mkdir()
    _header_only_file(tmp_path / 'unet' / 'diffusion_pytorch_model.safetensors',
                      {k: tuple(v.shape) for k, v in unet.state_dict().items()})
    (tmp_path / 'model_index.json').write_text(json.dumps({'_class_name': 'StableDiffusionXLPipeline',
                                                           'unet': ['diffusers', 'UNet2DConditionModel'],
                                                           'vae': ['diffusers', 'AutoencoderKL']}))
    data = path_info(tmp_path)
    assert data['family'] == 'sdxl' and data['components']['unet']['parameters'] == 2_567_463_684
    assert 'vae' not in data['components']  # no weights there: nothing is made up


def test_errors_say_what_to_give(tmp_path):
    from scepter_core.errors import ConfigError
    with pytest.raises(ConfigError, match="unknown model family 'sdx'.*sdxl"):
        family_info('sdx')
    with pytest.raises(ConfigError, match='diffusers folder'):
        path_info(tmp_path)


# The published sizes of the flow families (issue 21).
FLOW_COUNTS = {
    'flux-dev': {'transformer': 11_901_408_320, 'vae': 83_819_683, 'text_encoder': 123_060_480,
                 'text_encoder_2': 4_762_310_656},
    'flux-schnell': {'transformer': 11_891_178_560, 'vae': 83_819_683, 'text_encoder_2': 4_762_310_656},
    'sd35-large': {'transformer': 8_056_627_520, 'vae': 83_819_683, 'text_encoder_2': 694_659_840,
                   'text_encoder_3': 4_762_310_656},
    'sd35-medium': {'transformer': 2_243_171_520, 'text_encoder_3': 4_762_310_656},
}


@pytest.mark.parametrize('family', list(FLOW_COUNTS))
def test_flow_family_counts_are_exact_on_the_meta_device(family):
    info = family_info(family, dtype='bfloat16', lora_rank=16)
    for component, n in FLOW_COUNTS[family].items():
        assert info['components'][component]['parameters'] == n, component
    transformer = info['components']['transformer']
    # rank-16 adapters on the transformer's attention / MLP / modulation linears: millions, not billions
    assert 10 ** 6 < transformer['lora_parameters'] < transformer['parameters'] // 100
    total = sum(c['parameters'] for c in info['components'].values())
    assert info['memory']['inference'] == 2 * total
    assert info['memory']['full_training'] == TRAIN_BYTES * transformer['parameters'] + \
        2 * transformer['parameters'] + 2 * (total - transformer['parameters'])
