"""Transforms on real image files: loading, geometry, tensors, dict reshaping, errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from image_files import gradient_image, truncate, write_image
from PIL import Image

from scepter_core.config import Config
from scepter_core.data.errors import BadSampleError
from scepter_core.data.transforms import RNG_KEY
from scepter_core.errors import ConfigError, ScepterError
from scepter_core.registry import TRANSFORMS


def build(name: str, **keys):
    return TRANSFORMS.build({'NAME': name, **keys})


def test_load_image_reads_png_and_jpeg_with_prefix_and_backends(tmp_path):
    png = write_image(tmp_path / 'a.png', (30, 20), (10, 120, 240))
    write_image(tmp_path / 'b.jpg', (30, 20), (10, 120, 240))
    item = build('LoadImageFromFile')({'meta': {'img_path': str(png)}})
    assert isinstance(item['img'], Image.Image) and item['img'].size == (30, 20)
    assert item['img'].getpixel((5, 5)) == (10, 120, 240)
    assert item['meta']['rgb_order'] == 'RGB'
    jpg = build('LoadImageFromFile')({'meta': {'img_path': 'b.jpg', 'prefix': str(tmp_path)}})['img']
    assert np.abs(np.asarray(jpg, dtype=int) - [10, 120, 240]).max() < 8  # lossy but close
    bgr = build('LoadImageFromFile', RGB_ORDER='BGR')({'img_path': str(png)})['img']
    assert bgr.getpixel((0, 0)) == (240, 120, 10)
    tensor = build('LoadImageFromFile', BACKEND='torchvision')({'img_path': str(png)})['img']
    assert tensor.dtype == torch.uint8 and tensor.shape == (3, 20, 30) and tensor[:, 0, 0].tolist() == [10, 120, 240]
    array = build('LoadImageFromFile', BACKEND='cv2')({'img_path': str(png)})['img']
    assert array.shape == (20, 30, 3) and array[0, 0].tolist() == [10, 120, 240]


def test_load_image_composites_transparency_on_white(tmp_path):
    rgba = Image.new('RGBA', (8, 8), (0, 0, 0, 0))
    rgba.putpixel((1, 1), (255, 0, 0, 255))
    rgba.save(tmp_path / 't.png')
    img = build('LoadImageFromFile')({'img_path': str(tmp_path / 't.png')})['img']
    assert img.mode == 'RGB' and img.getpixel((0, 0)) == (255, 255, 255) and img.getpixel((1, 1)) == (255, 0, 0)


def test_missing_and_truncated_images_raise_bad_sample_naming_the_path(tmp_path):
    load = build('LoadImageFromFile')
    missing = tmp_path / 'nope.png'
    with pytest.raises(BadSampleError) as e:
        load({'img_path': str(missing)})
    assert e.value.path == str(missing)
    broken = tmp_path / 'broken.png'
    gradient_image(64, 64).save(broken)
    truncate(broken)
    with pytest.raises(BadSampleError, match='broken.png'):
        load({'img_path': str(broken)})
    with pytest.raises(ScepterError, match="no 'img_path'"):
        load({'meta': {}})


def test_resize_shorter_side_and_exact_size_on_pil_and_tensor():
    img = gradient_image(40, 60)
    assert build('Resize', SIZE=20)({'img': img})['img'].size == (30, 20)
    assert build('Resize', SIZE=[10, 12], INTERPOLATION='nearest')({'img': img})['img'].size == (12, 10)
    t = torch.tensor(np.asarray(img)).permute(2, 0, 1).contiguous()
    out = build('Resize', SIZE=20)({'img': t})['img']
    assert out.shape == (3, 20, 30) and out.dtype == torch.uint8
    # a constant image stays constant under any filter
    flat = torch.full((3, 9, 9), 0.25)
    assert torch.allclose(build('Resize', SIZE=[4, 5], INTERPOLATION='bicubic')({'img': flat})['img'], flat[:, :4, :5])
    with pytest.raises(ScepterError, match='PIL images only'):
        build('Resize', SIZE=4, INTERPOLATION='lanczos')({'img': flat})


def test_center_crop_matches_slicing_and_pads_small_images():
    img = gradient_image(40, 60)
    arr = np.asarray(img)
    out = np.asarray(build('CenterCrop', SIZE=[20, 30])({'img': img})['img'])
    assert np.array_equal(out, arr[10:30, 15:45])
    t = torch.tensor(arr).permute(2, 0, 1)
    assert torch.equal(build('CenterCrop', SIZE=[20, 30])({'img': t})['img'], t[:, 10:30, 15:45])
    padded = np.asarray(build('CenterCrop', SIZE=50)({'img': img})['img'])
    assert padded.shape == (50, 50, 3) and padded[:5].max() == 0 and np.array_equal(padded[5:45], arr[:, 5:55])


def _window_offset(big: np.ndarray, window: np.ndarray) -> tuple[int, int]:
    h, w = window.shape[:2]
    hits = [(y, x) for y in range(big.shape[0] - h + 1) for x in range(big.shape[1] - w + 1)
            if np.array_equal(big[y:y + h, x:x + w], window)]
    assert len(hits) == 1
    return hits[0]


def test_random_crop_is_a_window_decided_by_the_item_generator():
    img = gradient_image(24, 30)
    arr = np.asarray(img)
    crop = build('RandomCrop', SIZE=[10, 12])
    offsets = []
    for seed in range(6):
        a = crop({'img': img, RNG_KEY: torch.Generator().manual_seed(seed)})['img']
        b = crop({'img': img, RNG_KEY: torch.Generator().manual_seed(seed)})['img']
        assert np.array_equal(np.asarray(a), np.asarray(b))
        offsets.append(_window_offset(arr, np.asarray(a)))
    assert len(set(offsets)) > 1
    with pytest.raises(ScepterError, match='PAD_IF_NEEDED'):
        crop({'img': gradient_image(8, 8)})
    padded = build('RandomCrop', SIZE=12, PAD_IF_NEEDED=True, FILL=7)({'img': gradient_image(8, 8)})['img']
    assert padded.size == (12, 12) and (7, 7, 7) in [padded.getpixel((0, y)) for y in range(12)]


def test_random_horizontal_flip_probability_and_determinism():
    img = gradient_image(6, 9)
    arr = np.asarray(img)
    assert np.array_equal(np.asarray(build('RandomHorizontalFlip', P=1.0)({'img': img})['img']), arr[:, ::-1])
    assert np.array_equal(np.asarray(build('RandomHorizontalFlip', P=0.0)({'img': img})['img']), arr)
    flip = build('RandomHorizontalFlip')
    decisions = [np.array_equal(np.asarray(flip({'img': img, RNG_KEY: torch.Generator().manual_seed(s)})['img']),
                                arr[:, ::-1]) for s in range(40)]
    again = [np.array_equal(np.asarray(flip({'img': img, RNG_KEY: torch.Generator().manual_seed(s)})['img']),
                            arr[:, ::-1]) for s in range(40)]
    assert decisions == again and 5 < sum(decisions) < 35


def test_image_to_tensor_and_normalize():
    img = gradient_image(5, 7)
    t = build('ImageToTensor')({'img': img})['img']
    assert t.dtype == torch.float32 and t.shape == (3, 5, 7)
    assert torch.allclose(t, torch.tensor(np.asarray(img)).permute(2, 0, 1).float() / 255)
    out = build('Normalize', INPUT_KEY=['img'], OUTPUT_KEY=['image'])({'img': t})
    assert torch.allclose(out['image'], t * 2 - 1) and out['image'].min() >= -1 and out['image'].max() <= 1
    custom = build('Normalize', MEAN=[0.1, 0.2, 0.3], STD=[0.5, 0.25, 2.0])({'img': t})['img']
    assert torch.allclose(custom[1], (t[1] - 0.2) / 0.25)
    with pytest.raises(ScepterError, match='ImageToTensor'):
        build('Normalize')({'img': img})


def test_select_rename_compose_identity():
    item = {'image': 1, 'prompt': 'p', 'extra': 2, 'meta': {'data_key': 'k', 'img_path': 'x'}}
    assert build('Select', KEYS=['image', 'prompt'], META_KEYS=['data_key'])(dict(item)) == \
        {'image': 1, 'prompt': 'p', 'meta': {'data_key': 'k'}}
    with pytest.raises(ScepterError, match='meta.image_size'):
        build('Select', KEYS=['prompt'], META_KEYS=['image_size'])(dict(item))
    renamed = build('Rename', INPUT_KEY=['extra'], OUTPUT_KEY=['more'])(dict(item))
    assert 'extra' not in renamed and renamed['more'] == 2 and renamed['prompt'] == 'p'
    assert build('Identity')(item) is item
    chain = build('Compose', TRANSFORMS=[{'NAME': 'Rename', 'INPUT_KEY': 'extra', 'OUTPUT_KEY': 'image2'},
                                         {'NAME': 'Select', 'KEYS': ['image2']}])
    assert chain(dict(item)) == {'image2': 2} and len(chain) == 2


def test_recipe_style_chain_gives_an_image_in_minus_one_one(tmp_path):
    path = tmp_path / 'x.png'
    gradient_image(50, 70).save(path)
    chain = build('Compose', TRANSFORMS=[
        {'NAME': 'LoadImageFromFile', 'RGB_ORDER': 'RGB', 'BACKEND': 'pillow'},
        {'NAME': 'Resize', 'SIZE': 32, 'INTERPOLATION': 'bilinear', 'INPUT_KEY': ['img'], 'OUTPUT_KEY': ['img']},
        {'NAME': 'CenterCrop', 'SIZE': 32, 'INPUT_KEY': ['img'], 'OUTPUT_KEY': ['img']},
        {'NAME': 'ImageToTensor', 'INPUT_KEY': ['img'], 'OUTPUT_KEY': ['img']},
        {'NAME': 'Normalize', 'MEAN': [0.5] * 3, 'STD': [0.5] * 3, 'INPUT_KEY': ['img'], 'OUTPUT_KEY': ['image'],
         'BACKEND': 'torchvision'},
        {'NAME': 'Select', 'KEYS': ['image', 'prompt'], 'META_KEYS': ['data_key']}])
    out = chain({'prompt': 'a', 'meta': {'img_path': str(path), 'data_key': 'd'}})
    assert set(out) == {'image', 'prompt', 'meta'} and out['image'].shape == (3, 32, 32)
    assert -1 <= out['image'].min() < out['image'].max() <= 1


def test_config_errors_name_the_key():
    cfg = Config({'T': {'NAME': 'Resize', 'INPUT_KEY': ['a', 'b'], 'OUTPUT_KEY': ['a']}})
    with pytest.raises(ConfigError, match=r"'T\.OUTPUT_KEY'"):
        TRANSFORMS.build(cfg.T)
    with pytest.raises(ConfigError, match='SIZE'):
        build('CenterCrop', SIZE=[1, 2, 3])
    with pytest.raises(ConfigError, match='unknown key'):
        build('Resize', SIZES=3)
    with pytest.raises(ConfigError, match='BACKEND'):
        build('Resize', BACKEND='skimage')
