"""Helpers of the tuner tests (a module name of its own: every test folder has a conftest)."""
from __future__ import annotations

import copy

import torch

UNET_TARGETS = 'model.*(to_q|to_k|to_v|to_out.0|net.0.proj|net.2)$'
TEXT_TARGETS = 'cond_stage_model.*(q_proj|k_proj|v_proj|out_proj|mlp.fc1|mlp.fc2)$'

TINY_MODEL = {
    'NAME': 'LatentDiffusion', 'SCALE_FACTOR': 1.0, 'SIZE_FACTOR': 4, 'IMAGE_SIZE': [16, 16],
    'DIFFUSION_MODEL': {'NAME': 'DiffusionUNet', 'MODEL_CHANNELS': 32, 'CHANNEL_MULT': [1, 2], 'NUM_RES_BLOCKS': 1,
                        'ATTENTION_RESOLUTIONS': [1, 2], 'NUM_HEAD_CHANNELS': 16, 'CONTEXT_DIM': 32},
    'FIRST_STAGE_MODEL': {
        'NAME': 'AutoencoderKL', 'EMBED_DIM': 4,
        'ENCODER': {'NAME': 'Encoder', 'CH': 32, 'CH_MULT': [1, 1, 1], 'NUM_RES_BLOCKS': 1, 'Z_CHANNELS': 4},
        'DECODER': {'NAME': 'Decoder', 'CH': 32, 'CH_MULT': [1, 1, 1], 'NUM_RES_BLOCKS': 1, 'Z_CHANNELS': 4}},
    'COND_STAGE_MODEL': {'NAME': 'FrozenCLIPEmbedder', 'MAX_LENGTH': 8, 'USE_GRAD': True,
                         'CONFIG': {'hidden_size': 32, 'intermediate_size': 64, 'num_hidden_layers': 1,
                                    'num_attention_heads': 2, 'max_position_embeddings': 8}},
    'TOKENIZER': {'NAME': 'ClipTokenizer', 'LENGTH': 8},
}


def lora_blocks(unet_rank: int = 4, text_rank: int = 2) -> list[dict]:
    """The two blocks of Scepter's _textlora recipe, with tiny ranks and alpha != rank."""
    return [{'NAME': 'SwiftLoRA', 'R': unet_rank, 'LORA_ALPHA': 2 * unet_rank, 'TARGET_MODULES': UNET_TARGETS},
            {'NAME': 'SwiftLoRA', 'R': text_rank, 'LORA_ALPHA': 3, 'TARGET_MODULES': TEXT_TARGETS}]


# Two runs of one model on the same values agree to rounding, not always to the bit: MKL's
# sgemm picks its kernel by the buffers' memory alignment (its "conditional numerical
# reproducibility"; MKL_CBWR=...,STRICT makes them equal), so a model whose allocations moved
# (adapters added, a copy) may differ in the last bits of a product. Seen: 1.0e-6 on outputs
# of size ~0.5 on an Intel Xeon; 10x that is still 100x below the 1e-3 an adapter moves them.
ROUNDING_ATOL = 1e-5


def fill_zero_tensors(model: torch.nn.Module) -> None:
    """The UNet's output layer starts at zero (as in LDM), which blocks every gradient and
    hides every layer from the output: give each all-zero parameter small random values."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def randomize_adapters(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every adapter weight values (peft starts B at zero, a no-op adapter)."""
    from scepter_core.tuners import tuner_state_dict
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, v in sorted(tuner_state_dict(model).items()):
            v.copy_(torch.randn(v.shape, generator=g) * 0.1)


def denoiser_output(model: torch.nn.Module) -> torch.Tensor:
    """UNet output on fixed latents and prompts, through the text encoder (so that both
    UNet and text-encoder adapters count)."""
    g = torch.Generator().manual_seed(5)
    x, t = torch.randn(2, 4, 4, 4, generator=g), torch.tensor([10, 700])
    with torch.no_grad():
        context = model.encode_prompts(['a red circle', 'a blue square on black'])
        return model.model(x, t, context)


TO_TENSOR = [
    {'NAME': 'ImageToTensor', 'INPUT_KEY': ['img'], 'OUTPUT_KEY': ['img']},
    {'NAME': 'Normalize', 'MEAN': [0.5] * 3, 'STD': [0.5] * 3, 'INPUT_KEY': ['img'], 'OUTPUT_KEY': ['image']},
    {'NAME': 'Select', 'KEYS': ['image', 'prompt'], 'META_KEYS': ['meta']},
]


def lora_run_recipe(work_dir, base, steps: int = 2, use_ema: bool = False, hooks: list | None = None) -> dict:
    """A tiny LoRA run on generated shapes, from the base model file `base`: the _textlora
    recipe's two adapters, a checkpoint every 2 steps, one test prompt."""
    model = {**copy.deepcopy(TINY_MODEL), 'PRETRAINED_MODEL': str(base), 'USE_EMA': use_ema}
    return {'ENV': {'SEED': 7}, 'SOLVER': {
        'NAME': 'LatentDiffusionSolver', 'WORK_DIR': str(work_dir), 'MAX_STEPS': steps, 'SEED': 7,
        'MODEL': model, 'TUNER': lora_blocks(), 'OPTIMIZER': {'NAME': 'AdamW', 'LEARNING_RATE': 1e-2},
        'SAMPLE_ARGS': {'SAMPLER': 'ddim', 'SAMPLE_STEPS': 2, 'SEED': 1, 'GUIDE_SCALE': 2.0, 'IMAGE_SIZE': [16, 16]},
        'TRAIN_DATA': {'NAME': 'ShapesDataset', 'IMAGE_SIZE': 16, 'NUM_SAMPLES': 16, 'BATCH_SIZE': 2,
                       'TRANSFORMS': TO_TENSOR},
        'TEST_DATA': {'NAME': 'ShapesDataset', 'MODE': 'test', 'IMAGE_SIZE': 16, 'BATCH_SIZE': 1,
                      'COLORS': ['red'], 'SHAPES': ['circle'], 'BACKGROUNDS': ['white']},
        'TRAIN_HOOKS': [{'NAME': 'BackwardHook'}, *(hooks or []), {'NAME': 'CheckpointHook', 'INTERVAL': 2}]}}
