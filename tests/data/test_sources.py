"""Sources detected from what a path holds (folder + sidecars, metadata.jsonl, parquet, CSV/TXT
lists, an fsspec memory:// folder), bad files skipped/counted/named once, and caption tools."""
from __future__ import annotations

import io
import itertools
import json
import logging

import fsspec
import torch
from folder_files import make_folder
from image_files import gradient_image

from scepter_core.data import build_dataloader, make_caption
from scepter_core.data import sources
from scepter_core.registry import DATASETS


def build(path, **keys):
    return DATASETS.build({'NAME': 'BucketImageDataset', 'DATA_DIR': str(path), 'RESOLUTION': 64,
                           'ALIGNMENT': 16, 'BATCH_SIZE': 2, **keys})


def test_bad_files_are_counted_named_once_and_skipped_within_the_bucket(tmp_path, caplog):
    folder = make_folder(tmp_path / 'imgs', shapes=[(64, 64), (72, 72), (90, 90)], broken=True)
    with caplog.at_level(logging.WARNING):
        data = build(folder, DEFAULT_CAPTION='a photo', MAX_BAD_SHARE=0.5)
    names = {p.rsplit('/', 1)[-1]: r for p, r in data.bad.items()}
    assert set(names) == {'zero.png', 'text.png', 'bomb.png'}  # found from headers at start
    assert 'zero bytes' in names['zero.png'] and 'bomb' in names['bomb.png'] and 'not an image' in names['text.png']
    assert sum('bomb.png' in r.message for r in caplog.records) == 1
    assert len(data) == 5 and data.buckets == [(64, 64)]  # 3 + cut.png (header fine) + nocap.png
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        loader = build_dataloader(data, seed=0)
        got = list(itertools.islice(iter(loader), 8))
    assert all(b['image'].shape == (2, 3, 64, 64) for b in got)
    assert all('cut.png' not in p for b in got for p in b['meta']['img_path'])
    assert loader.tally.skipped >= 1 and sum('cut.png' in r.message for r in caplog.records) == 1
    prompts = {p: t for b in got for p, t in zip(b['meta']['img_path'], b['prompt'])}
    assert prompts[str(folder / 'nocap.png')] == 'a photo'


def test_sources_detected_from_what_the_path_holds(tmp_path):
    folder = make_folder(tmp_path / 'imgs', shapes=[(64, 64), (48, 96)])
    assert sources.detect(str(folder)) == 'folder'
    (folder / 'metadata.jsonl').write_text('\n'.join(json.dumps({'file_name': n, 'text': f'meta {n}'})
                                                     for n in ('00.png', '01.jpg')))
    assert sources.detect(str(folder)) == 'metadata'
    data = build(folder)
    assert sorted(r['captions'][0] for r in data.records) == ['meta 00.png', 'meta 01.jpg']
    (folder / 'metadata.jsonl').unlink()
    (folder / 'list.csv').write_text('Target:FILE,Prompt\n00.png,from csv\n')
    data = build(folder / 'list.csv')
    assert sources.detect(str(folder / 'list.csv')) == 'list' and data.records[0]['captions'] == ['from csv']
    (folder / 'index.txt').write_text('01.jpg#;#96#;#48#;#from txt\n')
    assert build(folder / 'index.txt').records[0]['captions'] == ['from txt']
    (tmp_path / 'shards').mkdir()
    (tmp_path / 'shards' / 'a-000.tar').write_bytes(b'')
    assert sources.detect(str(tmp_path / 'shards')) == 'shards'
    assert sources.shard_urls('x/a-{000..002}.tar') == ['x/a-000.tar', 'x/a-001.tar', 'x/a-002.tar']


def test_several_captions_per_image_and_an_fsspec_folder():
    fs = fsspec.filesystem('memory')
    for i, (h, w) in enumerate([(64, 64), (96, 48)]):
        buf = io.BytesIO()
        gradient_image(h, w, seed=i).save(buf, format='PNG')
        fs.pipe(f'/set/{i}.png', buf.getvalue())
        fs.pipe(f'/set/{i}.caption', f'first {i}\nsecond {i}\n'.encode())
    data = build('memory://set', BATCH_SIZE=1)
    assert [r['captions'] for r in data.records] == [['first 0', 'second 0'], ['first 1', 'second 1']]
    chosen = {data[(0, seed)]['prompt'] for seed in range(20)}
    assert chosen == {'first 0', 'second 0'}


