"""CIFAR-100 in the standard python-pickle archive: ``ROOT/cifar-100-python/{train,test,meta}``."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

from .datasets import DataFormatError, missing_data_error, wait_for

__all__ = ["read_cifar100", "ensure_cifar100"]


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError,
            IndexError, KeyError, UnicodeDecodeError) as e:
        raise DataFormatError(f"corrupted CIFAR-100 file {path}: not a readable python pickle ({e!r})") from e
    if not isinstance(obj, dict):
        raise DataFormatError(f"corrupted CIFAR-100 file {path}: expected a dict, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _cifar_dir(root: Path) -> Path:
    return root if root.name == "cifar-100-python" else root / "cifar-100-python"


def read_cifar100(root: str | os.PathLike, train: bool = True) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read the python-pickle CIFAR-100 archive: ``(images uint8 [N, 32, 32, 3], fine labels, class names)``."""
    d = _cifar_dir(Path(root))
    split = d / ("train" if train else "test")
    missing = [p for p in (split, d / "meta") if not p.is_file()]
    if missing:
        raise missing_data_error("cifar100", [d], f"Missing: {', '.join(str(p) for p in missing)}.")
    obj = _unpickle(split)
    for key in ("data", "fine_labels"):
        if key not in obj:
            raise DataFormatError(f"corrupted CIFAR-100 file {split}: no {key!r} entry (found {sorted(obj)})")
    data = np.asarray(obj["data"], dtype=np.uint8)
    labels = np.asarray(obj["fine_labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != len(labels):
        raise DataFormatError(f"corrupted CIFAR-100 file {split}: data of shape {data.shape} for "
                              f"{len(labels)} labels (expected [N, 3072])")
    if len(labels) and (labels.min() < 0 or labels.max() >= 100):
        raise DataFormatError(f"corrupted CIFAR-100 file {split}: fine labels outside 0..99")
    meta = _unpickle(d / "meta")
    names = meta.get("fine_label_names")
    if names is None or len(names) != 100:
        raise DataFormatError(f"corrupted CIFAR-100 file {d / 'meta'}: expected 100 fine_label_names")
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels, classes


def ensure_cifar100(root: Path, download: bool, rank: int = 0) -> None:
    """Download CIFAR-100 into ``root`` when missing and allowed (rank 0; other ranks wait)."""
    d = _cifar_dir(root)
    if all((d / n).is_file() for n in ("train", "test", "meta")) or not download:
        return
    if rank != 0:
        wait_for([d / "train", d / "test", d / "meta"])
        return
    try:
        from torchvision.datasets import CIFAR100

        CIFAR100(str(d.parent), train=True, download=True)
    except Exception as e:  # no internet, proxy, checksum: report with the layout
        raise missing_data_error("cifar100", [d], f"Download failed: {e!r}.") from e
