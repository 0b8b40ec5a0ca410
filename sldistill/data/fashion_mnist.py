"""IDX files and Fashion-MNIST (the four IDX files, gzipped or not, padded from 28 to 32 pixels)."""
from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from .datasets import DataFormatError, missing_data_error, wait_for

__all__ = ["read_idx", "read_fashion_mnist", "find_fashion_mnist", "ensure_fashion_mnist", "fashion_mnist_dirs",
           "FASHION_MNIST_CLASSES", "FASHION_MNIST_SYSTEM_DIR"]

FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

_IDX_DTYPES: dict[int, Any] = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzipped or not, detected from its first bytes) as a numpy array."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(2)
        opener = gzip.open if head == b"\x1f\x8b" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataFormatError(f"corrupted IDX file {path}: {e!r}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataFormatError(f"corrupted IDX file {path}: bad magic number {raw[:4]!r}")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise DataFormatError(f"truncated IDX file {path}: header cut short")
    shape = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    need = int(np.prod(shape)) * dtype.itemsize
    payload = raw[4 + 4 * ndim:]
    if len(payload) != need:
        raise DataFormatError(f"truncated or corrupted IDX file {path}: header says shape {shape} "
                              f"({need} bytes) but {len(payload)} bytes follow")
    return np.frombuffer(payload, dtype=dtype).reshape(shape)


_FMNIST_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                 False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _find_idx(folder: Path, name: str) -> Path | None:
    for cand in (folder / name, folder / f"{name}.gz"):
        if cand.is_file():
            return cand
    return None


def fashion_mnist_dirs(root: Path, system: bool = True) -> list[Path]:
    """Folders searched for the IDX files, in order (the Debian package's folder last, and only
    with ``system``: an explicit ``DATASET.ROOT`` is never silently replaced by it)."""
    dirs = [root, root / "fashion-mnist", root / "fashion_mnist", root / "FashionMNIST" / "raw"]
    return dirs + ([Path(FASHION_MNIST_SYSTEM_DIR)] if system else [])


def find_fashion_mnist(root: Path, system: bool = True) -> Path | None:
    """The first folder of :func:`fashion_mnist_dirs` that holds all four IDX files, or None."""
    names = _FMNIST_FILES[True] + _FMNIST_FILES[False]
    for d in fashion_mnist_dirs(root, system):
        if all(_find_idx(d, n) for n in names):
            return d
    return None


def ensure_fashion_mnist(root: Path, download: bool, rank: int = 0, system: bool = True) -> Path:
    """The folder with the four IDX files, downloading into ``root`` when allowed. ``system``:
    also look in the Debian package's folder (only when no ``DATASET.ROOT`` was given)."""
    found = find_fashion_mnist(root, system)
    if found is not None:
        return found
    looked = fashion_mnist_dirs(root, system)
    if not download:
        raise missing_data_error("fashion_mnist", looked, "DATASET.DOWNLOAD is false.")
    raw = root / "FashionMNIST" / "raw"
    if rank != 0:
        wait_for([raw / f"{n}.gz" for n in _FMNIST_FILES[True] + _FMNIST_FILES[False]])
    else:
        try:
            from torchvision.datasets import FashionMNIST

            FashionMNIST(str(root), train=True, download=True)
        except Exception as e:
            raise missing_data_error("fashion_mnist", looked, f"Download failed: {e!r}.") from e
    found = find_fashion_mnist(root, system)
    if found is None:
        raise missing_data_error("fashion_mnist", looked, "Download did not produce the files.")
    return found


def read_fashion_mnist(folder: str | os.PathLike, train: bool = True) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read Fashion-MNIST IDX files: ``(images uint8 [N, 32, 32, 1] zero-padded from 28x28, labels, names)``."""
    folder = Path(folder)
    img_path, lab_path = (_find_idx(folder, n) for n in _FMNIST_FILES[train])
    if img_path is None or lab_path is None:
        raise missing_data_error("fashion_mnist", [folder], f"Missing: {', '.join(_FMNIST_FILES[train])}.")
    images = read_idx(img_path)
    labels = read_idx(lab_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataFormatError(f"corrupted IDX file {img_path}: expected uint8 images [N, H, W], got {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataFormatError(f"IDX files {img_path} and {lab_path} disagree: {len(images)} images, "
                              f"labels of shape {labels.shape}")
    if len(labels) and int(labels.max()) >= 10:
        raise DataFormatError(f"corrupted IDX file {lab_path}: labels outside 0..9")
    h, w = images.shape[1:]
    ph, pw = max(0, 32 - h), max(0, 32 - w)
    padded = np.pad(images, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)))
    return padded[..., None], labels.astype(np.int64), list(FASHION_MNIST_CLASSES)
