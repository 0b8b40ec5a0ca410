"""Dataset items: keys, the per-item generator and the in-memory / file-backed datasets.

Every dataset returns ``(views, target, index)`` where ``views`` is a tuple of ``uint8``
``H x W x 3`` arrays, one per view transform (one for single-view training and validation,
more for the weak/strong mode). When the first (weak) view's transform has a finite set of
views (``finite_views``, see :mod:`.transforms`), ``views.view_id`` is the id of the view
drawn (the same draws and bytes as without it), else ``None``. Normalisation and the strong policy run per batch in the
collate step (:class:`sldistill.data.collate.BatchCollate`).

Keys: ``dataset[i]`` (epoch 0) or ``dataset[(epoch, i)]`` (what the training sampler
yields). The random draws of an item come from :func:`item_rng` ``(seed, epoch, i)``, so
they depend on nothing else: not on the process, the worker or what was drawn before.

The readers of the standard layouts live in :mod:`.cifar`, :mod:`.fashion_mnist` and
:mod:`.folders`; :mod:`.registry` ties each ``DATASET.TYPE`` to its reader.
"""
from __future__ import annotations

import operator
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, Union

import numpy as np
import torch
from PIL import Image

__all__ = [
    "DataFormatError",
    "ItemKey",
    "Views",
    "split_key",
    "item_rng",
    "ArrayDataset",
    "FileDataset",
    "resolve_root",
    "missing_data_error",
]

Transform = Callable[[Any, np.random.Generator], np.ndarray]


class DataFormatError(ValueError):
    """A dataset file exists but cannot be read as the expected format (the message names it)."""


def missing_data_error(kind: str, looked: Sequence[Path | str], detail: str = "") -> FileNotFoundError:
    """The error for absent or incomplete data of dataset ``kind``: where it looked, what is
    missing, and (from the registered :class:`~sldistill.data.registry.DatasetSpec`) the
    expected layout and how to obtain it."""
    from .registry import SPECS

    spec = SPECS.get(kind)
    where = ", ".join(str(p) for p in looked)
    msg = f"{kind} data not found or incomplete: looked at {where}. {detail}"
    if spec is not None:
        msg += f"\nExpected layout: {spec.layout}\nHow to obtain it: {spec.obtain}"
    return FileNotFoundError(msg + "\nSet the folder with DATASET.ROOT or the SLDISTILL_DATA environment variable.")


def wait_for(paths: Sequence[Path], timeout: float = 1800.0) -> None:
    """Wait (up to ``timeout`` seconds) until every path exists: what ranks other than 0 do
    while rank 0 downloads."""
    t0 = time.monotonic()
    while not all(p.exists() for p in paths) and time.monotonic() - t0 < timeout:
        time.sleep(5.0)


def resolve_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: ``root`` if given and non-empty, else ``$SLDISTILL_DATA``, else ``./data``."""
    if root:
        return Path(root).expanduser()
    env = os.environ.get("SLDISTILL_DATA", "")
    return Path(env).expanduser() if env else Path("data")


ItemKey = Union[int, "tuple[int, int]"]
"""A dataset key: a plain index (epoch 0) or ``(epoch, index)`` as :class:`EpochSampler` yields."""

_MASK64 = 2**64 - 1
_ITEM_STREAM = 0x1AE7  # tags the per-item stream apart from the per-batch one (sampling.py)


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


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one item's random draws: a pure function of ``(seed, epoch, index)``.

    Views (crops, flips, rotations) and CRD's contrast indices of sample ``index`` in epoch
    ``epoch`` come from it, whichever process draws them and whatever it drew before. It is
    a Philox generator keyed by ``(seed, epoch)`` (each taken modulo 2**64) whose counter
    starts at ``[0, 0, index, 0x1AE7]``: Philox is counter-based, so distinct keys give
    independent streams, and the counters of different indices start 2**128 blocks apart, so
    their streams never overlap.
    """
    key = np.array([int(seed) & _MASK64, int(epoch) & _MASK64], dtype=np.uint64)
    counter = np.array([0, 0, int(index) & _MASK64, _ITEM_STREAM], dtype=np.uint64)
    return np.random.Generator(np.random.Philox(counter=counter, key=key))


class Views(tuple):
    """The view arrays of one item (a plain tuple otherwise), carrying the ``epoch`` they were
    drawn for, so that the collate step can key the batched strong policy on it, and the
    ``view_id`` of the first view (``None`` unless its transform is finite)."""

    epoch: int
    view_id: int | None

    def __new__(cls, arrays: Iterable[np.ndarray], epoch: int = 0, view_id: int | None = None) -> "Views":
        obj = super().__new__(cls, arrays)
        obj.epoch = int(epoch)
        obj.view_id = None if view_id is None else int(view_id)
        return obj

    def __reduce__(self) -> tuple:
        return (Views, (tuple(self), self.epoch, self.view_id))


class _ViewsDataset(torch.utils.data.Dataset):
    """Common part: targets, classes, the view transforms and the keyed randomness.

    ``dataset[key]`` with ``key`` an index (epoch 0) or ``(epoch, index)``: the view
    transforms draw from :func:`item_rng` ``(seed, epoch, index)``.
    """

    targets: np.ndarray
    classes: list[str]

    def __init__(self, views: Sequence[Transform], seed: int = 0) -> None:
        self.views = tuple(views)
        self.seed = int(seed)

    @property
    def weak_view_ids(self) -> bool:
        """Whether items carry the first view's id (its transform has ``finite_views``)."""
        return bool(self.views) and bool(getattr(self.views[0], "finite_views", False))

    @property
    def num_classes(self) -> int:
        """Number of classes (from the dataset's class list, not from the labels present)."""
        return len(self.classes)

    def _load(self, index: int) -> Any:
        raise NotImplementedError

    def image(self, index: int) -> Any:
        """Stored image ``index`` before any view transform (an array row or a decoded file)."""
        return self._load(index)

    def item_rng(self, epoch: int, index: int) -> np.random.Generator:
        """The generator of item ``index``'s draws in ``epoch``: :func:`item_rng` with this dataset's seed."""
        return item_rng(self.seed, epoch, index)

    def item(self, index: int, rng: np.random.Generator, epoch: int = 0) -> tuple[Views, int, int]:
        """``(views, target, index)`` of sample ``index`` with the view transforms drawing from ``rng``
        (in order; the first view's id is kept when its transform is finite)."""
        img = self._load(index)
        if not self.weak_view_ids:
            return Views((t(img, rng) for t in self.views), epoch), int(self.targets[index]), int(index)
        first, view_id = self.views[0].draw(img, rng)  # type: ignore[attr-defined]
        views = Views((first, *(t(img, rng) for t in self.views[1:])), epoch, view_id)
        return views, int(self.targets[index]), int(index)

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
