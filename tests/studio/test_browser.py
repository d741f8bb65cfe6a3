"""The Studio in a real headless Chromium: generate an image and see it in the gallery, train
a tiny run and watch its loss curve and probe grid appear, edit a caption and find it on disk.
Each tab's screenshot goes to $SCEPTER_SHOTS/studio_*.png (docs/images for the README)."""
from __future__ import annotations

import time

import pytest

pytest.importorskip('gradio', reason='the studio extra (gradio) is not installed')

from scepter_core.checkpoint import checkpoint_step
from scepter_core.inference import build_model
from scepter_core.utils.images import read_parameters

from .conftest import SHOTS

pytestmark = pytest.mark.timeout(900)  # loaded 2-core machines took 340 s for the run test
WAIT = 240  # seconds; generous: sampling and training share two slow CPU cores with the page


def _wait(driver, css: str, timeout: float = WAIT, count: int = 1):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout, poll_frequency=0.25).until(
        lambda d: (lambda found: found if len(found) >= count else False)(d.find_elements(By.CSS_SELECTOR, css)))


def _type(driver, css: str, text: str) -> None:
    from selenium.webdriver.common.keys import Keys
    box = _wait(driver, css)[0]
    box.send_keys(Keys.CONTROL, 'a')
    box.send_keys(Keys.DELETE)
    box.send_keys(text)
    box.send_keys(Keys.TAB)  # blur: Gradio takes the value


def _value(driver, css: str) -> str:
    return _wait(driver, css)[0].get_attribute('value') or ''


def _until(check, timeout: float = WAIT, what: str = 'condition'):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        result = check()
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f'timed out after {timeout} s waiting for {what}')


def _tab(driver, name: str) -> None:
    _wait(driver, f'#tab_{name}-button')[0].click()


def _shot(driver, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SHOTS / f'studio_{name}.png'))


@pytest.fixture(scope='module')
def page(browser, served):
    browser.get(served.url)
    _wait(browser, '#gen_prompt textarea', timeout=120)
    return browser


def test_generate_shows_the_image_and_saves_its_parameters(page, served):
    _type(page, '#gen_prompt textarea', 'a red circle on a white background')
    _type(page, '#gen_seed input', '5')
    _wait(page, '#gen_run')[0].click()
    _wait(page, '#gen_gallery img')
    assert 'Seed: 5' in _until(lambda: _value(page, '#gen_params textarea'), what='the parameters box')
    history = served.studio.generator.history()
    assert history and history[-1]['seed'] == 5
    png = served.studio.generator.out_dir / history[-1]['file']
    text = read_parameters(png)
    assert text.startswith('a red circle on a white background\n') and 'Model: models/tiny' in text
    _wait(page, '#gen_history img')  # the history gallery lists it too
    _shot(page, 'generate')


def test_img2img_from_an_uploaded_image_equals_infer(page, served, studio_root, tmp_path):
    """img2img in the page: upload an image, set the strength; the PNG records both and is the
    image `scepter infer --init-image ... --strength ...` makes with the same settings."""
    import numpy as np
    from PIL import Image

    from scepter_core.inference import sample_args_from_parameters

    from e2e.conftest import run_cli
    init = tmp_path / 'upload.png'
    pixels = np.zeros((16, 16, 3), np.uint8)
    pixels[4:12, 4:12] = (220, 30, 30)  # a red square on black
    Image.fromarray(pixels).save(init)
    before = len(served.studio.generator.history())
    _type(page, '#gen_prompt textarea', 'a red square')
    _type(page, '#gen_seed input', '11')
    _wait(page, '#gen_init input[type=file]')[0].send_keys(str(init))
    _wait(page, '#gen_init img')  # the upload is shown
    _type(page, '#gen_strength input[type=number]', '0.6')
    _wait(page, '#gen_run')[0].click()
    _until(lambda: len(served.studio.generator.history()) > before, what='the img2img image')
    png = served.studio.generator.out_dir / served.studio.generator.history()[-1]['file']
    text = read_parameters(png)
    assert 'Denoising strength: 0.6' in text and 'Init image: ' in text, text
    prompt, _, args, _ = sample_args_from_parameters(text)
    assert Image.open(args['INIT_IMAGE']).tobytes() == Image.open(init).convert('RGB').tobytes()
    out = tmp_path / 'infer'
    run_cli('infer', '--pretrained-model', str(studio_root / 'models' / 'tiny'), '--prompt', prompt,
            '--init-image', args['INIT_IMAGE'], '--strength', str(args['STRENGTH']), '--seed', str(args['SEED']),
            '--sampler', args['SAMPLER'], '--steps', str(args['SAMPLE_STEPS']), '--guide-scale',
            str(args['GUIDE_SCALE']), '--guide-rescale', str(args['GUIDE_RESCALE']), '--out', str(out), timeout=300)
    ours, theirs = (np.asarray(Image.open(p).convert('RGB'), np.int16) for p in (png, out / '00000.png'))
    assert ours.shape == (16, 16, 3)  # the init image's size
    assert np.abs(ours - theirs).max() <= 2  # another process may round one 8-bit level apart
    _shot(page, 'img2img')


