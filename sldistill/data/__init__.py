"""Data: datasets by ``DATASET.TYPE``, weak/strong views, loaders, CRD sampling.

Entry points: :func:`build_loaders` (what the trainer uses), :func:`build_datasets` (for your
own loop), :func:`check_num_classes`, and :mod:`sldistill.data.augment` (the strong policy).
"""
from .augment import STRONG_OPS, StrongAugment, apply_op, cutout, normalize_batch, pil_strong_augment
from .datasets import (
    DATASET_TYPES,
    SPECS,
    ArrayDataset,
    DataFormatError,
    FileDataset,
    Views,
    item_rng,
    read_cifar100,
    read_fashion_mnist,
    read_idx,
    read_imagenet,
    read_tiny_imagenet,
    resolve_root,
    scan_image_folder,
    split_key,
)
from .loaders import (
    CRD_TRAINERS,
    TWO_VIEW_TRAINERS,
    BatchCollate,
    ContrastiveDataset,
    Datasets,
    Loaders,
    EpochSampler,
    ShardSampler,
    batch_seed,
    balanced_subset,
    build_datasets,
    build_loaders,
    check_num_classes,
    classifier_out_features,
    view_transforms,
)

__all__ = [
    "STRONG_OPS", "StrongAugment", "apply_op", "cutout", "normalize_batch", "pil_strong_augment",
    "DATASET_TYPES", "SPECS", "ArrayDataset", "DataFormatError", "FileDataset", "Views", "item_rng",
    "split_key", "read_cifar100", "read_fashion_mnist", "read_idx", "read_imagenet", "read_tiny_imagenet",
    "resolve_root", "scan_image_folder", "CRD_TRAINERS", "TWO_VIEW_TRAINERS", "BatchCollate",
    "ContrastiveDataset", "Datasets", "Loaders", "EpochSampler", "ShardSampler", "batch_seed",
    "balanced_subset", "build_datasets", "build_loaders", "check_num_classes", "classifier_out_features",
    "view_transforms",
]
