"""The A1111 `parameters` text: written into PNGs, read back into sampling arguments."""
from __future__ import annotations

from PIL import Image

from scepter_core.inference import png_parameters, sample_args_from_parameters
from scepter_core.utils.images import format_parameters, parse_parameters, read_parameters, save_png


def test_round_trip_with_commas_colons_and_a_multiline_prompt(tmp_path):
    text = format_parameters('a red, circle\non: white', 'blur, noise',
                             {'Steps': 3, 'Sampler': 'ddim', 'CFG scale': 2.0, 'Seed': 5, 'Model': 'runs/a:b, c',
                              'Skipped': None})
    assert text.splitlines()[-1] == 'Steps: 3, Sampler: ddim, CFG scale: 2.0, Seed: 5, Model: "runs/a:b, c"'
    prompt, neg, settings = parse_parameters(text)
    assert (prompt, neg) == ('a red, circle\non: white', 'blur, noise')
    assert settings == {'Steps': '3', 'Sampler': 'ddim', 'CFG scale': '2.0', 'Seed': '5', 'Model': 'runs/a:b, c'}
    path = save_png(Image.new('RGB', (4, 4), 'red'), tmp_path / 'a.png', text)
    assert read_parameters(path) == text
    assert read_parameters(save_png(Image.new('RGB', (4, 4)), tmp_path / 'b.png')) is None


def test_a_prompt_with_a_colon_and_no_settings_line_stays_a_prompt():
    assert parse_parameters('style: watercolor') == ('style: watercolor', '', {})
    assert parse_parameters('a cat\nNegative prompt: dog') == ('a cat', 'dog', {})


def test_sample_args_from_png_parameters_invert_png_parameters():
    args = {'SAMPLER': 'euler', 'SAMPLE_STEPS': 7, 'SEED': 11, 'GUIDE_SCALE': 3.5, 'GUIDE_RESCALE': 0.25,
            'DISCRETIZATION': 'trailing', 'IMAGE_SIZE': [16, 24]}
    text = png_parameters('a blue square', 'red', args, 'models/tiny', ['l.safetensors:0.5'], (4, 2))
    assert 'Size: 24x16' in text and 'Batch pos: 2' in text
    prompt, neg, back, loras = sample_args_from_parameters(text)
    assert (prompt, neg, back, loras) == ('a blue square', 'red', args, ['l.safetensors:0.5'])