def test_training_run_shows_loss_and_probes_stops_loadable_and_resumes(page, served):
    runs = served.studio.runs
    _tab(page, 'train')
    _wait(page, '#train_recipe input')
    assert _value(page, '#train_recipe input') == 'recipes/tiny.yaml'
    _type(page, '#train_name textarea', 'browser-run')
    _type(page, '#train_steps input', '100000')  # runs until stopped
    _wait(page, '#train_start')[0].click()
    _wait(page, '#train_loss img')
    _wait(page, '#train_probes img')  # the probe grid of step 4
    assert runs.get('browser-run').state == 'running'
    _until(lambda: 'running' in _wait(page, '#train_runs')[0].text, what="'running' in the runs table")
    _shot(page, 'train')

    _wait(page, '#train_stop')[0].click()
    _until(lambda: runs.get('browser-run').state == 'stopped', what='the run to stop')
    work = runs.get('browser-run').dir
    step = checkpoint_step(work)
    assert step and step >= 4
    model, _ = build_model(str(work))  # the recipe saved beside it and the last step's weights
    assert sum(p.numel() for p in model.parameters()) > 0
    points = runs.loss_points('browser-run')
    assert points[0][0] == 1 and len(points) >= step

    _wait(page, '#train_resume')[0].click()
    _until(lambda: (checkpoint_step(work) or 0) > step, what='a checkpoint after the resumed step')
    assert 'resum' in runs.log_tail('browser-run', 400).lower()
    _wait(page, '#train_stop')[0].click()
    _until(lambda: runs.get('browser-run').state == 'stopped', what='the resumed run to stop')
    _until(lambda: 'stopped' in _wait(page, '#train_runs')[0].text, what="'stopped' in the runs table")


def test_caption_edited_in_the_page_is_saved_beside_the_image(page, served, studio_root):
    _tab(page, 'data')
    _type(page, '#data_folder textarea', 'data')
    _wait(page, '#data_open')[0].click()
    thumbs = _wait(page, '#data_gallery img', count=3)
    thumbs[1].click()
    _until(lambda: _value(page, '#data_caption textarea') == 'a green square', what='the caption of 1.png')
    assert _value(page, '#data_image textarea').endswith('1.png')
    _type(page, '#data_caption textarea', 'a lime square, edited in the studio')
    _wait(page, '#data_save')[0].click()
    _until(lambda: (studio_root / 'data' / '1.txt').read_text().strip() == 'a lime square, edited in the studio',
           what='data/1.txt to change')
    assert (studio_root / 'data' / '0.txt').read_text().strip() == 'a red square'
    _shot(page, 'data')


def test_models_tab_inspects_the_trained_checkpoint(page):
    _tab(page, 'models')
    _wait(page, '#model_inspect')[0].click()
    info = _until(lambda: 'UNet' in _wait(page, '#model_info')[0].text and _wait(page, '#model_info')[0].text,
                  what='the checkpoint table')
    assert 'scepter' in info and 'autoencoder' in info and 'text encoder' in info
    _shot(page, 'models')
