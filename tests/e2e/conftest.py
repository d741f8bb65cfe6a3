"""Tiny end-to-end recipes: a 16 px latent diffusion model that trains in seconds."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

TINY_MODEL = {
    'NAME': 'LatentDiffusion',
    'SCALE_FACTOR': 1.0, 'SIZE_FACTOR': 4, 'IMAGE_SIZE': [16, 16], 'P_ZERO': 0.2, 'TIMESTEPS': 1000,
    'DIFFUSION_MODEL': {'NAME': 'DiffusionUNet', 'IN_CHANNELS': 4, 'OUT_CHANNELS': 4, 'MODEL_CHANNELS': 32,
                        'CHANNEL_MULT': [1, 2], 'NUM_RES_BLOCKS': 1, 'ATTENTION_RESOLUTIONS': [2],
                        'NUM_HEAD_CHANNELS': 16, 'CONTEXT_DIM': 32},
    'FIRST_STAGE_MODEL': {
        'NAME': 'AutoencoderKL', 'EMBED_DIM': 4,
        'ENCODER': {'NAME': 'Encoder', 'CH': 32, 'CH_MULT': [1, 1, 1], 'NUM_RES_BLOCKS': 1, 'Z_CHANNELS': 4},
        'DECODER': {'NAME': 'Decoder', 'CH': 32, 'CH_MULT': [1, 1, 1], 'NUM_RES_BLOCKS': 1, 'Z_CHANNELS': 4}},
    'COND_STAGE_MODEL': {'NAME': 'FrozenCLIPEmbedder', 'FREEZE': False, 'USE_GRAD': True, 'MAX_LENGTH': 8,
                         'CONFIG': {'vocab_size': 49408, 'hidden_size': 32, 'intermediate_size': 64,
                                    'num_hidden_layers': 1, 'num_attention_heads': 2,
                                    'max_position_embeddings': 8}},
    'TOKENIZER': {'NAME': 'ClipTokenizer', 'LENGTH': 8},
}


TO_TENSOR = [
    {'NAME': 'ImageToTensor', 'INPUT_KEY': ['img'], 'OUTPUT_KEY': ['img']},
    {'NAME': 'Normalize', 'MEAN': [0.5] * 3, 'STD': [0.5] * 3, 'INPUT_KEY': ['img'], 'OUTPUT_KEY': ['image']},
    {'NAME': 'Select', 'KEYS': ['image', 'prompt'], 'META_KEYS': ['meta']},
]


def tiny_recipe(work_dir: Path, steps: int = 4, **solver: object) -> dict:
    cfg = {
        'ENV': {'SEED': 7},
        'SOLVER': {
            'NAME': 'LatentDiffusionSolver', 'WORK_DIR': str(work_dir), 'MAX_STEPS': steps, 'SEED': 7,
            'MODEL': yaml.safe_load(yaml.safe_dump(TINY_MODEL)),
            'OPTIMIZER': {'NAME': 'AdamW', 'LEARNING_RATE': 1e-3},
            'SAMPLE_ARGS': {'SAMPLER': 'ddim', 'SAMPLE_STEPS': 3, 'SEED': 1, 'GUIDE_SCALE': 2.0,
                            'IMAGE_SIZE': [16, 16]},
            'TRAIN_DATA': {'NAME': 'ShapesDataset', 'IMAGE_SIZE': 16, 'NUM_SAMPLES': 64, 'BATCH_SIZE': 4,
                           'TRANSFORMS': TO_TENSOR},
            'TEST_DATA': {'NAME': 'ShapesDataset', 'MODE': 'test', 'IMAGE_SIZE': 16, 'BATCH_SIZE': 4,
                          'HOLDOUT': ['blue triangle']},
            'TRAIN_HOOKS': [{'NAME': 'BackwardHook'}, {'NAME': 'LogHook', 'LOG_INTERVAL': 2},
                            {'NAME': 'CheckpointHook', 'INTERVAL': 2}],
        },
    }
    cfg['SOLVER'].update(solver)
    return cfg


def write_recipe(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 300, env: dict | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
    full_env = {**os.environ, 'SCEPTER_PROGRESS': '0', **(env or {})}
    proc = subprocess.run([sys.executable, '-m', 'scepter_cli', *args], cwd=cwd or ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f'scepter {" ".join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}')
    return proc


@pytest.fixture
def recipe(tmp_path: Path):
    def make(steps: int = 4, **solver: object) -> Path:
        return write_recipe(tmp_path / 'recipe.yaml', tiny_recipe(tmp_path / 'work', steps, **solver))
    return make
