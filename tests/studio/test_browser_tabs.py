"""The Studio's Data and Models tabs in a real headless Chromium: the bucket table of a folder
holds the numbers `scepter data inspect` prints; Convert writes a checkpoint in another format
and Convert with a LoRA merges it, and both written files load with the expected weights.
Runs after test_browser.py (same browser and server) and retakes the Data and Models shots."""
from __future__ import annotations

import json

import pytest

pytest.importorskip('gradio', reason='the studio extra (gradio) is not installed')

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from e2e.conftest import run_cli  # noqa: E402
from scepter_core.inference import build_model  # noqa: E402

from .test_browser import _shot, _tab, _type, _until, _value, _wait  # noqa: E402

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope='module')
def page(browser, served):
    browser.get(served.url)
    _wait(browser, '#gen_prompt textarea', timeout=120)
    return browser


def _shapes_folder(root):
    """Images of four shapes (one without a caption) and two broken files."""
    folder = root / 'shapes'
    folder.mkdir(exist_ok=True)
    for i, (h, w) in enumerate([(64, 64), (48, 96), (96, 48), (40, 160), (64, 64), (50, 100)]):
        Image.new('RGB', (w, h), (40 * i, 100, 200)).save(folder / f'{i}.png')
        if i:
            (folder / f'{i}.txt').write_text(f'shape {i}\n')
    (folder / 'zero.png').write_bytes(b'')
    (folder / 'text.png').write_text('not an image')
    return folder


def test_data_tab_shows_the_bucket_table_of_scepter_data_inspect(page, studio_root):
    folder = _shapes_folder(studio_root)
    cli = json.loads(run_cli('data', 'inspect', str(folder), '--resolution', '64', '--alignment', '16', '--json',
                             '--plot', '').stdout)
    assert cli['images'] == 6 and cli['bad'] == 2 and cli['no_caption'] == 1
    _tab(page, 'data')
    _type(page, '#data_folder textarea', 'shapes')
    _wait(page, '#data_open')[0].click()
    _wait(page, '#data_gallery img', count=6)  # the readable images (the broken ones show no thumbnail)
    _type(page, '#data_resolution input', '64')
    _type(page, '#data_alignment input', '16')
    _wait(page, '#data_inspect')[0].click()
    text = _until(lambda: 'readable images' in _wait(page, '#data_buckets')[0].text and
                  _wait(page, '#data_buckets')[0].text, what='the bucket table')
    assert '6 readable images, 2 bad, 1 without a caption' in text.replace('*', '')
    rows = [[td.text for td in tr.find_elements('css selector', 'td')]
            for tr in _wait(page, '#data_buckets tbody tr', count=len(cli['buckets']))]
    total = sum(b['count'] for b in cli['buckets'])
    assert rows == [[f"{b['size'][0]} x {b['size'][1]}", f"{b['size'][1] / b['size'][0]:.2f}", str(b['count']),
                     f"{b['count'] / total:.1%}"] for b in cli['buckets']]
    assert 'zero.png' in text and 'text.png' in text
    _shot(page, 'data')  # the README's Data tab: the folder's thumbnails and its bucket table


def _tiny_lora(studio_root):
    """A LoRA on the tiny model's UNet attention (random, so that merging it moves weights)."""
    from scepter_core.tuners import apply_tuners, save_adapter, tuner_state_dict
    model, _ = build_model(str(studio_root / 'models' / 'tiny'))
    tuned = apply_tuners(model, [{'NAME': 'SwiftLoRA', 'R': 2, 'LORA_ALPHA': 4,
                                  'TARGET_MODULES': 'model.*(to_q|to_k|to_v)$'}], None)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, v in sorted(tuner_state_dict(tuned).items()):
            v.copy_(torch.randn(v.shape, generator=g) * 0.1)
    (studio_root / 'loras').mkdir(exist_ok=True)
    return save_adapter(tuned, studio_root / 'loras' / 'tiny_lora.safetensors')


def _convert(page, dst: str, to: str, merge: str = '') -> str:
    _type(page, '#model_dst textarea', dst)
    _wait(page, f'#model_to input[value="{to}"]')[0].click()
    _type(page, '#model_merge textarea', merge)
    before = _value(page, '#model_convert_out textarea')
    _wait(page, '#model_convert')[0].click()
    return _until(lambda: (lambda v: v != before and v)(_value(page, '#model_convert_out textarea')),
                  what=f'the output of converting to {dst}')


def test_models_tab_converts_and_merges_a_lora_into_files_that_load(page, studio_root):
    from scepter_core.convert import load_pipeline_state
    from scepter_core.tuners import apply_lora_files, merge_lora
    lora = _tiny_lora(studio_root)
    _tab(page, 'models')
    assert _value(page, '#model_path input') == 'models/tiny'
    base, _ = build_model(str(studio_root / 'models' / 'tiny'))
    expected = base.state_dict()

    _convert(page, 'converted/tiny_ldm.safetensors', 'ldm')
    ldm = load_pipeline_state(studio_root / 'converted' / 'tiny_ldm.safetensors')  # back in our names
    shared = [k for k in expected if k in ldm]
    assert len(shared) > 0.9 * len(expected)
    assert all(torch.equal(ldm[k], expected[k]) for k in shared)

    _convert(page, 'converted/tiny_merged.safetensors', 'scepter', merge=f'{lora.relative_to(studio_root)}:0.5')
    merged_file = studio_root / 'converted' / 'tiny_merged.safetensors'
    merged, _ = build_model(str(studio_root / 'models' / 'tiny'))
    apply_lora_files(merged, [f'{lora}:0.5'])
    want = merge_lora(merged).state_dict()
    got = load_pipeline_state(merged_file)
    moved = [k for k in want if 'to_q' in k and k in got and not torch.equal(got[k], expected[k])]
    assert moved  # the LoRA changed the attention weights
    assert all(torch.allclose(got[k], want[k], atol=1e-6) for k in want if k in got)
    _shot(page, 'models')
