"""WebDatasetStream under several processes: the ranks agree on each step's bucket (two real
gloo processes), and `scepter data cache` then `scepter train` with two workers read every
sample of the shards once, each rank its own share, the same bucket size on both ranks at every
step, with the latents all found on disk and no image decoded."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from e2e.conftest import tiny_recipe
from folder_files import make_folder
from test_disk_cache import frozen_text_model
from test_sources import write_shards

from scepter_core.data.stream import agreed, bucket_of

ROOT = Path(__file__).resolve().parents[2]
SIZES = [(16, 16), (8, 32), (32, 8)]


def _stream(rank: int) -> list[dict]:
    """Uneven streams: rank 0 mostly square batches, rank 1 mostly wide ones."""
    g = torch.Generator().manual_seed(rank)
    weights = torch.tensor([[6.0, 2.0, 1.0], [1.0, 6.0, 2.0]][rank])
    picks = torch.multinomial(weights, 40, replacement=True, generator=g).tolist()
    return [{'target_size': torch.tensor([SIZES[p]] * 2), 'id': f'{rank}-{i}'} for i, p in enumerate(picks)]


def _agree(rank: int, world: int, init: str, out: str) -> None:
    dist.init_process_group('gloo', init_method=init, rank=rank, world_size=world)
    try:
        full = [(b['id'], bucket_of(b)) for b in agreed(iter(_stream(rank)))]
        resumed = [(b['id'], bucket_of(b)) for b in agreed(iter(_stream(rank)), skip=7)]
    finally:
        dist.destroy_process_group()
    Path(out, f'{rank}.json').write_text(json.dumps({'full': full, 'resumed': resumed}))


def test_ranks_agree_on_every_steps_bucket_and_drop_nothing_they_can_pair(tmp_path):
    mp.spawn(_agree, args=(2, f'file://{tmp_path / "rendezvous"}', str(tmp_path)), nprocs=2)
    got = [json.loads((tmp_path / f'{r}.json').read_text()) for r in (0, 1)]
    full = [[(i, tuple(b)) for i, b in g['full']] for g in got]
    assert len(full[0]) == len(full[1]) > 10
    assert [b for _, b in full[0]] == [b for _, b in full[1]]  # the same bucket on both ranks, every step
    for rank in (0, 1):
        ids = [i for i, _ in full[rank]]
        assert len(set(ids)) == len(ids) and all(i.startswith(f'{rank}-') for i in ids)
    made = [Counter(bucket_of(b) for b in _stream(r)) for r in (0, 1)]
    assert len(full[0]) == sum(min(made[0][s], made[1][s]) for s in SIZES)  # every pairable batch is used
    assert [[(i, tuple(b)) for i, b in g['resumed']] for g in got] == [f[7:] for f in full]  # exact resume


TRACE = '''
import json, os
import scepter_core.data.stream as stream
from scepter_core import DATASETS, HOOKS
from scepter_core.data.stream import WebDatasetStream
from scepter_core.env import we
from scepter_core.hooks.base import BaseHook

SEEN, DECODES = [], []
_decode = stream.decode_rgb


def counted(*args, **kwargs):
    DECODES.append(args[1])
    return _decode(*args, **kwargs)


stream.decode_rgb = counted


@DATASETS.register_class()
class TracedStream(WebDatasetStream):
    def arrange(self, batches):
        for batch in super().arrange(batches):
            SEEN.append((list(batch['meta']['img_path']), batch['target_size'][0].tolist()))
            yield batch


@HOOKS.register_class()
class StreamTraceHook(BaseHook):
    def after_iter(self, solver):
        paths, size = SEEN.pop(0)
        rec = {'step': solver.state.step, 'rank': we.rank, 'paths': paths, 'size': size, 'decodes': len(DECODES),
               'misses': solver.unwrapped_model.latent_cache.misses}
        with open(os.path.join(solver.work_dir, f'stream-rank{we.rank}.jsonl'), 'a') as f:
            f.write(json.dumps(rec) + '\\n')
'''


def _cli(tmp: Path, *args: str, torchrun: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, 'SCEPTER_PROGRESS': '0', 'PYTHONPATH': str(ROOT)}
    for key in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT', 'TORCHELASTIC_RUN_ID'):
        env.pop(key, None)
    cmd = ['-m', 'scepter_cli', *args, '--import', str(tmp / 'trace.py')]
    if torchrun:  # `python -m torch.distributed.run` is the `torchrun` command
        cmd = ['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(torchrun), *cmd,
               '--launcher', 'torchrun']
    return subprocess.run([sys.executable, *cmd], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _shard_keys(cache: Path, kind: str) -> dict[str, set]:
    """pid -> the row names that process wrote in the scope whose scope.txt starts with `kind`."""
    from safetensors import safe_open
    folder = next(d for d in cache.iterdir() if (d / 'scope.txt').is_file()
                  and (d / 'scope.txt').read_text().startswith(f"('{kind}'"))
    out: dict[str, set] = {}
    for shard in folder.glob('*.safetensors'):
        with safe_open(str(shard), 'pt') as f:
            out.setdefault(shard.stem.split('-')[1], set()).update(f.keys())
    return out


def test_data_cache_and_training_on_shards_under_two_processes(tmp_path):
    shapes = [(16, 16), (16, 48)] * 8  # each shard: one square image and one wide one
    urls = write_shards(make_folder(tmp_path / 'imgs', shapes=shapes), tmp_path / 'shards', per_shard=2)
    assert len(urls) == 8
    cache = tmp_path / 'cache'
    cfg = tiny_recipe(tmp_path / 'work', steps=4, CACHE_LATENTS=True, CACHE_DIR=str(cache), MODEL=frozen_text_model())
    cfg['ENV'].update({'NUM_PROCESSES': 2, 'BACKEND': 'gloo', 'TIMEOUT_MINUTES': 2})
    cfg['SOLVER']['TRAIN_DATA'] = {'NAME': 'TracedStream', 'DATA_DIR': str(tmp_path / 'shards'), 'RESOLUTION': 16,
                                   'ALIGNMENT': 8, 'BATCH_SIZE': 2, 'CROP': 'center'}
    cfg['SOLVER']['TRAIN_HOOKS'] = [{'NAME': 'BackwardHook'}, {'NAME': 'StreamTraceHook'}]
    (tmp_path / 'recipe.yaml').write_text(yaml.safe_dump(cfg))
    (tmp_path / 'trace.py').write_text(TRACE)

    filled = _cli(tmp_path, 'data', 'cache', '--cfg', str(tmp_path / 'recipe.yaml'))
    assert filled.returncode == 0, filled.stderr[-3000:]
    shares = _shard_keys(cache, 'latent-named')
    assert len(shares) == 2  # two processes wrote latents, disjoint shares, every image once
    a, b = shares.values()
    assert not a & b and len(a) == len(b) == 8

    trained = _cli(tmp_path, 'train', '--cfg', str(tmp_path / 'recipe.yaml'), torchrun=2)
    assert trained.returncode == 0, trained.stderr[-3000:]
    steps = [[json.loads(line) for line in (tmp_path / 'work' / f'stream-rank{r}.jsonl').read_text().splitlines()]
             for r in (0, 1)]
    assert [s['step'] for s in steps[0]] == [s['step'] for s in steps[1]] == [1, 2, 3, 4]
    assert [s['size'] for s in steps[0]] == [s['size'] for s in steps[1]]  # one bucket size per step
    assert sorted(map(tuple, (s['size'] for s in steps[0]))) == [(8, 32), (8, 32), (16, 16), (16, 16)]
    seen = [p.rsplit('#', 1)[1] for rank in steps for s in rank for p in s['paths']]
    assert sorted(seen) == sorted(f'{i:02d}.{"png" if i % 2 == 0 else "jpg"}' for i in range(16))  # each once
    assert all(s['decodes'] == 0 and s['misses'] == 0 for rank in steps for s in rank)  # all from the cache
