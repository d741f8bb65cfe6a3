"""Each dataset reading files the test lays out, including Scepter's recipe blocks."""
from __future__ import annotations

import os

import pytest
import torch
import yaml
from image_files import COLORS, write_csv, write_image

from scepter_core.config import Config
from scepter_core.data import build_dataloader
from scepter_core.errors import ConfigError
from scepter_core.fs import FS
from scepter_core.registry import DATASETS

TO_TENSOR = [{'NAME': 'LoadImageFromFile'}, {'NAME': 'Resize', 'SIZE': 16}, {'NAME': 'CenterCrop', 'SIZE': 16},
             {'NAME': 'ImageToTensor'},
             {'NAME': 'Normalize', 'OUTPUT_KEY': ['image']},
             {'NAME': 'Select', 'KEYS': ['image', 'prompt'], 'META_KEYS': ['data_key', 'img_path']}]

# Copied from the Scepter recipe stable_diffusion_1.5_512.yaml (SOLVER.TRAIN_DATA / EVAL_DATA).
RECIPE = """
SOLVER:
  TRAIN_DATA:
    NAME: ImageTextPairMSDataset
    MODE: train
    MS_DATASET_NAME: style_custom_dataset
    MS_DATASET_NAMESPACE: damo
    MS_DATASET_SUBNAME: 3D
    PROMPT_PREFIX: ""
    MS_DATASET_SPLIT: train_short
    MS_REMAP_KEYS: { 'Image:FILE': 'Target:FILE' }
    REPLACE_STYLE: False
    PIN_MEMORY: True
    BATCH_SIZE: 1
    NUM_WORKERS: 4
    SAMPLER:
      NAME: LoopSampler
    TRANSFORMS:
      - NAME: LoadImageFromFile
        RGB_ORDER: RGB
        BACKEND: pillow
      - NAME: Resize
        SIZE: 512
        INTERPOLATION: bilinear
        INPUT_KEY: [ 'img' ]
        OUTPUT_KEY: [ 'img' ]
        BACKEND: pillow
      - NAME: CenterCrop
        SIZE: 512
        INPUT_KEY: [ 'img' ]
        OUTPUT_KEY: [ 'img' ]
        BACKEND: pillow
      - NAME: ImageToTensor
        INPUT_KEY: [ 'img' ]
        OUTPUT_KEY: [ 'img' ]
        BACKEND: pillow
      - NAME: Normalize
        MEAN: [ 0.5,  0.5,  0.5 ]
        STD: [ 0.5,  0.5,  0.5 ]
        INPUT_KEY: [ 'img' ]
        OUTPUT_KEY: [ 'image' ]
        BACKEND: torchvision
      - NAME: Select
        KEYS: [ 'image', 'prompt' ]
        META_KEYS: [ 'data_key' ]
  EVAL_DATA:
    NAME: ImageTextPairMSDataset
    MODE: eval
    MS_DATASET_NAME: style_custom_dataset
    MS_DATASET_NAMESPACE: damo
    MS_DATASET_SUBNAME: 3D
    PROMPT_PREFIX: ""
    MS_REMAP_KEYS: { 'Image': 'Target:FILE' }
    MS_DATASET_SPLIT: test_short
    OUTPUT_SIZE: [512, 512]
    REPLACE_STYLE: False
    PIN_MEMORY: True
    BATCH_SIZE: 4
    NUM_WORKERS: 4
    FILE_SYSTEM:
      NAME: "ModelscopeFs"
      TEMP_DIR: "./cache/cache_data"
    TRANSFORMS:
      -
        NAME: Select
        KEYS: ['prompt']
        META_KEYS: ['image_size']
"""


def _build(**cfg):
    return DATASETS.build(cfg)


def _mirror_subset(root) -> str:
    """Lay out damo/style_custom_dataset subset 3D in the mirror as ModelScope ships it."""
    subset = root / 'ms' / 'damo' / 'style_custom_dataset' / '3D'
    rows = []
    for i in range(3):
        write_image(subset / 'images' / f'{i}.png', (600, 540), COLORS[i])
        rows.append([f'images/{i}.png', f'a 3D render of object {i}', '3D'])
    write_csv(subset / 'train_short.csv', ['Image:FILE', 'Prompt', 'Style'], rows)
    write_csv(subset / 'test_short.csv', ['Image', 'Prompt'], [['images/0.png', 'a 3D cat'], ['', 'a 3D dog']])
    return str(subset)


