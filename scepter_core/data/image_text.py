"""Image-text pair datasets read from local (or FS-served) files: a CSV folder, and an
index file of `path#;#width#;#height#;#prompt` lines."""
from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path

from ..config import Config
from ..errors import ConfigError
from ..fs import FS, FileNotAvailable
from ..registry import DATASETS
from .base import BaseDataset
from .paths import PATH_KEYS, decode_text, row_path

IMAGE_COLUMNS = ('Target:FILE', 'Image:FILE')
PROMPT_COLUMN = 'Prompt'
STYLE_COLUMN = 'Style'


class ImageTextDataset(BaseDataset):
    """Shared by the pair datasets: records of {img_path, prompt, style} and how prompts
    and meta are formed from them."""

    para_dict = {
        'PROMPT_PREFIX': {'value': '', 'type': str, 'description': 'Text put before every prompt.'},
        'TRIGGER_WORDS': {'value': '', 'type': str,
                          'description': 'Words put before every prompt, followed by a space.'},
        'REPLACE_STYLE': {'value': False,
                          'description': "Replace the row's Style word in the prompt by <KEYWORDS_SIGN>."},
        'KEYWORDS_SIGN': {'value': '', 'type': str, 'description': 'Placeholder used by REPLACE_STYLE.'},
        'OUTPUT_SIZE': {'value': None, 'type': (int, list),
                        'description': "[height, width] (or an int) passed as meta 'image_size'; in "
                                       'eval/test mode items then carry only the prompt and this size.'},
        **PATH_KEYS,
    }

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None):
        super().__init__(cfg, logger)
        size = self.cfg.OUTPUT_SIZE
        self.output_size = None if size is None else [size, size] if isinstance(size, int) else list(size)
        self.records: list[dict] = self.load_records()

    def load_records(self) -> list[dict]:
        raise NotImplementedError(f'{type(self).__name__} does not implement load_records')

    @property
    def prompt_only(self) -> bool:
        return self.mode != 'train' and self.output_size is not None

    def num_records(self) -> int:
        return len(self.records)

    def default_data_key(self) -> str:
        return ''

    def make_prompt(self, record: dict) -> str:
        prompt, style = record['prompt'], record.get('style') or ''
        if self.cfg.REPLACE_STYLE and style:
            prompt = prompt.replace(style, f'<{self.cfg.KEYWORDS_SIGN}>')
        if self.cfg.TRIGGER_WORDS.strip():
            prompt = f'{self.cfg.TRIGGER_WORDS.strip()} {prompt}'
        return self.cfg.PROMPT_PREFIX + prompt

    def _get(self, index: int) -> dict:
        record = self.records[index]
        meta = {'data_key': record.get('style') or self.default_data_key()}
        if not self.prompt_only:
            meta.update({k: v for k, v in record.items() if k not in ('prompt', 'style')})
            meta['data_num'] = len(self.records)
        if self.output_size is not None:
            meta['image_size'] = list(self.output_size)
        return {'meta': meta, 'prompt': self.make_prompt(record)}

    # ---- file helpers -----------------------------------------------------------------------
    def local_dir(self, path: str, key: str) -> str:
        """A local directory for `path` (FS resolves ms:// mirrors and remote paths)."""
        try:
            local = str(FS.get_dir_to_local_dir(str(path)))
        except FileNotAvailable as e:
            raise ConfigError(f"'{self.key_path(key)}': {e}") from e
        if not os.path.isdir(local):
            raise ConfigError(f"'{self.key_path(key)}': folder not found: '{path}'")
        return local

    def row_path(self, root: str, name: str, where: str) -> str:
        return row_path(root, name, where, bool(self.cfg.ALLOW_REMOTE_PATHS), bool(self.cfg.ALLOW_OUTSIDE_ROOT))

    def read_csv(self, csv_path: str, image_root: str, key: str, remap: dict | None = None) -> list[dict]:
        """Rows of a CSV with an image column (Target:FILE or Image:FILE) and Prompt."""
        if not os.path.isfile(csv_path):
            found = ', '.join(sorted(p.name for p in Path(csv_path).parent.glob('*.csv'))) or 'none'
            raise ConfigError(f"'{self.key_path(key)}': list file not found: '{csv_path}' (CSV files there: {found})")
        with open(csv_path, 'rb') as f:
            reader = csv.DictReader(io.StringIO(decode_text(f.read(), csv_path), newline=''))
        columns = [(remap or {}).get(c, c) for c in reader.fieldnames or []]
        reader.fieldnames = columns
        image_col = next((c for c in IMAGE_COLUMNS if c in columns), None)
        if PROMPT_COLUMN not in columns or (image_col is None and not self.prompt_only):
            missing = [] if image_col or self.prompt_only else [' or '.join(IMAGE_COLUMNS)]
            missing += [PROMPT_COLUMN] if PROMPT_COLUMN not in columns else []
            raise ConfigError(f"'{self.key_path(key)}': '{csv_path}' lacks the column {' and '.join(missing)}; "
                              f"it has {columns}")
        records = []
        for row in reader:
            record = {'prompt': (row.get(PROMPT_COLUMN) or '').strip(), 'style': row.get(STYLE_COLUMN) or ''}
            where = f"'{csv_path}' line {reader.line_num}"
            if image_col and (row.get(image_col) or '').strip():
                record['img_path'] = self.row_path(image_root, row[image_col], where)
            elif not self.prompt_only:
                raise ConfigError(f'{where}: no {image_col} value')
            records.append(record)
        if not records:
            raise ConfigError(f"'{self.key_path(key)}': '{csv_path}' has no rows")
        return records


