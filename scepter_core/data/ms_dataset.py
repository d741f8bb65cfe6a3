"""ImageTextPairMSDataset: a ModelScope image-text dataset read from a local copy.

The copy is laid out like the ModelScope dataset (e.g. damo/style_custom_dataset): a
subset folder holding `<split>.csv` (columns Target:FILE or Image:FILE, Prompt and
optionally Style) and the images it names. The folder is `ms://NAMESPACE/NAME@SUBNAME`,
which FS serves from `$SCEPTER_MIRROR/ms/NAMESPACE/NAME/SUBNAME`, or MS_DATASET_PATH."""
from __future__ import annotations

import os

from ..errors import ConfigError
from ..fs import FS, FileNotAvailable
from ..registry import DATASETS
from .image_text import ImageTextDataset


@DATASETS.register_class()
class ImageTextPairMSDataset(ImageTextDataset):
    para_dict = {
        'MS_DATASET_NAME': {'value': '', 'type': str,
                            'description': 'ModelScope dataset name (or a local folder laid out like one).'},
        'MS_DATASET_NAMESPACE': {'value': '', 'type': str, 'description': 'ModelScope namespace (owner).'},
        'MS_DATASET_SUBNAME': {'value': '', 'type': str, 'description': 'Subset name (a sub-folder).'},
        'MS_DATASET_SPLIT': {'value': 'train', 'type': str, 'description': 'Split: reads <split>.csv.'},
        'MS_DATASET_PATH': {'value': None, 'type': str,
                            'description': 'Local subset folder; overrides the ms:// location.'},
        'MS_REMAP_KEYS': {'value': None, 'type': dict,
                          'description': "Column renames, e.g. {'Image:FILE': 'Target:FILE'}."},
        'MS_REMAP_PATH': {'value': None, 'type': str,
                          'description': 'Folder that image paths are relative to (default: the subset folder).'},
    }

    def uri(self) -> str:
        repo = f'{self.cfg.MS_DATASET_NAMESPACE}/{self.cfg.MS_DATASET_NAME}'.strip('/')
        return f'ms://{repo}@{self.cfg.MS_DATASET_SUBNAME}' if self.cfg.MS_DATASET_SUBNAME else f'ms://{repo}'

    def default_data_key(self) -> str:
        return self.cfg.MS_DATASET_SUBNAME

    def subset_folder(self) -> str:
        if self.cfg.MS_DATASET_PATH:
            return self.local_dir(self.cfg.MS_DATASET_PATH, 'MS_DATASET_PATH')
        name = self.cfg.MS_DATASET_NAME
        if not name:
            raise ConfigError(f"'{self.key_path('MS_DATASET_NAME')}': set the ModelScope dataset name "
                              f'(or MS_DATASET_PATH to a local folder)')
        if os.path.isdir(name):  # Scepter accepts a local folder as the name
            sub = os.path.join(name, self.cfg.MS_DATASET_SUBNAME)
            return sub if self.cfg.MS_DATASET_SUBNAME and os.path.isdir(sub) else name
        try:
            return str(FS.get_dir_to_local_dir(self.uri()))
        except FileNotAvailable as e:
            where = FS.hub_to_local(self.uri())
            raise ConfigError(f"'{self.key_path('MS_DATASET_NAME')}': dataset {self.uri()} is not available "
                              f"offline: place '{self.cfg.MS_DATASET_SPLIT}.csv' and its images in '{where}' "
                              f'(or set MS_DATASET_PATH)') from e

    def load_records(self) -> list[dict]:
        folder = self.subset_folder()
        csv_path = os.path.join(folder, f'{self.cfg.MS_DATASET_SPLIT}.csv')
        root = self.cfg.MS_REMAP_PATH or folder
        records = self.read_csv(csv_path, root, 'MS_DATASET_SPLIT', dict(self.cfg.MS_REMAP_KEYS or {}))
        if not self.cfg.MS_REMAP_PATH:
            self._rebase_to_parent(records, folder)
        return records

    @staticmethod
    def _rebase_to_parent(records: list[dict], folder: str) -> None:
        """Some copies list paths from the dataset root ('3D/images/x.png'), not the subset
        folder: when the first image is absent under the subset but present one level up,
        read all paths from there."""
        first = next((r['img_path'] for r in records if 'img_path' in r), None)
        if first is None or os.path.exists(first) or '://' in first:
            return
        parent = os.path.dirname(os.path.normpath(folder))
        rel = os.path.relpath(first, folder)
        if os.path.exists(os.path.join(parent, rel)):
            for r in records:
                if 'img_path' in r:
                    r['img_path'] = os.path.join(parent, os.path.relpath(r['img_path'], folder))

