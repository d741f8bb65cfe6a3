"""What a DATA_DIR-style path holds, read through fsspec into records
`{'img_path', 'captions', 'repeats', 'concept'}` (or, for shards, a list of tar URLs).

Kinds, detected in this order:
- shards:   a `.tar` file, a brace pattern (`data-{000..009}.tar`) or a folder of `.tar` files (WebDataset)
- metadata: a folder with `metadata.jsonl` (`file_name` + `text`/`caption`; Hugging Face's image folder)
- parquet:  `.parquet` files (an image column of bytes and a text column; Hugging Face `datasets`)
- list:     a `.csv` (Target:FILE/Image:FILE, Prompt) or a `.txt` index (`path#;#w#;#h#;#prompt` or one path a line)
- folder:   images, each with an optional sidecar caption (`a.png` + `a.txt` / `a.caption`); a top-level
            `N_concept` folder (kohya) repeats its images N times"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import tarfile
from functools import lru_cache

from ..errors import ConfigError
from .paths import decode_text, row_path

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.webp', '.bmp', '.gif', '.tif', '.tiff')
CAPTION_EXTENSIONS = ('.txt', '.caption')
REPEAT_FOLDER = re.compile(r'^(\d+)_(.+)$')
KINDS = ('shards', 'metadata', 'parquet', 'list', 'folder')


def url_to_fs(path: str):
    import fsspec
    from ..fs import FS
    local = FS.local_or_none(path)
    return fsspec.core.url_to_fs(local if local is not None else path)


def join(root: str, name: str) -> str:
    return name if '://' in name or name.startswith('/') else f"{root.rstrip('/')}/{name}"


def read_bytes(path: str, offset: int = 0, size: int = -1) -> bytes:
    """A file's bytes (or `size` bytes from `offset`) through fsspec: local paths, memory://, s3://, ..."""
    fs, p = url_to_fs(path)
    with fs.open(p, 'rb') as f:
        if offset:
            f.seek(offset)
        return f.read(size)


def read_record(rec: dict) -> bytes:
    """The image bytes of a record: a file, a member of a tar shard, or a parquet row."""
    if 'tar_span' in rec:
        return read_bytes(*rec['tar_span'])
    if 'parquet_row' in rec:
        return parquet_image(*rec['parquet_row'])
    return read_bytes(rec['img_path'])


def record_stat(rec: dict) -> str:
    """The version of a record's file as its file system reports it (size, modification time,
    ETag), with its place in the file: what FileIndex compares instead of reading the bytes."""
    if 'tar_span' in rec:
        path, place = rec['tar_span'][0], rec['tar_span'][1:]
    elif 'parquet_row' in rec:
        path, place = rec['parquet_row'][0], rec['parquet_row'][1:]
    else:
        path, place = rec['img_path'], ()
    fs, p = url_to_fs(path)
    info = fs.info(p)
    return repr((info.get('size'), info.get('mtime', info.get('LastModified', info.get('created'))),
                 info.get('ETag'), *place))


def _url(fs, path: str) -> str:
    """`path` as a URL the same file system reopens (local paths stay plain)."""
    from fsspec.implementations.local import LocalFileSystem
    return path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)


def _listing(path: str) -> tuple[object, str, list[str]]:
    fs, root = url_to_fs(path)
    files = sorted(fs.find(root)) if fs.isdir(root) else []
    return fs, root, files


def detect(path: str) -> str:
    """Which kind of source `path` is (one of KINDS)."""
    if path.endswith('.tar'):
        return 'shards'
    fs, root = url_to_fs(path)
    if not fs.exists(root):
        raise ConfigError(f"DATA_DIR: '{path}' does not exist")
    if fs.isfile(root):
        ext = os.path.splitext(root)[1].lower()
        kinds = {'.jsonl': 'metadata', '.parquet': 'parquet', '.csv': 'list', '.txt': 'list'}
        if ext not in kinds:
            raise ConfigError(f"DATA_DIR: '{path}' is a file of unknown kind (expected .tar, .jsonl, .parquet, "
                              f".csv, .txt, or a folder)")
        return kinds[ext]
    names = {os.path.basename(f) for f in fs.ls(root, detail=False)}
    exts = {os.path.splitext(n)[1].lower() for n in names}
    if '.tar' in exts:
        return 'shards'
    if 'metadata.jsonl' in names:
        return 'metadata'
    if '.parquet' in exts:
        return 'parquet'
    if not exts & set(IMAGE_EXTENSIONS) and '.csv' in exts:
        return 'list'
    return 'folder'


