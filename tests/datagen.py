"""Write tiny datasets in the real on-disk formats (for tests and CLI smoke runs).

Each writer returns the root folder to give as ``DATASET.ROOT``. Images are random but
seeded; labels cycle through the classes so every class is present.
"""
from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def write_cifar100(root: str | Path, n_train: int = 200, n_test: int = 100, seed: int = 0) -> Path:
    """``root/cifar-100-python/{train,test,meta}`` as the standard python-pickle archive."""
    root = Path(root)
    d = root / "cifar-100-python"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        fine = [i % 100 for i in range(n)]
        obj = {
            b"filenames": [f"img_{i}.png".encode() for i in range(n)],
            b"batch_label": f"{split} batch".encode(),
            b"fine_labels": fine,
            b"coarse_labels": [f // 5 for f in fine],
            b"data": data,
        }
        with open(d / split, "wb") as f:
            pickle.dump(obj, f, protocol=2)
    meta = {
        b"fine_label_names": [f"class_{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"super_{i}".encode() for i in range(20)],
    }
    with open(d / "meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return root


def _write_png(path: Path, rng: np.random.Generator, size: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    arr = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)


def write_image_folder(root: str | Path, n_classes: int = 3, per_class: int = 4, size: int = 40,
                       seed: int = 0, ext: str = ".png", splits: tuple[str, ...] = ("train", "val")) -> Path:
    """``root/{train,val}/<class_k>/img_i.png``: the ImageFolder layout (ImageNet, custom folders)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split in splits:
        for c in range(n_classes):
            for i in range(per_class):
                _write_png(root / split / f"class_{c:02d}" / f"img_{i}{ext}", rng, size)
    return root


def write_tiny_imagenet(root: str | Path, n_classes: int = 3, per_class: int = 4, n_val: int = 6,
                        size: int = 64, seed: int = 0) -> Path:
    """``root/tiny-imagenet-200`` with wnids.txt, train/<wnid>/images/, val/images + val_annotations.txt."""
    root = Path(root)
    base = root / "tiny-imagenet-200"
    rng = np.random.default_rng(seed)
    wnids = [f"n{c:08d}" for c in range(n_classes)]
    base.mkdir(parents=True, exist_ok=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (base / "words.txt").write_text("".join(f"{w}\tthing {i}\n" for i, w in enumerate(wnids)))
    for w in wnids:
        lines = []
        for i in range(per_class):
            name = f"{w}_{i}.JPEG"
            _write_png(base / "train" / w / "images" / name, rng, size)
            lines.append(f"{name}\t0\t0\t{size - 1}\t{size - 1}\n")
        (base / "train" / w / f"{w}_boxes.txt").write_text("".join(lines))
    ann = []
    for i in range(n_val):
        name = f"val_{i}.JPEG"
        _write_png(base / "val" / "images" / name, rng, size)
        ann.append(f"{name}\t{wnids[i % n_classes]}\t0\t0\t{size - 1}\t{size - 1}\n")
    (base / "val" / "val_annotations.txt").write_text("".join(ann))
    return root


def _idx_images(arr: np.ndarray) -> bytes:
    return struct.pack(">IIII", 2051, arr.shape[0], arr.shape[1], arr.shape[2]) + arr.tobytes()


def _idx_labels(arr: np.ndarray) -> bytes:
    return struct.pack(">II", 2049, arr.shape[0]) + arr.astype(np.uint8).tobytes()


def write_fashion_mnist(root: str | Path, n_train: int = 200, n_test: int = 100, seed: int = 0,
                        gz: bool = True) -> Path:
    """The four IDX files (``train-images-idx3-ubyte[.gz]`` ...) directly under ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        imgs = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = np.arange(n) % 10
        for kind, payload in (("images-idx3-ubyte", _idx_images(imgs)), ("labels-idx1-ubyte", _idx_labels(labels))):
            name = f"{prefix}-{kind}"
            if gz:
                with gzip.open(root / f"{name}.gz", "wb") as f:
                    f.write(payload)
            else:
                (root / name).write_bytes(payload)
    return root


def write_published_teacher(teacher_root: str | Path, name: str, num_classes: int = 100, seed: int = 0) -> Path:
    """A freshly initialised zoo model saved as a published teacher checkpoint
    (``{"model": state_dict}``) at ``teacher_root/cifar_teachers/<name>_vanilla/ckpt_epoch_240.pth``;
    returns the file's path."""
    import torch

    from sldistill import models

    torch.manual_seed(seed)
    model = models.create(name, num_classes=num_classes, dataset="cifar100")
    path = Path(teacher_root) / "cifar_teachers" / f"{name}_vanilla" / "ckpt_epoch_240.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict()}, path)
    return path
