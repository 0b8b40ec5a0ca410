"""Readers for the standard on-disk dataset layouts and the datasets built on them.

Every dataset returns ``(views, target, index)`` where ``views`` is a tuple of ``uint8``
``H x W x 3`` arrays, one per view transform (one for single-view training and validation,
two for the weak/strong mode). Normalisation and the strong policy run per batch in the
collate step (:class:`sldistill.data.loaders.BatchCollate`).

Keys: ``dataset[i]`` (epoch 0) or ``dataset[(epoch, i)]`` (what the training sampler
yields). The random draws of an item come from :func:`item_rng` ``(seed, epoch, i)``, so
they depend on nothing else: not on the process, the worker or what was drawn before.

Layouts (``root`` is ``DATASET.ROOT``, else ``$SLDISTILL_DATA``, else ``./data``):

* ``cifar100``: ``root/cifar-100-python/{train,test,meta}`` (the python-pickle archive);
* ``imagenet``: ``root/train/<class>/*.JPEG`` and ``root/val/<class>/*.JPEG`` (or ``root/imagenet/...``);
* ``tiny_imagenet``: ``root/tiny-imagenet-200/`` with ``wnids.txt``, ``train/<wnid>/images/``
  and ``val/images/`` + ``val/val_annotations.txt`` (or ``val/<wnid>/``);
* ``fashion_mnist``: the four IDX files (``.gz`` or not) under ``root`` (or ``root/fashion-mnist``,
  ``root/FashionMNIST/raw``), or ``/usr/share/datasets/fashion-mnist``;
* ``folder``: ``root/train/<class>/...`` and ``root/val/<class>/...`` of any images.
"""
from __future__ import annotations

import gzip
import operator
import os
import pickle
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, Union

import numpy as np
from PIL import Image

__all__ = [
    "DataFormatError",
    "DatasetSpec",
    "ItemKey",
    "Views",
    "split_key",
    "item_rng",
    "SPECS",
    "ArrayDataset",
    "FileDataset",
    "resolve_root",
    "read_cifar100",
    "read_idx",
    "read_fashion_mnist",
    "scan_image_folder",
    "read_imagenet",
    "read_tiny_imagenet",
    "read_folder",
    "DATASET_TYPES",
    "IMG_EXTENSIONS",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_SYSTEM_DIR",
]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DATASET_TYPES = ("cifar100", "imagenet", "tiny_imagenet", "fashion_mnist", "folder")

Transform = Callable[[Any, np.random.Generator], np.ndarray]


class DataFormatError(ValueError):
    """A dataset file exists but cannot be read as the expected format (the message names it)."""


@dataclass(frozen=True)
class DatasetSpec:
    """Published per-dataset constants: normalisation, image size, class count (if fixed)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int
    num_classes: int | None
    layout: str
    obtain: str


_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

SPECS: dict[str, DatasetSpec] = {
    "cifar100": DatasetSpec(
        (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761), 32, 100,
        "ROOT/cifar-100-python/train, ROOT/cifar-100-python/test, ROOT/cifar-100-python/meta",
        "download https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz and extract it into ROOT "
        "(or set DATASET.DOWNLOAD: true on a machine with internet)"),
    "imagenet": DatasetSpec(
        _IMAGENET_MEAN, _IMAGENET_STD, 224, 1000,
        "ROOT/train/<wnid>/*.JPEG and ROOT/val/<wnid>/*.JPEG (validation images sorted into class folders)",
        "get ILSVRC2012 from https://image-net.org (registration needed), extract train/ and val/, and "
        "sort val/ into class folders (e.g. with the widely used valprep.sh script)"),
    "tiny_imagenet": DatasetSpec(
        (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262), 64, 200,
        "ROOT/tiny-imagenet-200/{wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG, "
        "val/val_annotations.txt}",
        "download http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it into ROOT"),
    "fashion_mnist": DatasetSpec(
        (0.2860, 0.2860, 0.2860), (0.3530, 0.3530, 0.3530), 32, 10,
        "ROOT/{train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
        "t10k-labels-idx1-ubyte}[.gz]",
        f"`apt-get install dataset-fashion-mnist` (installs {FASHION_MNIST_SYSTEM_DIR}), or set "
        "DATASET.DOWNLOAD: true on a machine with internet, or copy the four IDX files from "
        "https://github.com/zalandoresearch/fashion-mnist into ROOT"),
    "folder": DatasetSpec(
        _IMAGENET_MEAN, _IMAGENET_STD, 32, None,
        "ROOT/train/<class_name>/<image files> and ROOT/val/<class_name>/<image files>",
        "arrange your own images into one folder per class under train/ and val/"),
}


def _missing(kind: str, looked: Sequence[Path | str], detail: str = "") -> FileNotFoundError:
    spec = SPECS[kind]
    where = ", ".join(str(p) for p in looked)
    msg = (f"{kind} data not found or incomplete: looked at {where}. {detail}"
           f"\nExpected layout: {spec.layout}"
           f"\nHow to obtain it: {spec.obtain}"
           f"\nSet the folder with DATASET.ROOT or the SLDISTILL_DATA environment variable.")
    return FileNotFoundError(msg)


def resolve_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: ``root`` if given and non-empty, else ``$SLDISTILL_DATA``, else ``./data``."""
    if root:
        return Path(root).expanduser()
    env = os.environ.get("SLDISTILL_DATA", "")
    return Path(env).expanduser() if env else Path("data")


