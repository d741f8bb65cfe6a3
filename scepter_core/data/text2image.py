"""Text2ImageDataset: prompts only (for test / inference), NUM_SAMPLES items per prompt."""
from __future__ import annotations

import logging

from ..config import Config
from ..errors import ConfigError
from ..fs import FS
from ..registry import DATASETS
from .base import BaseDataset
from .paths import decode_text


@DATASETS.register_class()
class Text2ImageDataset(BaseDataset):
    """Items are `{'prompt': str, 'meta': {'image_size': [h, w], 'prompt_index': i, 'sample_index': k}}`."""

    para_dict = {
        'PROMPT_FILE': {'value': '', 'type': str, 'description': 'Text file, one prompt per line.'},
        'PROMPT_DATA': {'value': [], 'type': list, 'description': 'Prompts given inline instead of PROMPT_FILE.'},
        'PROMPT_PREFIX': {'value': '', 'type': str, 'description': 'Text put before every prompt.'},
        'IMAGE_SIZE': {'value': 512, 'type': (int, list), 'min': 1, 'max': 65536,
                       'description': 'Output size: an int or [height, width].'},
        'NUM_SAMPLES': {'value': 1, 'type': int, 'description': 'Items (images to make) per prompt.'},
        'FIELDS': {'value': ['prompt'], 'type': list, 'description': 'Columns of a PROMPT_FILE line split by '
                                                                      'DELIMITER; the one named prompt is used.'},
        'DELIMITER': {'value': '#;#', 'type': str, 'description': 'Column separator of PROMPT_FILE lines.'},
    }

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None):
        super().__init__(cfg, logger)
        size = self.cfg.IMAGE_SIZE
        self.image_size = [size, size] if isinstance(size, int) else list(size)
        if len(self.image_size) != 2 or self.cfg.NUM_SAMPLES < 1:
            raise ConfigError(f"'{self.key_path('IMAGE_SIZE')}': need [height, width] and NUM_SAMPLES >= 1, got "
                              f'{size!r} and {self.cfg.NUM_SAMPLES}')
        self.prompts = self._load_prompts()

    def _load_prompts(self) -> list[str]:
        if self.cfg.PROMPT_DATA:
            key, prompts = 'PROMPT_DATA', [str(p).strip() for p in self.cfg.PROMPT_DATA]
        elif self.cfg.PROMPT_FILE:
            key = 'PROMPT_FILE'
            try:
                text = decode_text(FS.get_object(self.cfg.PROMPT_FILE), self.cfg.PROMPT_FILE)
            except (FileNotFoundError, IsADirectoryError) as e:
                raise ConfigError(f"'{self.key_path(key)}': prompt file not found: '{self.cfg.PROMPT_FILE}'") from e
            column = list(self.cfg.FIELDS).index('prompt') if 'prompt' in self.cfg.FIELDS else 0
            prompts = [(line.split(self.cfg.DELIMITER) + [''] * column)[column].strip() for line in text.splitlines()]
        else:
            raise ConfigError(f"'{self.key_path('PROMPT_FILE')}': set PROMPT_FILE or PROMPT_DATA")
        prompts = [p for p in prompts if p]
        if not prompts:
            raise ConfigError(f"'{self.key_path(key)}': the prompt list is empty")
        return prompts

    def num_records(self) -> int:
        return len(self.prompts) * self.cfg.NUM_SAMPLES

    def _get(self, index: int) -> dict:
        prompt_index, sample_index = divmod(index, self.cfg.NUM_SAMPLES)
        return {'index': index, 'prompt': self.cfg.PROMPT_PREFIX + self.prompts[prompt_index],
                'meta': {'image_size': list(self.image_size), 'prompt_index': prompt_index,
                         'sample_index': sample_index}}