def test_folder_dataset_reads_csv_png_and_jpeg(pair_folder):
    ds = _build(NAME='ImageTextPairFolderDataset', DATA_FOLDER=str(pair_folder), TRANSFORMS=TO_TENSOR,
                PROMPT_PREFIX='photo: ')
    assert len(ds) == 6
    item = ds[1]
    assert item['prompt'] == 'photo: picture 1, in colour 30'  # a quoted prompt keeps its comma
    assert item['image'].shape == (3, 16, 16)
    expected = torch.tensor(COLORS[1]) / 127.5 - 1
    assert torch.allclose(item['image'][:, 8, 8], expected, atol=0.06)  # JPEG is lossy
    assert item['meta']['img_path'] == os.path.join(str(pair_folder), 'images/1.jpg')
    assert item['_skipped'] == 0


def test_folder_dataset_errors_name_key_and_path(tmp_path, pair_folder):
    with pytest.raises(ConfigError, match=r"DATA_FOLDER'.*missing"):
        _build(NAME='ImageTextPairFolderDataset', DATA_FOLDER=str(tmp_path / 'missing'))
    with pytest.raises(ConfigError, match=r"CSV_FILE'.*other\.csv.*train\.csv"):
        _build(NAME='ImageTextPairFolderDataset', DATA_FOLDER=str(pair_folder), CSV_FILE='other.csv')
    write_csv(tmp_path / 'bad' / 'train.csv', ['File', 'Text'], [['a.png', 'x']])
    with pytest.raises(ConfigError, match='Target:FILE or Image:FILE and Prompt'):
        _build(NAME='ImageTextPairFolderDataset', DATA_FOLDER=str(tmp_path / 'bad'))


def test_index_dataset_reads_lines_under_data_root(tmp_path):
    for i in range(3):
        write_image(tmp_path / 'imgs' / f'{i}.png', (20 + i, 10), COLORS[i])
    index = tmp_path / 'index.txt'
    index.write_text(''.join(f'imgs/{i}.png#;#{20 + i}#;#10#;#shape #;# {i}\n' for i in range(3)) + '\n')
    ds = _build(NAME='ImageTextPairDataset', DATA_ROOT=str(tmp_path), INDEX_FILE=str(index),
                PROMPT_PREFIX='p: ', TRANSFORMS=[{'NAME': 'LoadImageFromFile'}])
    assert len(ds) == 3
    item = ds[2]
    assert item['prompt'] == 'p: shape #;# 2'  # the prompt may contain the delimiter
    assert item['meta']['width'] == 22 and item['meta']['height'] == 10 and item['img'].size == (22, 10)
    inline = _build(NAME='ImageTextPairDataset', DATA_ROOT=str(tmp_path), DATA_LIST=['imgs/0.png#;#20#;#10#;#x'])
    assert inline[0]['prompt'] == 'x' and inline[0]['meta']['img_path'] == os.path.join(str(tmp_path), 'imgs/0.png')


def test_index_dataset_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"INDEX_FILE'.*nothing\.txt"):
        _build(NAME='ImageTextPairDataset', INDEX_FILE=str(tmp_path / 'nothing.txt'))
    bad = tmp_path / 'bad.txt'
    bad.write_text('a.png#;#10#;#10#;#ok\nb.png#;#10\n')
    with pytest.raises(ConfigError, match='line 2'):
        _build(NAME='ImageTextPairDataset', INDEX_FILE=str(bad))
    (tmp_path / 'empty.txt').write_text('\n\n')
    with pytest.raises(ConfigError, match='no samples'):
        _build(NAME='ImageTextPairDataset', INDEX_FILE=str(tmp_path / 'empty.txt'))


def test_text2image_dataset_prompts_and_samples(tmp_path):
    prompts = tmp_path / 'prompts.txt'
    prompts.write_text('a cat\n\na dog\n')
    ds = _build(NAME='Text2ImageDataset', MODE='test', PROMPT_FILE=str(prompts), NUM_SAMPLES=2,
                IMAGE_SIZE=[64, 48])
    assert [ds[i]['prompt'] for i in range(len(ds))] == ['a cat', 'a cat', 'a dog', 'a dog']
    assert ds[3]['meta'] == {'image_size': [64, 48], 'prompt_index': 1, 'sample_index': 1}
    batch = next(iter(build_dataloader(ds, seed=0)))
    assert batch['prompt'] == ['a cat'] and batch['meta']['image_size'] == [[64, 48]]
    inline = _build(NAME='Text2ImageDataset', PROMPT_DATA=['x'], IMAGE_SIZE=32)
    assert inline[0]['meta']['image_size'] == [32, 32]
    (tmp_path / 'blank.txt').write_text('\n  \n')
    with pytest.raises(ConfigError, match=r"PROMPT_FILE'.*empty"):
        _build(NAME='Text2ImageDataset', PROMPT_FILE=str(tmp_path / 'blank.txt'))
    with pytest.raises(ConfigError, match=r"PROMPT_FILE'.*none\.txt"):
        _build(NAME='Text2ImageDataset', PROMPT_FILE=str(tmp_path / 'none.txt'))