# ---------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------

ItemKey = Union[int, "tuple[int, int]"]
"""A dataset key: a plain index (epoch 0) or ``(epoch, index)`` as :class:`EpochSampler` yields."""

_MASK64 = 2**64 - 1
_ITEM_STREAM = 0x1AE7  # tags the per-item stream apart from the per-batch one (loaders.py)


def split_key(key: Any, length: int | None = None) -> tuple[int, int]:
    """``(epoch, index)`` of a dataset key: ``(epoch, index)`` or a plain index (epoch 0).

    A negative index counts from the end when ``length`` is given. Raises ``TypeError`` for
    anything that is not an integer index or a pair of them.
    """
    if isinstance(key, (tuple, list)):
        if len(key) != 2:
            raise TypeError(f"a dataset key is an index or (epoch, index), got {key!r}")
        epoch, index = operator.index(key[0]), operator.index(key[1])
    else:
        try:
            epoch, index = 0, operator.index(key)
        except TypeError:
            raise TypeError(f"a dataset key is an integer index or (epoch, index), got {key!r} "
                            f"({type(key).__name__})") from None
    if epoch < 0:
        raise ValueError(f"the epoch of a dataset key must be >= 0, got {epoch}")
    if length is not None:
        if index < 0:
            index += length
        if not 0 <= index < length:
            raise IndexError(f"index {index} out of range for a dataset of {length} items")
    return int(epoch), int(index)


