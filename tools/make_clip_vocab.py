"""Derive the packaged CLIP BPE vocabulary (`scepter_core/assets/clip_tokenizer/`).

The source is `bpe_simple_vocab_16e6.txt.gz`, the merge list OpenAI released with CLIP
and that the `open-clip-torch` wheel ships. CLIP uses its first 48,894 merges; the
vocabulary is the 256 byte symbols, the same 256 with the end-of-word mark `</w>`, one
entry per merge (in merge order) and the two special tokens, 49,408 ids in all. We write
it in the layout transformers' `CLIPTokenizer` reads (vocab.json + merges.txt + config).

    python tools/make_clip_vocab.py                 # finds the file in site-packages
    python tools/make_clip_vocab.py --bpe FILE.gz --out DIR

The output is deterministic, so `tests/models/test_tokenizer.py` regenerates it and
compares it byte for byte with the committed assets.
"""
from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
from pathlib import Path

BPE_FILE = 'bpe_simple_vocab_16e6.txt.gz'
NUM_MERGES = 49152 - 256 - 2  # CLIP's vocabulary size before the byte symbols and specials
BOS, EOS = '<|startoftext|>', '<|endoftext|>'
DEFAULT_OUT = Path(__file__).resolve().parents[1] / 'scepter_core' / 'assets' / 'clip_tokenizer'


def find_bpe_file() -> Path:
    """The merge file inside the installed open_clip package, found without importing it
    (open_clip's `__init__` needs torchvision)."""
    spec = importlib.util.find_spec('open_clip')
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f'open-clip-torch is not installed; pass --bpe path/to/{BPE_FILE}')
    path = Path(next(iter(spec.submodule_search_locations))) / BPE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"'{path}' not found; pass --bpe path/to/{BPE_FILE}")
    return path


def byte_symbols() -> list[str]:
    """GPT-2's reversible byte -> printable character table, in byte-id order: printable
    Latin-1 bytes map to themselves, the rest to code points from 256 upwards."""
    printable = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1),
                 *range(ord('®'), ord('ÿ') + 1)]
    extra = iter(range(256, 512))
    mapping = {b: b if b in printable else next(extra) for b in range(256)}
    # CLIP orders the vocabulary printable bytes first, then the remapped ones.
    order = printable + [b for b in range(256) if b not in printable]
    return [chr(mapping[b]) for b in order]


def read_merges(bpe_path: Path) -> list[tuple[str, str]]:
    lines = gzip.open(bpe_path).read().decode('utf-8').split('\n')
    merges = [tuple(line.split()) for line in lines[1:NUM_MERGES + 1]]  # line 0 is a header
    if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(f"'{bpe_path}' does not hold {NUM_MERGES} two-symbol merges")
    return merges


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    symbols = byte_symbols()
    tokens = symbols + [s + '</w>' for s in symbols] + [a + b for a, b in merges] + [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError('duplicate tokens in the derived vocabulary')
    return vocab


def tokenizer_config() -> dict:
    return {'tokenizer_class': 'CLIPTokenizer', 'model_max_length': 77, 'bos_token': BOS,
            'eos_token': EOS, 'pad_token': EOS, 'unk_token': EOS, 'do_lower_case': True,
            'errors': 'replace', 'add_prefix_space': False, 'clean_up_tokenization_spaces': False}


def write_assets(bpe_path: Path, out_dir: Path) -> dict[str, int]:
    merges = read_merges(bpe_path)
    vocab = build_vocab(merges)
    out_dir.mkdir(parents=True, exist_ok=True)

    def dump(name: str, obj: dict) -> None:
        (out_dir / name).write_text(json.dumps(obj, ensure_ascii=False, indent=1) + '\n', encoding='utf-8')

    dump('vocab.json', vocab)
    (out_dir / 'merges.txt').write_text(
        '#version: 0.2\n' + ''.join(f'{a} {b}\n' for a, b in merges), encoding='utf-8')
    dump('tokenizer_config.json', tokenizer_config())
    dump('special_tokens_map.json', {k: tokenizer_config()[k]
                                     for k in ('bos_token', 'eos_token', 'pad_token', 'unk_token')})
    return vocab


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--bpe', type=Path, default=None, help=f'path to {BPE_FILE}')
    parser.add_argument('--out', type=Path, default=DEFAULT_OUT, help='output directory')
    args = parser.parse_args()
    vocab = write_assets(args.bpe or find_bpe_file(), args.out)
    print(f'wrote {len(vocab)} tokens to {args.out}')


if __name__ == '__main__':
    main()
