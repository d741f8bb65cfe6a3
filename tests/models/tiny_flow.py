"""Tiny text encoders of the flow families, written by the tests themselves: a T5 encoder
with a tokenizer trained here (no T5 vocabulary ships offline) and a CLIP text model with
the CLIP vocabulary we ship."""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

TOKENIZER_FILES = Path(__file__).resolve().parents[2] / 'scepter_core' / 'assets' / 'clip_tokenizer'
WORDS = ('a red green blue circle square triangle diamond on white black grey background photo of the cat dog '
         'house tree sky sun small big shape painting drawing render bright dark').split()


def train_t5_tokenizer(folder: Path, vocab_size: int = 120):
    """A Unigram (sentencepiece-style) tokenizer as T5's: </s> appended, pad id 0, eos 1, unk 2."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import T5TokenizerFast
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    corpus = [' '.join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(8)) for i in range(200)]
    tok.train_from_iterator(corpus, trainers.UnigramTrainer(vocab_size=vocab_size, unk_token='<unk>',
                                                            special_tokens=['<pad>', '</s>', '<unk>']))
    tok.post_processor = processors.TemplateProcessing(single='$A </s>', special_tokens=[('</s>', 1)])
    fast = T5TokenizerFast(tokenizer_object=tok, eos_token='</s>', unk_token='<unk>', pad_token='<pad>', extra_ids=0)
    fast.save_pretrained(str(folder))
    return fast


def write_t5_dir(folder: Path, d_model: int = 16, seed: int = 3) -> Path:
    from transformers import T5Config, T5EncoderModel
    tok = train_t5_tokenizer(folder)
    torch.manual_seed(seed)
    config = T5Config(vocab_size=len(tok), d_model=d_model, d_ff=32, d_kv=8, num_layers=2, num_heads=2,
                      relative_attention_num_buckets=8, dropout_rate=0.0)
    T5EncoderModel(config).save_pretrained(str(folder))
    return folder


def write_clip_dir(folder: Path, hidden: int = 24, seed: int = 4, projection: bool = False) -> Path:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=32, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=77, projection_dim=hidden)
    (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).save_pretrained(str(folder))
    for f in TOKENIZER_FILES.iterdir():
        shutil.copy(f, folder / f.name)
    return folder


TINY_FLUX = {'NAME': 'Flux', 'IN_CHANNELS': 16, 'HIDDEN_SIZE': 32, 'NUM_HEADS': 2, 'AXES_DIM': [4, 6, 6],
             'VEC_IN_DIM': 24, 'CONTEXT_IN_DIM': 16, 'DEPTH': 2, 'DEPTH_SINGLE_BLOCKS': 2, 'GUIDANCE_EMBED': True}
TINY_CODER = {'CH': 32, 'CH_MULT': [1, 2], 'NUM_RES_BLOCKS': 1, 'Z_CHANNELS': 4}


def tiny_flux_network(root: Path, **model) -> dict:
    """A LatentDiffusionFlux block over tiny random parts: the T5 and CLIP folders are written
    under `root` (once)."""
    t5, clip = root / 't5', root / 'clip'
    if not t5.is_dir():
        write_t5_dir(t5)
        write_clip_dir(clip)
    return {'NAME': 'LatentDiffusionFlux', 'DIFFUSION_MODEL': dict(TINY_FLUX),
            'FIRST_STAGE_MODEL': {'NAME': 'AutoencoderKLFlux', 'EMBED_DIM': 4, 'ENCODER': {'NAME': 'Encoder', **TINY_CODER},
                                  'DECODER': {'NAME': 'Decoder', **TINY_CODER}},
            'COND_STAGE_MODEL': {'NAME': 'T5PlusClipFluxEmbedder',
                                 'T5_MODEL': {'NAME': 'HFEmbedder', 'MODEL_PATH': str(t5), 'MAX_LENGTH': 12},
                                 'CLIP_MODEL': {'NAME': 'HFEmbedder', 'HF_MODEL_CLS': 'CLIPTextModel',
                                                'HF_TOKENIZER_CLS': 'CLIPTokenizer', 'OUTPUT_KEY': 'pooler_output',
                                                'MODEL_PATH': str(clip)}},
            **model}
