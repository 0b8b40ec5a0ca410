"""The built-in datasets, registered through the same :func:`register_dataset` as user ones.

Each entry: the published normalisation and image size, the reader of the standard on-disk
layout, the published view transforms and the released CRD sampling rule (negatives without
replacement unless ``K`` exceeds the pool for the CIFAR family and folders, with replacement
for ImageNet and Tiny-ImageNet).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .cifar import ensure_cifar100, read_cifar100
from .fashion_mnist import FASHION_MNIST_SYSTEM_DIR, ensure_fashion_mnist, read_fashion_mnist
from .folders import read_folder, read_imagenet, read_tiny_imagenet
from .registry import DatasetSpec, register_dataset
from .transforms import RandomCropFlip, RandomResizedCropFlip, RandomRotateFlip, ResizeCenterCrop, ToArray

__all__: list[str] = []

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _cifar_views(cfg: Any) -> tuple:
    return RandomCropFlip(32, padding=4), ToArray()


@register_dataset("cifar100", DatasetSpec(
    (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761), 32, 100,
    "ROOT/cifar-100-python/train, ROOT/cifar-100-python/test, ROOT/cifar-100-python/meta",
    "download https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz and extract it into ROOT "
    "(or set DATASET.DOWNLOAD: true on a machine with internet)"), transforms=_cifar_views)
def _read_cifar100(cfg: Any, root: Path, download: bool, rank: int) -> tuple:
    ensure_cifar100(root, download, rank)
    xtr, ytr, classes = read_cifar100(root, train=True)
    xte, yte, _ = read_cifar100(root, train=False)
    return (xtr, ytr), (xte, yte), classes


@register_dataset("imagenet", DatasetSpec(
    IMAGENET_MEAN, IMAGENET_STD, 224, 1000,
    "ROOT/train/<wnid>/*.JPEG and ROOT/val/<wnid>/*.JPEG (validation images sorted into class folders)",
    "get ILSVRC2012 from https://image-net.org (registration needed), extract train/ and val/, and "
    "sort val/ into class folders (e.g. with the widely used valprep.sh script)"),
    transforms=lambda cfg: (RandomResizedCropFlip(224), ResizeCenterCrop(256, 224)), crd_replace=True)
def _read_imagenet(cfg: Any, root: Path, download: bool, rank: int) -> tuple:
    return read_imagenet(root)


@register_dataset("tiny_imagenet", DatasetSpec(
    (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262), 64, 200,
    "ROOT/tiny-imagenet-200/{wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG, "
    "val/val_annotations.txt}",
    "download http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it into ROOT"),
    transforms=lambda cfg: (RandomRotateFlip(20.0), ToArray()), crd_replace=True)
def _read_tiny_imagenet(cfg: Any, root: Path, download: bool, rank: int) -> tuple:
    return read_tiny_imagenet(root)


@register_dataset("fashion_mnist", DatasetSpec(
    (0.2860, 0.2860, 0.2860), (0.3530, 0.3530, 0.3530), 32, 10,
    "ROOT/{train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
    "t10k-labels-idx1-ubyte}[.gz]",
    f"`apt-get install dataset-fashion-mnist` (installs {FASHION_MNIST_SYSTEM_DIR}), or set "
    "DATASET.DOWNLOAD: true on a machine with internet, or copy the four IDX files from "
    "https://github.com/zalandoresearch/fashion-mnist into ROOT"), transforms=_cifar_views)
def _read_fashion_mnist(cfg: Any, root: Path, download: bool, rank: int) -> tuple:
    from .keys import data_option  # not at the top: keys imports this module to name the datasets

    explicit = bool(str(data_option(cfg, "DATASET.ROOT")).strip())
    folder = ensure_fashion_mnist(root, download, rank, system=not explicit)
    xtr, ytr, classes = read_fashion_mnist(folder, train=True)
    xte, yte, _ = read_fashion_mnist(folder, train=False)
    return (xtr, ytr), (xte, yte), classes, folder


# transforms: the default (sized_views at DATASET.IMAGE_SIZE, 0 meaning the spec's 32)
@register_dataset("folder", DatasetSpec(
    IMAGENET_MEAN, IMAGENET_STD, 32, None,
    "ROOT/train/<class_name>/<image files> and ROOT/val/<class_name>/<image files>",
    "arrange your own images into one folder per class under train/ and val/"))
def _read_folder(cfg: Any, root: Path, download: bool, rank: int) -> tuple:
    return read_folder(root, kind="folder")