def shard_urls(path: str) -> list[str]:
    """The tar shards of `path`: the file, the expanded brace pattern, or a folder's `.tar` files."""
    if '{' in path:
        import braceexpand
        return list(braceexpand.braceexpand(path))
    fs, root = url_to_fs(path)
    if fs.isfile(root):
        return [path]
    return [join(path, os.path.basename(f)) for f in sorted(fs.ls(root, detail=False)) if f.endswith('.tar')]


def records(path: str, kind: str | None = None, caption_exts: tuple[str, ...] = CAPTION_EXTENSIONS,
            allow_remote: bool = False, allow_outside: bool = False) -> list[dict]:
    """The records of a source (a shard's samples indexed by their byte spans in the tar). The
    flags say which paths list files may name (see paths.row_path)."""
    kind = kind or detect(path)
    rule = {'allow_remote': allow_remote, 'allow_outside': allow_outside}
    readers = {'folder': lambda: folder_records(path, caption_exts), 'metadata': lambda: metadata_records(path, **rule),
               'parquet': lambda: parquet_records(path), 'list': lambda: list_records(path, **rule),
               'shards': lambda: [r for url in shard_urls(path) for r in tar_records(url, caption_exts)]}
    if kind not in readers:
        raise ConfigError(f"DATA_DIR: unknown source kind {kind!r}; one of {', '.join(readers)}")
    found = readers[kind]()
    if not found:
        raise ConfigError(f"DATA_DIR: no images found in '{path}' (read as {kind})")
    return found


