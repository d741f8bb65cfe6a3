"""FlexibleResize + FlexibleCropXL: the crop is a window of the resized image, and the item
records SDXL's original size (before the resize), crop top-left and target size."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from scepter_core.data.transforms import Compose
from scepter_core.errors import ScepterError
from scepter_core.registry import TRANSFORMS


def _image(h: int = 200, w: int = 300) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _recipe_pipeline(size: int = 128) -> Compose:
    """The SDXL recipe's train transforms, at a small size."""
    return Compose.of([
        {'NAME': 'FlexibleResize', 'INTERPOLATION': 'bicubic', 'SIZE': size, 'INPUT_KEY': ['img'], 'OUTPUT_KEY': ['img']},
        {'NAME': 'FlexibleCropXL', 'INPUT_KEY': ['img'], 'OUTPUT_KEY': ['img']},
        {'NAME': 'ImageToTensor', 'INPUT_KEY': ['img'], 'OUTPUT_KEY': ['img']},
        {'NAME': 'Select', 'KEYS': ['img', 'prompt', 'img_original_size_as_tuple', 'img_target_size_as_tuple',
                                    'img_crop_coords_top_left'], 'META_KEYS': ['image_size']},
        {'NAME': 'Rename', 'INPUT_KEY': ['img', 'img_original_size_as_tuple', 'img_target_size_as_tuple',
                                         'img_crop_coords_top_left'],
         'OUTPUT_KEY': ['image', 'original_size_as_tuple', 'target_size_as_tuple', 'crop_coords_top_left']}])


def test_crop_records_original_crop_and_target_sizes():
    img = _image()
    item = _recipe_pipeline()({'img': img, 'prompt': 'p', '_rng': torch.Generator().manual_seed(3)})
    assert item['image'].shape == (3, 128, 128)
    assert item['original_size_as_tuple'].tolist() == [200, 300]  # before the resize, as SDXL was trained
    assert item['target_size_as_tuple'].tolist() == [128, 128]
    top, left = item['crop_coords_top_left'].tolist()
    assert top == 0 and 0 <= left <= 192 - 128  # the short side covers 128: 200x300 -> 128x192
    resized = np.asarray(img.resize((192, 128), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    want = torch.from_numpy(resized[top:top + 128, left:left + 128]).permute(2, 0, 1)
    assert torch.allclose(item['image'], want, atol=1e-6)
    assert item['meta']['image_size'] == [128, 128]


def test_offsets_come_from_the_item_generator_and_is_center_centres():
    crops = {tuple(_recipe_pipeline()({'img': _image(), 'prompt': 'p', '_rng': torch.Generator().manual_seed(s)})
                   ['crop_coords_top_left'].tolist()) for s in range(12)}
    again = _recipe_pipeline()({'img': _image(), 'prompt': 'p', '_rng': torch.Generator().manual_seed(0)})
    first = _recipe_pipeline()({'img': _image(), 'prompt': 'p', '_rng': torch.Generator().manual_seed(0)})
    assert len(crops) > 3 and torch.equal(again['crop_coords_top_left'], first['crop_coords_top_left'])
    center = TRANSFORMS.build({'NAME': 'FlexibleCropXL', 'SIZE': [100, 100], 'IS_CENTER': True})
    out = center({'img': _image(120, 150)})
    assert out['img_crop_coords_top_left'].tolist() == [10, 25]
    assert out['img_original_size_as_tuple'].tolist() == [120, 150]  # no FlexibleResize: the size it had


def test_meta_image_size_wins_over_size():
    item = {'img': _image(), 'meta': {'image_size': [64, 96]}}
    item = TRANSFORMS.build({'NAME': 'FlexibleResize', 'SIZE': 128})(item)
    item = TRANSFORMS.build({'NAME': 'FlexibleCropXL'})(item)
    assert item['img'].size == (96, 64) and item['img_target_size_as_tuple'].tolist() == [64, 96]


def test_errors_name_what_is_missing():
    with pytest.raises(ScepterError, match='SIZE'):
        TRANSFORMS.build({'NAME': 'FlexibleCropXL'})({'img': _image()})
    with pytest.raises(ScepterError, match='smaller than the target'):
        TRANSFORMS.build({'NAME': 'FlexibleCropXL', 'SIZE': 256})({'img': _image()})