def test_parquet_folder_through_hugging_face_datasets(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    rows = []
    for i, (h, w) in enumerate([(64, 64), (48, 96), (96, 48)]):
        buf = io.BytesIO()
        gradient_image(h, w, seed=i).save(buf, format='PNG')
        rows.append({'image': {'bytes': buf.getvalue(), 'path': f'{i}.png'}, 'text': f'parquet {i}'})
    (tmp_path / 'pq').mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / 'pq' / 'train-0.parquet')
    data = build(tmp_path / 'pq', BATCH_SIZE=1)
    assert sources.detect(str(tmp_path / 'pq')) == 'parquet' and len(data) == 3
    item = data[(1, 0)]
    assert item['original_size'].tolist() == [48, 96] and item['prompt'] == 'parquet 1'


def test_caption_tools():
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    caption = 'cat, sitting, red, fluffy, window'
    shuffled = {make_caption([caption], g(s), shuffle=True, keep=2) for s in range(30)}
    assert len(shuffled) > 3 and all(c.startswith('cat, sitting, ') for c in shuffled)
    assert all(sorted(c.split(', ')) == sorted(caption.split(', ')) for c in shuffled)
    assert make_caption([caption], g(1), shuffle=True, keep=2) == make_caption([caption], g(1), shuffle=True, keep=2)
    dropped = sum(make_caption(['x'], g(s), dropout=0.25) == '' for s in range(400))
    assert 60 < dropped < 140  # 100 expected; binomial sd ~ 8.7
    assert make_caption(['a dog'], g(0), trigger='sks') == 'sks, a dog'
    assert make_caption(['a dog'], g(0), trigger='sks', separator=' ') == 'sks a dog'
    assert make_caption([], g(0), trigger='sks') == 'sks'


def write_shards(folder, out, per_shard: int = 3) -> list:
    """WebDataset shards (written by the webdataset library) of a folder's images and captions."""
    import webdataset as wds
    out.mkdir(parents=True, exist_ok=True)
    images = sorted(p for p in folder.iterdir() if p.suffix in ('.png', '.jpg'))
    urls = []
    for s in range(0, len(images), per_shard):
        urls.append(out / f'shard-{s // per_shard:03d}.tar')
        with wds.TarWriter(str(urls[-1])) as sink:
            for p in images[s:s + per_shard]:
                sample = {'__key__': p.stem, p.suffix[1:]: p.read_bytes()}
                if p.with_suffix('.txt').exists():
                    sample['txt'] = p.with_suffix('.txt').read_text()
                sink.write(sample)
    return urls


def test_webdataset_shards_read_like_the_folder(tmp_path):
    folder = make_folder(tmp_path / 'imgs')
    urls = write_shards(folder, tmp_path / 'shards')
    assert len(urls) == 4 and sources.detect(str(tmp_path / 'shards')) == 'shards'
    a, b = build(folder, CROP='random'), build(tmp_path / 'shards', CROP='random')
    assert sources.detect(str(tmp_path / 'shards' / 'shard-{000..003}.tar')) == 'shards'
    assert len(build(tmp_path / 'shards' / 'shard-{000..001}.tar')) == 6
    assert a.bucket_counts() == b.bucket_counts() and len(a) == len(b) == 12
    for i in range(len(a)):
        x, y = a[(i, i)], b[(i, i)]
        assert x['prompt'] == y['prompt'] and torch.equal(x['image'], y['image'])
        assert b.records[b.entries[i][0]]['img_path'].split('#')[1][:2] == x['meta']['img_path'].rsplit('/', 1)[1][:2]


def test_a_folder_of_a_csv_list_and_its_images(pair_folder):
    data = build(pair_folder)  # conftest: train.csv (Target:FILE, Prompt) and images/ beside it
    assert sources.detect(str(pair_folder)) == 'list' and len(data.records) == 6
    assert data.records[0]['captions'] == ['picture 0, in colour 200']