@DATASETS.register_class()
class ImageTextPairFolderDataset(ImageTextDataset):
    """DATA_FOLDER holding CSV_FILE (header `Target:FILE,Prompt`) and the images it names,
    with paths relative to the folder."""

    para_dict = {
        'DATA_FOLDER': {'value': '', 'type': str, 'description': 'Folder of the CSV file and its images.'},
        'CSV_FILE': {'value': 'train.csv', 'type': str, 'description': 'List file inside DATA_FOLDER.'},
    }

    def load_records(self) -> list[dict]:
        if not self.cfg.DATA_FOLDER:
            raise ConfigError(f"'{self.key_path('DATA_FOLDER')}': set the dataset folder")
        folder = self.local_dir(self.cfg.DATA_FOLDER, 'DATA_FOLDER')
        return self.read_csv(os.path.join(folder, self.cfg.CSV_FILE), folder, 'CSV_FILE')


@DATASETS.register_class()
class ImageTextPairDataset(ImageTextDataset):
    """An index of `path#;#width#;#height#;#prompt` lines (INDEX_FILE, or DATA_LIST inline);
    relative paths are taken under DATA_ROOT."""

    para_dict = {
        'DATA_ROOT': {'value': '', 'type': str, 'description': 'Folder that relative image paths are under.'},
        'INDEX_FILE': {'value': '', 'type': str, 'description': 'Index file, one sample per line.'},
        'DATA_LIST': {'value': [], 'type': list, 'description': 'Index lines given inline instead of INDEX_FILE.'},
        'DELIMITER': {'value': '#;#', 'type': str, 'description': 'Field separator of index lines.'},
        'FIELDS': {'value': ['img_path', 'width', 'height', 'prompt'], 'type': list,
                   'description': "Field names of a line; 'img_path' and 'prompt' are required."},
    }

    def load_records(self) -> list[dict]:
        fields = list(self.cfg.FIELDS)
        if 'prompt' not in fields or ('img_path' not in fields and not self.prompt_only):
            raise ConfigError(f"'{self.key_path('FIELDS')}': {fields} must name 'img_path' and 'prompt'")
        source, lines = self._index_lines()
        records = []
        for number, line in lines:
            parts = line.split(self.cfg.DELIMITER, len(fields) - 1)
            if len(parts) != len(fields):
                raise ConfigError(f"'{source}' line {number}: expected {len(fields)} fields {fields} separated "
                                  f"by '{self.cfg.DELIMITER}', got {line!r}")
            record = dict(zip(fields, (p.strip() for p in parts)))
            for key in ('width', 'height'):
                if key in record:
                    record[key] = self._int(record[key], source, number, key)
            if 'img_path' in record and (record['img_path'] or not self.prompt_only):
                record['img_path'] = self.row_path(self.cfg.DATA_ROOT, record['img_path'], f"'{source}' line {number}")
            records.append(record)
        if not records:
            raise ConfigError(f"'{source}': the index has no samples")
        return records

    def _index_lines(self) -> tuple[str, list[tuple[int, str]]]:
        if self.cfg.DATA_LIST:
            source, text = self.key_path('DATA_LIST'), '\n'.join(map(str, self.cfg.DATA_LIST))
        elif self.cfg.INDEX_FILE:
            source = self.cfg.INDEX_FILE
            try:
                text = decode_text(FS.get_object(source), source)
            except (FileNotFoundError, IsADirectoryError) as e:
                raise ConfigError(f"'{self.key_path('INDEX_FILE')}': index file not found: '{source}'") from e
        else:
            raise ConfigError(f"'{self.key_path('INDEX_FILE')}': set INDEX_FILE (or DATA_LIST)")
        return source, [(i + 1, ln) for i, ln in enumerate(text.splitlines()) if ln.strip()]

    @staticmethod
    def _int(value: str, source: str, number: int, key: str) -> int:
        try:
            return int(value)
        except ValueError as e:
            raise ConfigError(f"'{source}' line {number}: {key} must be an integer, got {value!r}") from e
