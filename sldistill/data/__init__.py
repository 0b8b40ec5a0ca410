"""Data: a registry of datasets by ``DATASET.TYPE``, weak/strong views, loaders, CRD sampling.

Entry points: :func:`build_loaders` (what the trainer uses; the caller gives the number of
views and the extra batch items it needs), :func:`build_datasets` (for your own loop),
:func:`register_dataset` (a dataset of your own), :data:`DATA_KEYS` (the ``DATASET.*`` keys),
:func:`check_num_classes`, and :mod:`sldistill.data.augment` (the strong policy).

Modules: :mod:`.registry` (entries), :mod:`.builtin` (the five built-in datasets),
:mod:`.datasets` (items, keys, per-item generator), :mod:`.cifar`, :mod:`.fashion_mnist`,
:mod:`.folders` (readers), :mod:`.transforms` (per-image views; the finite ones number them:
:class:`CropFlipGrid`, carried as a training batch's ``view_id``), :mod:`.augment` with
:mod:`.strong_ops` and :mod:`.pil_reference` (the strong policy), :mod:`.sampling`,
:mod:`.contrastive`, :mod:`.collate`, :mod:`.loaders`, :mod:`.keys`, :mod:`.checks`.
"""
from . import builtin as _builtin  # noqa: F401 - registers the built-in datasets
from .augment import STRONG_OPS, StrongAugment, apply_op, cutout, normalize_batch, pil_strong_augment
from .checks import check_num_classes, classifier_out_features
from .cifar import read_cifar100
from .collate import TRAIN_BATCH_KEYS, BatchCollate
from .contrastive import ContrastiveDataset
from .datasets import (
    ArrayDataset,
    DataFormatError,
    FileDataset,
    Views,
    item_rng,
    missing_data_error,
    resolve_root,
    split_key,
)
from .fashion_mnist import read_fashion_mnist, read_idx
from .folders import read_folder, read_imagenet, read_tiny_imagenet, scan_image_folder
from .keys import DATA_KEYS
from .loaders import Datasets, Loaders, balanced_subset, build_datasets, build_loaders, view_transforms
from .registry import (
    DATASET_TYPES,
    SPECS,
    DatasetEntry,
    DatasetSpec,
    available_datasets,
    get_dataset,
    register_dataset,
)
from .sampling import EpochSampler, ShardSampler, batch_seed
from .transforms import CropFlipGrid, finite_view_problem

__all__ = [
    "register_dataset", "available_datasets", "get_dataset", "DatasetSpec", "DatasetEntry", "DATA_KEYS",
    "DATASET_TYPES", "SPECS", "TRAIN_BATCH_KEYS",
    "STRONG_OPS", "StrongAugment", "apply_op", "cutout", "normalize_batch", "pil_strong_augment",
    "ArrayDataset", "DataFormatError", "FileDataset", "Views", "item_rng", "split_key", "missing_data_error",
    "read_cifar100", "read_fashion_mnist", "read_idx", "read_imagenet", "read_tiny_imagenet", "read_folder",
    "resolve_root", "scan_image_folder", "BatchCollate", "ContrastiveDataset", "Datasets", "Loaders",
    "EpochSampler", "ShardSampler", "batch_seed", "balanced_subset", "build_datasets", "build_loaders",
    "check_num_classes", "classifier_out_features", "view_transforms", "CropFlipGrid", "finite_view_problem",
]