def test_ms_dataset_from_mirror_path_override_and_missing(tmp_path, monkeypatch):
    mirror = tmp_path / 'mirror'
    monkeypatch.setenv('SCEPTER_MIRROR', str(mirror))
    keys = dict(NAME='ImageTextPairMSDataset', MS_DATASET_NAME='style_custom_dataset',
                MS_DATASET_NAMESPACE='damo', MS_DATASET_SUBNAME='3D', MS_DATASET_SPLIT='train_short')
    with pytest.raises(ConfigError) as e:
        _build(**keys)
    assert 'ms://damo/style_custom_dataset@3D' in str(e.value)
    assert str(mirror / 'ms' / 'damo' / 'style_custom_dataset' / '3D') in str(e.value)
    subset = _mirror_subset(mirror)
    ds = _build(**keys, REPLACE_STYLE=True, KEYWORDS_SIGN='style')
    assert len(ds) == 3 and ds[0]['prompt'] == 'a <style> render of object 0'
    assert ds[0]['meta']['data_key'] == '3D' and ds[0]['meta']['img_path'] == os.path.join(subset, 'images/0.png')
    moved = tmp_path / 'elsewhere'
    os.rename(subset, moved)
    ds = _build(**keys, MS_DATASET_PATH=str(moved))
    assert ds[2]['meta']['img_path'] == os.path.join(str(moved), 'images/2.png')
    with pytest.raises(ConfigError, match="MS_DATASET_SPLIT'.*val.csv.*train_short.csv"):
        _build(**{**keys, 'MS_DATASET_SPLIT': 'val'}, MS_DATASET_PATH=str(moved))


def test_ms_dataset_local_name_and_paths_from_the_dataset_root(tmp_path):
    root = tmp_path / 'style_custom_dataset'
    write_image(root / '3D' / 'images' / 'a.png', (8, 8))
    write_csv(root / '3D' / 'train.csv', ['Target:FILE', 'Prompt'], [['3D/images/a.png', 'x']])
    ds = _build(NAME='ImageTextPairMSDataset', MS_DATASET_NAME=str(root), MS_DATASET_SUBNAME='3D',
                TRANSFORMS=[{'NAME': 'LoadImageFromFile'}])
    assert ds[0]['meta']['img_path'] == os.path.join(str(root), '3D/images/a.png')
    assert ds[0]['img'].size == (8, 8)


def test_scepter_recipe_train_and_eval_blocks(tmp_path, monkeypatch):
    mirror = tmp_path / 'mirror'
    monkeypatch.setenv('SCEPTER_MIRROR', str(mirror))
    monkeypatch.setattr(FS, 'temp_dir', None)  # the EVAL_DATA FILE_SYSTEM block sets it
    _mirror_subset(mirror)
    cfg = Config(yaml.safe_load(RECIPE))
    train = DATASETS.build(cfg.SOLVER.TRAIN_DATA)
    loader = build_dataloader(train, seed=2023)
    it = iter(loader)
    batches = [next(it) for _ in range(3)]
    batch = batches[0]
    assert batch['image'].shape == (1, 3, 512, 512) and batch['image'].dtype == torch.float32
    assert -1 <= batch['image'].min() and batch['image'].max() <= 1
    assert isinstance(batch['prompt'], list) and batch['prompt'][0].startswith('a 3D render of object')
    assert batch['meta'] == {'data_key': ['3D']} and batch['_skipped'] == 0
    # one epoch of the loop sampler visits every record once
    assert sorted(b['prompt'][0] for b in batches) == [f'a 3D render of object {i}' for i in range(3)]

    evaluation = DATASETS.build(cfg.SOLVER.EVAL_DATA)
    eval_batches = list(build_dataloader(evaluation, seed=2023))
    assert len(eval_batches) == 1
    assert eval_batches[0]['prompt'] == ['a 3D cat', 'a 3D dog']
    assert eval_batches[0]['meta'] == {'image_size': [[512, 512], [512, 512]]}
    assert str(FS.temp_dir) == 'cache/cache_data'