def split_captions(text: str) -> list[str]:
    """A sidecar's captions: one per non-empty line (several lines: several captions)."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def folder_records(path: str, caption_exts: tuple[str, ...] = CAPTION_EXTENSIONS) -> list[dict]:
    fs, root, files = _listing(path)
    by_stem = {os.path.splitext(f)[0]: f for f in files if os.path.splitext(f)[1].lower() in caption_exts}
    out = []
    for f in files:
        if os.path.splitext(f)[1].lower() not in IMAGE_EXTENSIONS:
            continue
        rel = os.path.relpath(f, root)
        top = rel.split(os.sep)[0] if os.sep in rel else ''
        m = REPEAT_FOLDER.match(top)
        sidecar = by_stem.get(os.path.splitext(f)[0])
        captions = split_captions(decode_text(fs.cat_file(sidecar), _url(fs, sidecar))) if sidecar else []
        out.append({'img_path': _url(fs, f),
                    'captions': captions, 'has_caption': sidecar is not None,
                    'repeats': int(m.group(1)) if m else 1, 'concept': m.group(2) if m else top})
    return out


def metadata_records(path: str, allow_remote: bool = False, allow_outside: bool = False) -> list[dict]:
    fs, root = url_to_fs(path)
    file = root if fs.isfile(root) else f"{root.rstrip('/')}/metadata.jsonl"
    base = os.path.dirname(file)
    out = []
    for number, line in enumerate(decode_text(fs.cat_file(file), file).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            name = row['file_name']
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"'{file}' line {number}: expected a JSON object with 'file_name' ({e})") from e
        text = row.get('text', row.get('caption', row.get('prompt')))
        captions = [str(t) for t in text] if isinstance(text, list) else [] if text is None else [str(text)]
        where = f"'{file}' line {number}"
        out.append({'img_path': row_path(_url(fs, base), str(name), where, allow_remote, allow_outside),
                    'captions': captions, 'has_caption': text is not None,
                    'repeats': 1, 'concept': ''})
    return out


@lru_cache(maxsize=8)
def _parquet_table(file: str):
    import datasets  # Hugging Face datasets: an Arrow table, memory-mapped, with random row access
    return datasets.Dataset.from_parquet(file, keep_in_memory=False)


def _image_column(table) -> str:
    for name in ('image', 'img', 'jpg', 'png'):
        if name in table.column_names:
            return name
    raise ConfigError(f'parquet: no image column (image/img/jpg/png) among {table.column_names}')


def parquet_image(file: str, row: int) -> bytes:
    table = _parquet_table(file).with_format('arrow')
    value = table[row][_image_column(table)][0].as_py()
    return value['bytes'] if isinstance(value, dict) else value


def parquet_records(path: str) -> list[dict]:
    fs, root = url_to_fs(path)
    files = [root] if fs.isfile(root) else sorted(f for f in fs.find(root) if f.endswith('.parquet'))
    out = []
    for file in files:
        table = _parquet_table(file)
        text_col = next((c for c in ('text', 'caption', 'prompt') if c in table.column_names), None)
        texts = table[text_col] if text_col else [None] * len(table)
        _image_column(table)
        for row, text in enumerate(texts):
            out.append({'img_path': f'{file}#{row}', 'parquet_row': (file, row), 'captions': [] if text is None else [str(text)],
                        'has_caption': text is not None, 'repeats': 1, 'concept': ''})
    return out


def list_records(path: str, allow_remote: bool = False, allow_outside: bool = False) -> list[dict]:
    fs, file = url_to_fs(path)
    if fs.isdir(file):  # a folder of images listed by its CSV: train.csv, else its only .csv
        csvs = sorted(f for f in fs.ls(file, detail=False) if f.endswith('.csv'))
        chosen = [f for f in csvs if f.endswith('/train.csv')] or csvs
        if len(chosen) != 1:
            raise ConfigError(f"DATA_DIR: '{path}' holds {len(csvs)} CSV lists; name one of them")
        file, path = chosen[0], join(path, os.path.basename(chosen[0]))
    text = decode_text(fs.cat_file(file), path)
    base = os.path.dirname(path) or '.'  # a root, so that the list's rows stay under it
    rule = {'allow_remote': allow_remote, 'allow_outside': allow_outside}
    out = []
    if file.endswith('.csv'):
        reader = csv.DictReader(io.StringIO(text))
        columns = reader.fieldnames or []
        col = next((c for c in ('Target:FILE', 'Image:FILE') if c in columns), None)
        if col is None:
            raise ConfigError(f"'{path}': a CSV list needs a Target:FILE or Image:FILE column; it has {columns}")
        for row in reader:
            where = f"'{path}' line {reader.line_num}"
            if not (row.get(col) or '').strip():
                raise ConfigError(f'{where}: no {col} value')
            prompt = (row.get('Prompt') or '').strip()
            out.append({'img_path': row_path(base, row[col], where, **rule), 'captions': [prompt] if prompt else [],
                        'has_caption': bool(prompt), 'repeats': 1, 'concept': ''})
        return out
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            parts = [p.strip() for p in line.split('#;#')]
            prompt = parts[-1] if len(parts) > 1 else ''
            out.append({'img_path': row_path(base, parts[0], f"'{path}' line {number}", **rule),
                        'captions': [prompt] if prompt else [],
                        'has_caption': bool(prompt), 'repeats': 1, 'concept': ''})
    return out


def tar_records(url: str, caption_exts: tuple[str, ...] = CAPTION_EXTENSIONS) -> list[dict]:
    """The samples of a WebDataset shard: members grouped by key (the name up to the first dot of
    its base name), the image found by extension, captions from `.txt`/`.caption`/`.json`."""
    fs, p = url_to_fs(url)
    members: dict[str, dict[str, tuple[int, int]]] = {}
    try:
        with fs.open(p, 'rb') as f, tarfile.open(fileobj=f, mode='r:') as tar:
            for m in tar:  # headers only: tarfile seeks over the data
                if m.isfile():
                    folder, _, base = m.name.rpartition('/')
                    key, _, ext = base.partition('.')
                    members.setdefault(f'{folder}/{key}' if folder else key, {})['.' + ext.lower()] = \
                        (m.offset_data, m.size)
    except tarfile.TarError as e:
        raise ConfigError(f"DATA_DIR: '{url}' is not a readable tar shard ({e})") from e
    out = []
    for key, exts in members.items():
        image_ext = next((e for e in IMAGE_EXTENSIONS if e in exts), None)
        if image_ext is None:
            continue
        captions, has_caption = [], False
        for ext in (*caption_exts, '.json'):
            if ext in exts:
                text = decode_text(read_bytes(url, *exts[ext]), f'{url}#{key}{ext}')
                if ext == '.json':
                    row = json.loads(text) if text.strip() else {}
                    text = str(row.get('caption', row.get('text', ''))) if isinstance(row, dict) else ''
                captions, has_caption = split_captions(text), True
                break
        out.append({'img_path': f'{url}#{key}{image_ext}', 'tar_span': (url, *exts[image_ext]),
                    'captions': captions, 'has_caption': has_caption, 'repeats': 1, 'concept': ''})
    return out
