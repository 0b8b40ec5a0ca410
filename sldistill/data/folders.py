"""Image folders: ImageNet, Tiny-ImageNet and user folders (``train/<class>/`` + ``val/<class>/``).

Readers return ``(train samples, val samples, class names)`` with samples ``[(path, label)]``;
the images are decoded on access by :class:`sldistill.data.datasets.FileDataset`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from .datasets import DataFormatError, missing_data_error

__all__ = ["IMG_EXTENSIONS", "scan_image_folder", "read_folder", "read_imagenet", "read_tiny_imagenet"]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _images_under(folder: Path) -> list[str]:
    found: list[str] = []
    for dirpath, _, files in os.walk(folder, followlinks=True):
        found.extend(os.path.join(dirpath, f) for f in files if f.lower().endswith(IMG_EXTENSIONS))
    return sorted(found)


def scan_image_folder(folder: str | os.PathLike, classes: Sequence[str] | None = None,
                      kind: str = "folder") -> tuple[list[tuple[str, int]], list[str]]:
    """ImageFolder scan: ``([(path, class index)], class names)`` with classes = sorted sub-folders.

    With ``classes`` given (e.g. the training classes when scanning the validation split),
    labels follow that list and a sub-folder outside it is an error.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise missing_data_error(kind, [folder], f"No folder {folder}.")
    subdirs = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    if not subdirs:
        loose = [f for f in os.listdir(folder) if f.lower().endswith(IMG_EXTENSIONS)]
        detail = (f"{folder} holds {len(loose)} images but no class sub-folders (sort them into "
                  f"one folder per class)." if loose else f"{folder} has no class sub-folders.")
        raise missing_data_error(kind, [folder], detail)
    if classes is None:
        classes = subdirs
    else:
        extra = sorted(set(subdirs) - set(classes))
        if extra:
            raise ValueError(f"{folder} has class folders not in the training set: {extra[:5]}"
                             f"{' ...' if len(extra) > 5 else ''} ({len(classes)} training classes)")
    index = {c: i for i, c in enumerate(classes)}
    samples: list[tuple[str, int]] = []
    for c in subdirs:
        samples.extend((p, index[c]) for p in _images_under(folder / c))
    if not samples:
        raise missing_data_error(kind, [folder], f"No image files ({', '.join(IMG_EXTENSIONS)}) under {folder}.")
    return samples, list(classes)


def _train_val_folders(kind: str, root: Path, nested: Sequence[str] = ()) -> tuple[Path, Path]:
    cands = [root] + [root / n for n in nested]
    for c in cands:
        if (c / "train").is_dir() and (c / "val").is_dir():
            return c / "train", c / "val"
    raise missing_data_error(kind, [c / s for c in cands for s in ("train", "val")], "")


def read_folder(root: str | os.PathLike, kind: str = "folder",
                nested: Sequence[str] = ()) -> tuple[list, list, list[str]]:
    """``(train samples, val samples, class names)`` of a ``train/`` + ``val/`` ImageFolder pair.

    The pair is looked for in ``root``, then in ``root/<n>`` for each name in ``nested``;
    ``kind`` names the dataset in errors.
    """
    train_dir, val_dir = _train_val_folders(kind, Path(root), nested)
    train, classes = scan_image_folder(train_dir, kind=kind)
    empty = sorted(set(range(len(classes))) - {t for _, t in train})
    if empty:
        names = [classes[i] for i in empty[:5]]
        raise missing_data_error(kind, [train_dir], f"Class folders without images: {names}.")
    val, _ = scan_image_folder(val_dir, classes=classes, kind=kind)
    return train, val, classes


def read_imagenet(root: str | os.PathLike) -> tuple[list, list, list[str]]:
    """ImageNet in the ImageFolder layout (validation already sorted into class folders)."""
    return read_folder(root, kind="imagenet", nested=("imagenet",))


def read_tiny_imagenet(root: str | os.PathLike) -> tuple[list, list, list[str]]:
    """Tiny-ImageNet-200 as released (val/images + val_annotations.txt) or with val/ sorted by class.

    Classes are the sorted wnids (the order ImageFolder gives, which published checkpoints use).
    """
    root = Path(root)
    base = root if (root / "wnids.txt").is_file() else root / "tiny-imagenet-200"
    wnids_file = base / "wnids.txt"
    if not wnids_file.is_file() or not (base / "train").is_dir() or not (base / "val").is_dir():
        raise missing_data_error("tiny_imagenet", [base], f"Need {wnids_file}, {base / 'train'} and {base / 'val'}.")
    classes = sorted(w.strip() for w in wnids_file.read_text().split() if w.strip())
    train, _ = scan_image_folder(base / "train", classes=classes, kind="tiny_imagenet")
    present = {t for _, t in train}
    if len(present) != len(classes):
        missing = [classes[i] for i in range(len(classes)) if i not in present][:5]
        raise missing_data_error("tiny_imagenet", [base / "train"], f"No training images for wnids {missing}.")
    ann = base / "val" / "val_annotations.txt"
    index = {c: i for i, c in enumerate(classes)}
    if ann.is_file():
        val = []
        for n, line in enumerate(ann.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 2 or parts[1] not in index:
                raise DataFormatError(f"corrupted annotation file {ann}, line {n}: {line!r}")
            img = base / "val" / "images" / parts[0]
            if not img.is_file():
                raise missing_data_error("tiny_imagenet", [img], f"{ann} lists {parts[0]} but the file is absent.")
            val.append((str(img), index[parts[1]]))
        if not val:
            raise missing_data_error("tiny_imagenet", [ann], "The annotation file lists no images.")
    else:
        val, _ = scan_image_folder(base / "val", classes=classes, kind="tiny_imagenet")
    return train, val, classes
