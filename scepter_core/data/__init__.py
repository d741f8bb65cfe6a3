"""Built-in data: datasets (DATASETS), transforms (TRANSFORMS), samplers (SAMPLERS) and
`build_dataloader`. Importing this package registers them."""
from . import transforms  # noqa: F401  (registers the transforms)
from .base import BaseDataset
from .bucket_dataset import BucketImageDataset
from .bucket_sampler import BucketSampler
from .captions import MakeCaption, make_caption
from .collate import collate
from .errors import BadSampleError
from .image_text import ImageTextPairDataset, ImageTextPairFolderDataset
from .loader import build_dataloader
from .ms_dataset import ImageTextPairMSDataset
from .samplers import EvalDistributedSampler, LoopSampler, mix_seed
from .stream import WebDatasetStream
from .shapes import ShapesDataset, analyse_image, parse_prompt, score_image
from .text2image import Text2ImageDataset

__all__ = ['BaseDataset', 'BadSampleError', 'collate', 'build_dataloader', 'ImageTextPairDataset',
           'ImageTextPairFolderDataset', 'ImageTextPairMSDataset', 'Text2ImageDataset', 'ShapesDataset',
           'BucketImageDataset', 'BucketSampler', 'WebDatasetStream', 'MakeCaption', 'make_caption',
           'LoopSampler', 'EvalDistributedSampler', 'mix_seed', 'score_image', 'parse_prompt', 'analyse_image']