def _item_key_counter(seed: int, epoch: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    # Philox is a counter-based generator: distinct keys give independent streams, and the
    # counters of different indices start 2**128 blocks apart, so streams never overlap.
    key = np.array([int(seed) & _MASK64, int(epoch) & _MASK64], dtype=np.uint64)
    counter = np.array([0, 0, int(index) & _MASK64, _ITEM_STREAM], dtype=np.uint64)
    return key, counter


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one item's random draws: a pure function of ``(seed, epoch, index)``.

    Views (crops, flips, rotations) and CRD's contrast indices of sample ``index`` in epoch
    ``epoch`` come from it, whichever process draws them and whatever it drew before. It is
    a Philox generator keyed by ``(seed, epoch)`` whose counter starts at a block given by
    ``index``.
    """
    key, counter = _item_key_counter(seed, epoch, index)
    return np.random.Generator(np.random.Philox(counter=counter, key=key))


class _ItemRNG:
    """:func:`item_rng` without building a generator per item: one Philox generator per thread,
    re-keyed for each item (about 1 us instead of 8 us; the same stream). The generator it
    returns is valid until the next call in the same thread."""

    def __init__(self) -> None:
        self._local = threading.local()

    def __call__(self, seed: int, epoch: int, index: int) -> np.random.Generator:
        loc = self._local
        gen = getattr(loc, "gen", None)
        if gen is None:
            gen = loc.gen = np.random.Generator(np.random.Philox(0))
            loc.state = gen.bit_generator.state
        key, counter = _item_key_counter(seed, epoch, index)
        state = loc.state
        state["state"]["key"] = key
        state["state"]["counter"] = counter
        state["buffer_pos"] = 4  # buffer empty: the next draw runs the cipher on `counter`
        state["has_uint32"] = 0
        state["uinteger"] = 0
        gen.bit_generator.state = state
        return gen

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()  # type: ignore[misc]


class Views(tuple):
    """The view arrays of one item (a plain tuple otherwise), carrying the ``epoch`` they were
    drawn for, so that the collate step can key the batched strong policy on it."""

    epoch: int

    def __new__(cls, arrays: Iterable[np.ndarray], epoch: int = 0) -> "Views":
        obj = super().__new__(cls, arrays)
        obj.epoch = int(epoch)
        return obj

    def __reduce__(self) -> tuple:
        return (Views, (tuple(self), self.epoch))


class _ViewsDataset:
    """Common part: targets, classes, the view transforms and the keyed randomness.

    ``dataset[key]`` with ``key`` an index (epoch 0) or ``(epoch, index)``: the view
    transforms draw from :func:`item_rng` ``(seed, epoch, index)``.
    """

    targets: np.ndarray
    classes: list[str]

    def __init__(self, views: Sequence[Transform], seed: int = 0) -> None:
        self.views = tuple(views)
        self.seed = int(seed)
        self._item_rng = _ItemRNG()

    @property
    def num_classes(self) -> int:
        """Number of classes (from the dataset's class list, not from the labels present)."""
        return len(self.classes)

    def _load(self, index: int) -> Any:
        raise NotImplementedError

    def item_rng(self, epoch: int, index: int) -> np.random.Generator:
        """The generator of item ``index``'s draws in ``epoch``: :func:`item_rng`'s stream, from
        a generator this thread re-keys per item (use it before asking for the next item's)."""
        return self._item_rng(self.seed, epoch, index)

    def item(self, index: int, rng: np.random.Generator, epoch: int = 0) -> tuple[Views, int, int]:
        """``(views, target, index)`` of sample ``index`` with the view transforms drawing from ``rng``."""
        img = self._load(index)
        return Views((t(img, rng) for t in self.views), epoch), int(self.targets[index]), int(index)

    def __getitem__(self, key: ItemKey) -> tuple[Views, int, int]:
        epoch, index = split_key(key, len(self))
        return self.item(index, self.item_rng(epoch, index), epoch)

    def __len__(self) -> int:
        return len(self.targets)


class ArrayDataset(_ViewsDataset):
    """Images held in memory as a ``uint8`` array ``[N, H, W, C]`` (CIFAR-100, Fashion-MNIST)."""

    def __init__(self, data: np.ndarray, targets: Sequence[int] | np.ndarray, classes: Sequence[str],
                 views: Sequence[Transform], seed: int = 0) -> None:
        super().__init__(views, seed)
        if data.ndim != 4 or data.dtype != np.uint8:
            raise ValueError(f"expected uint8 images [N, H, W, C], got {data.shape} {data.dtype}")
        self.data = data
        self.targets = np.asarray(targets, dtype=np.int64)
        self.classes = list(classes)
        if len(self.data) != len(self.targets):
            raise ValueError(f"{len(self.data)} images but {len(self.targets)} labels")

    def _load(self, index: int) -> np.ndarray:
        return self.data[index]

    def subset(self, indices: Sequence[int] | np.ndarray) -> "ArrayDataset":
        """A dataset over ``indices`` only (re-indexed from 0), same transforms and classes."""
        idx = np.asarray(indices, dtype=np.int64)
        return ArrayDataset(self.data[idx], self.targets[idx], self.classes, self.views, self.seed)

    def with_views(self, views: Sequence[Transform]) -> "ArrayDataset":
        """The same images with other view transforms."""
        return ArrayDataset(self.data, self.targets, self.classes, views, self.seed)


class FileDataset(_ViewsDataset):
    """Images read from files (ImageNet, Tiny-ImageNet, user folders): ``samples = [(path, target)]``."""

    def __init__(self, samples: Sequence[tuple[str, int]], classes: Sequence[str],
                 views: Sequence[Transform], seed: int = 0) -> None:
        super().__init__(views, seed)
        self.samples = [(str(p), int(t)) for p, t in samples]
        self.targets = np.asarray([t for _, t in self.samples], dtype=np.int64)
        self.classes = list(classes)

    def _load(self, index: int) -> Image.Image:
        path = self.samples[index][0]
        try:
            with open(path, "rb") as f:
                img = Image.open(f)
                return img.convert("RGB")
        except (OSError, SyntaxError, ValueError) as e:
            raise DataFormatError(f"cannot read image file {path}: {e}") from e

    def subset(self, indices: Sequence[int] | np.ndarray) -> "FileDataset":
        """A dataset over ``indices`` only (re-indexed from 0), same transforms and classes."""
        return FileDataset([self.samples[int(i)] for i in indices], self.classes, self.views, self.seed)

    def with_views(self, views: Sequence[Transform]) -> "FileDataset":
        """The same files with other view transforms."""
        return FileDataset(self.samples, self.classes, views, self.seed)


# ---------------------------------------------------------------------------------------------
# CIFAR-100
# ---------------------------------------------------------------------------------------------

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
        raise _missing("cifar100", [d], f"Missing: {', '.join(str(p) for p in missing)}.")
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
        _wait_for([d / "train", d / "test", d / "meta"])
        return
    try:
        from torchvision.datasets import CIFAR100

        CIFAR100(str(d.parent), train=True, download=True)
    except Exception as e:  # no internet, proxy, checksum: report with the layout
        raise _missing("cifar100", [d], f"Download failed: {e!r}.") from e


def _wait_for(paths: Sequence[Path], timeout: float = 1800.0) -> None:
    t0 = time.monotonic()
    while not all(p.exists() for p in paths) and time.monotonic() - t0 < timeout:
        time.sleep(5.0)


# ---------------------------------------------------------------------------------------------
# IDX (Fashion-MNIST)
# ---------------------------------------------------------------------------------------------

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


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


def fashion_mnist_dirs(root: Path) -> list[Path]:
    """Folders searched for the IDX files, in order."""
    return [root, root / "fashion-mnist", root / "fashion_mnist", root / "FashionMNIST" / "raw",
            Path(FASHION_MNIST_SYSTEM_DIR)]


def find_fashion_mnist(root: Path) -> Path | None:
    """The first folder of :func:`fashion_mnist_dirs` that holds all four IDX files, or None."""
    names = _FMNIST_FILES[True] + _FMNIST_FILES[False]
    for d in fashion_mnist_dirs(root):
        if all(_find_idx(d, n) for n in names):
            return d
    return None


def ensure_fashion_mnist(root: Path, download: bool, rank: int = 0) -> Path:
    """The folder with the four IDX files, downloading into ``root`` when allowed."""
    found = find_fashion_mnist(root)
    if found is not None:
        return found
    looked = fashion_mnist_dirs(root)
    if not download:
        raise _missing("fashion_mnist", looked, "DATASET.DOWNLOAD is false.")
    raw = root / "FashionMNIST" / "raw"
    if rank != 0:
        _wait_for([raw / f"{n}.gz" for n in _FMNIST_FILES[True] + _FMNIST_FILES[False]])
    else:
        try:
            from torchvision.datasets import FashionMNIST

            FashionMNIST(str(root), train=True, download=True)
        except Exception as e:
            raise _missing("fashion_mnist", looked, f"Download failed: {e!r}.") from e
    found = find_fashion_mnist(root)
    if found is None:
        raise _missing("fashion_mnist", looked, "Download did not produce the files.")
    return found


def read_fashion_mnist(folder: str | os.PathLike, train: bool = True) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read Fashion-MNIST IDX files: ``(images uint8 [N, 32, 32, 1] zero-padded from 28x28, labels, names)``."""
    folder = Path(folder)
    paths = [_find_idx(folder, n) for n in _FMNIST_FILES[train]]
    if any(p is None for p in paths):
        raise _missing("fashion_mnist", [folder], f"Missing: {', '.join(_FMNIST_FILES[train])}.")
    img_path, lab_path = paths  # type: ignore[misc]
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


# ---------------------------------------------------------------------------------------------
# Image folders (ImageNet, Tiny-ImageNet, user folders)
# ---------------------------------------------------------------------------------------------

def _images_under(folder: Path) -> list[str]:
    found = []
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
        raise _missing(kind, [folder], f"No folder {folder}.")
    subdirs = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    if not subdirs:
        loose = [f for f in os.listdir(folder) if f.lower().endswith(IMG_EXTENSIONS)]
        detail = (f"{folder} holds {len(loose)} images but no class sub-folders (sort them into "
                  f"one folder per class)." if loose else f"{folder} has no class sub-folders.")
        raise _missing(kind, [folder], detail)
    if classes is None:
        classes = subdirs
    else:
        extra = sorted(set(subdirs) - set(classes))
        if extra:
            raise ValueError(f"{folder} has class folders not in the training set: {extra[:5]}"
                             f"{' ...' if len(extra) > 5 else ''} ({len(classes)} training classes)")
    index = {c: i for i, c in enumerate(classes)}
    samples = []
    for c in subdirs:
        samples.extend((p, index[c]) for p in _images_under(folder / c))
    if not samples:
        raise _missing(kind, [folder], f"No image files ({', '.join(IMG_EXTENSIONS)}) under {folder}.")
    return samples, list(classes)


def _train_val_folders(kind: str, root: Path) -> tuple[Path, Path]:
    cands = [root] + ([root / "imagenet"] if kind == "imagenet" else [])
    for c in cands:
        if (c / "train").is_dir() and (c / "val").is_dir():
            return c / "train", c / "val"
    raise _missing(kind, [c / s for c in cands for s in ("train", "val")], "")


def read_folder(root: str | os.PathLike, kind: str = "folder") -> tuple[list, list, list[str]]:
    """``(train samples, val samples, class names)`` of a ``train/`` + ``val/`` ImageFolder pair."""
    train_dir, val_dir = _train_val_folders(kind, Path(root))
    train, classes = scan_image_folder(train_dir, kind=kind)
    empty = sorted(set(range(len(classes))) - {t for _, t in train})
    if empty:
        names = [classes[i] for i in empty[:5]]
        raise _missing(kind, [train_dir], f"Class folders without images: {names}.")
    val, _ = scan_image_folder(val_dir, classes=classes, kind=kind)
    return train, val, classes


def read_imagenet(root: str | os.PathLike) -> tuple[list, list, list[str]]:
    """ImageNet in the ImageFolder layout (validation already sorted into class folders)."""
    return read_folder(root, kind="imagenet")


def read_tiny_imagenet(root: str | os.PathLike) -> tuple[list, list, list[str]]:
    """Tiny-ImageNet-200 as released (val/images + val_annotations.txt) or with val/ sorted by class.

    Classes are the sorted wnids (the order ImageFolder gives, which published checkpoints use).
    """
    root = Path(root)
    base = root if (root / "wnids.txt").is_file() else root / "tiny-imagenet-200"
    wnids_file = base / "wnids.txt"
    if not wnids_file.is_file() or not (base / "train").is_dir() or not (base / "val").is_dir():
        raise _missing("tiny_imagenet", [base], f"Need {wnids_file}, {base / 'train'} and {base / 'val'}.")
    classes = sorted(w.strip() for w in wnids_file.read_text().split() if w.strip())
    train, _ = scan_image_folder(base / "train", classes=classes, kind="tiny_imagenet")
    present = {t for _, t in train}
    if len(present) != len(classes):
        missing = [classes[i] for i in range(len(classes)) if i not in present][:5]
        raise _missing("tiny_imagenet", [base / "train"], f"No training images for wnids {missing}.")
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
                raise _missing("tiny_imagenet", [img], f"{ann} lists {parts[0]} but the file is absent.")
            val.append((str(img), index[parts[1]]))
        if not val:
            raise _missing("tiny_imagenet", [ann], "The annotation file lists no images.")
    else:
        val, _ = scan_image_folder(base / "val", classes=classes, kind="tiny_imagenet")
    return train, val, classes


@dataclass
class Splits:
    """What a reader produced: train/val datasets (without views yet) and class names."""

    train: _ViewsDataset
    val: _ViewsDataset
    classes: list[str] = field(default_factory=list)
