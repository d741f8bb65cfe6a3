"""ClipTokenizer: same ids as the original CLIP tokenizer, from a vocabulary packaged with us."""
from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from scepter_core.errors import ConfigError
from scepter_core.models.tokenizers import ClipTokenizer, clean_prompt
from scepter_core.models.tokenizers.clip_tokenizer import PACKAGED_VOCAB
from scepter_core.registry import TOKENIZERS

REPO = Path(__file__).resolve().parents[2]
BOS, EOS = 49406, 49407
PROMPTS = [
    'A photo of a CAT, sitting on a mat!!!',
    "don't stop-believin' it's 3.14159 o'clock... (really?) [yes]; {no}",
    'Ünïcödé café naïve — “quotes” … 東京タワー 🐱‍👤 😀 ½ ² ℌ𝔢𝔩𝔩𝔬 ﬁ',
    'schÃ¶n &amp; &lt;b&gt; tags &amp;amp; İstanbul ΣΊΣΥΦΟΣ',
    '  multiple   spaces\tand\nnewlines\u00a0here  ',
    '',
    '!',
    ' '.join(f'word{i}' for i in range(60)),  # far past 77 tokens
    'masterpiece, best quality, ultra-detailed, 8k, (extremely detailed CG unity wallpaper:1.2)',
]


def _load_by_path(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def open_clip_dir() -> Path:
    spec = importlib.util.find_spec('open_clip')
    if spec is None:
        pytest.skip('open-clip-torch is not installed')
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.fixture(scope='module')
def reference(open_clip_dir):
    """open_clip's SimpleTokenizer (OpenAI's original logic), loaded from its file:
    the open_clip package itself needs torchvision to import."""
    return _load_by_path('open_clip_tokenizer_reference', open_clip_dir / 'tokenizer.py')


def reference_ids(reference, texts: list[str], length: int = 77) -> torch.Tensor:
    """open_clip's ids, padded with <|endoftext|> as SD1.5 does (open_clip pads with 0)."""
    ids = reference.SimpleTokenizer(context_length=length)(texts)
    for row in ids:
        end = int((row == EOS).nonzero()[0])
        row[end + 1:] = EOS
    return ids


def test_same_ids_as_the_original_clip_tokenizer(reference):
    ids = ClipTokenizer()(PROMPTS)
    assert ids.dtype == torch.long and ids.shape == (len(PROMPTS), 77)
    assert torch.equal(ids, reference_ids(reference, PROMPTS))


def test_layout_padding_and_truncation(reference):
    tok = ClipTokenizer()
    short, empty, long = tok(['a cat', '', PROMPTS[7]])
    assert short[:4].tolist() == [BOS, 320, 2368, EOS] and (short[4:] == EOS).all()
    assert empty[0] == BOS and (empty[1:] == EOS).all()
    assert long[0] == BOS and long[-1] == EOS and (long[:-1] != EOS).all()  # cut, EOS kept last
    full = reference.SimpleTokenizer(context_length=200)([PROMPTS[7]])[0]
    assert torch.equal(long[:-1], full[:76])
    assert tok('a cat').shape == (1, 77)
    assert tok([]).shape == (0, 77)


def test_length_key(reference):
    tok = TOKENIZERS.build({'NAME': 'ClipTokenizer', 'LENGTH': 8})
    assert tok.model_max_length == 8
    assert torch.equal(tok(PROMPTS), reference_ids(reference, PROMPTS, length=8))
    with pytest.raises(ConfigError, match='LENGTH'):
        ClipTokenizer({'LENGTH': 1})


def test_vocab_size_and_max_length():
    tok = ClipTokenizer()
    assert tok.vocab_size == 49408 and tok.model_max_length == 77


def test_clean_on_and_off(reference):
    messy = ['schÃ¶n &amp;amp; caf\u00e9 &lt;3', 'A   CAT']
    assert [clean_prompt(t) for t in messy] == [reference._clean_lower(t) for t in messy]
    cleaned = ClipTokenizer({'CLEAN': True})(messy)
    raw = ClipTokenizer({'CLEAN': False})(messy)
    assert torch.equal(cleaned, reference_ids(reference, messy))
    assert not torch.equal(cleaned[0], raw[0])  # mojibake and entities reach the BPE untouched
    # Lower-casing and whitespace are the tokenizer's own normalisation, on either way.
    assert torch.equal(raw[1], ClipTokenizer({'CLEAN': False})('a cat')[0])


def test_packaged_assets_are_what_the_script_derives(open_clip_dir, tmp_path):
    script = _load_by_path('make_clip_vocab', REPO / 'tools' / 'make_clip_vocab.py')
    vocab = script.write_assets(open_clip_dir / script.BPE_FILE, tmp_path)
    assert len(vocab) == 49408 and vocab['<|startoftext|>'] == BOS and vocab['<|endoftext|>'] == EOS
    for name in ('vocab.json', 'merges.txt', 'tokenizer_config.json', 'special_tokens_map.json'):
        assert (tmp_path / name).read_bytes() == (PACKAGED_VOCAB / name).read_bytes(), name


def test_pretrained_path_with_tokenizer_files_is_used(tmp_path, caplog):
    # A copy of the vocabulary with two ids swapped proves the files came from this directory.
    for name in ('merges.txt', 'tokenizer_config.json', 'special_tokens_map.json'):
        shutil.copy(PACKAGED_VOCAB / name, tmp_path / name)
    vocab = json.loads((PACKAGED_VOCAB / 'vocab.json').read_text(encoding='utf-8'))
    vocab['cat</w>'], vocab['dog</w>'] = vocab['dog</w>'], vocab['cat</w>']
    (tmp_path / 'vocab.json').write_text(json.dumps(vocab), encoding='utf-8')
    with caplog.at_level(logging.INFO):
        ids = ClipTokenizer({'PRETRAINED_PATH': str(tmp_path)})('cat dog')[0, 1:3].tolist()
    assert ids == [ClipTokenizer()('dog')[0, 1].item(), ClipTokenizer()('cat')[0, 1].item()]
    assert not [r for r in caplog.records if 'packaged' in r.getMessage() and str(tmp_path) in r.getMessage()]


@pytest.mark.parametrize('where', ['ms://AI-ModelScope/clip-vit-large-patch14', 'empty_dir', None])
def test_falls_back_to_the_packaged_vocabulary(where, tmp_path, caplog):
    if where == 'empty_dir':
        where = str(tmp_path)
    with caplog.at_level(logging.INFO, logger='scepter'):
        tok = ClipTokenizer({'PRETRAINED_PATH': where})
    lines = [r for r in caplog.records if 'packaged CLIP vocabulary' in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    if where:
        assert where in lines[0].getMessage()
    assert torch.equal(tok('a cat'), ClipTokenizer()('a cat'))


def test_unreadable_tokenizer_files_name_the_directory(tmp_path):
    (tmp_path / 'vocab.json').write_text('{not json', encoding='utf-8')
    (tmp_path / 'merges.txt').write_text('#version: 0.2\n', encoding='utf-8')
    with pytest.raises(ConfigError, match=str(tmp_path)):
        ClipTokenizer({'PRETRAINED_PATH': str(tmp_path)})
