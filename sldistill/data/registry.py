"""The dataset registry: each ``DATASET.TYPE`` is declared once, with everything the loaders need.

An entry holds the dataset's published constants (:class:`DatasetSpec`), its reader, its
view transforms and its CRD sampling rule. :func:`sldistill.data.build_datasets` looks the
type up here and nowhere else, so a dataset registered from user code (before the config is
validated: ``--plugin``, ``EXPERIMENT.PLUGINS`` or a ``sldistill.datasets`` entry point) is
used exactly like a built-in one::

    from sldistill.data import DatasetSpec, register_dataset

    @register_dataset("my_set", DatasetSpec(mean=(0.5,) * 3, std=(0.25,) * 3, image_size=32,
                                            num_classes=10, layout="ROOT/my_set.npz",
                                            obtain="run make_my_set.py"))
    def read_my_set(cfg, root, download, rank):
        data = np.load(root / "my_set.npz")
        return (data["x_train"], data["y_train"]), (data["x_val"], data["y_val"]), CLASS_NAMES

A reader returns ``(train, val, class_names)`` where each split is either ``(images, labels)``
with ``images`` a ``uint8`` array ``[N, H, W, C]`` (C = 1 or 3) held in memory, or a
sequence of ``(image_path, label)`` pairs read from files on access.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, Tuple, Union

import numpy as np

from sldistill._cfg import cfg_get

from .transforms import sized_views

__all__ = [
    "DatasetSpec",
    "DatasetEntry",
    "Reader",
    "Split",
    "register_dataset",
    "available_datasets",
    "get_dataset",
    "SPECS",
    "DATASET_TYPES",
]

Transform = Callable[[Any, np.random.Generator], np.ndarray]
#: one split as a reader returns it: ``(uint8 images [N, H, W, C], labels)`` or ``[(path, label)]``
Split = Union[Tuple[np.ndarray, Sequence[int]], Sequence[Tuple[str, int]]]
#: ``(cfg, root, download, rank) -> (train split, val split, class names)``, optionally with a
#: fourth item: the folder the files were found in (logged as the data source)
Reader = Callable[[Any, Path, bool, int], Tuple[Any, ...]]


@dataclass(frozen=True)
class DatasetSpec:
    """Published per-dataset constants.

    Args:
        mean, std: per-channel normalisation of the ``[0, 1]`` images (RGB order).
        image_size: side of the network input (the default transforms crop to it).
        num_classes: the class count when fixed (``None`` when it comes from the data, as for
            ``folder``); informational, the reader's class list is what the loaders use.
        layout: the expected files, in words (quoted in "data not found" errors).
        obtain: how to get them (quoted in the same errors).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int
    num_classes: int | None
    layout: str
    obtain: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if len(self.mean) not in (1, 3) or len(self.std) != len(self.mean):
            raise ValueError(f"mean and std need 1 or 3 values each, got {self.mean} and {self.std}")
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std}")
        if int(self.image_size) < 1:
            raise ValueError(f"image_size must be >= 1, got {self.image_size}")


def _sized_transforms(spec: DatasetSpec, cfg: Any) -> tuple[Transform, Transform]:
    """The default transforms: :func:`sized_views` at ``DATASET.IMAGE_SIZE`` (0: the spec's size)."""
    return sized_views(int(cfg_get(cfg, "DATASET.IMAGE_SIZE", 0) or spec.image_size))


@dataclass(frozen=True)
class DatasetEntry:
    """One registered dataset (see :func:`register_dataset`)."""

    name: str
    spec: DatasetSpec
    read: Reader
    transforms: Callable[[Any], tuple[Transform, Transform]]
    crd_replace: bool | None = None

    @property
    def sized(self) -> bool:
        """Whether its views follow ``DATASET.IMAGE_SIZE`` (the default transforms do; a
        dataset registered with transforms of its own decides its sizes itself)."""
        return isinstance(self.transforms, partial) and self.transforms.func is _sized_transforms


_DATASETS: dict[str, DatasetEntry] = {}


def register_dataset(name: str, spec: DatasetSpec, read: Reader | None = None, *,
                     transforms: Callable[[Any], tuple[Transform, Transform]] | None = None,
                     crd_replace: bool | None = None, overwrite: bool = False) -> Any:
    """Register a dataset as ``DATASET.TYPE: name``; usable as a decorator of the reader.

    Args:
        name: the ``DATASET.TYPE`` value.
        spec: its :class:`DatasetSpec`.
        read: ``(cfg, root: Path, download: bool, rank: int) -> (train, val, class_names)``
            (see the module docstring for the split formats). ``root`` is the resolved
            ``DATASET.ROOT``; with ``download`` the reader may fetch missing files (on
            ``rank`` 0; other ranks wait for them).
        transforms: ``cfg -> (train view transform, test transform)``, each a callable
            ``(image, numpy Generator) -> uint8 H x W x 3 array``. Default: the ``folder``
            rule at ``DATASET.IMAGE_SIZE`` or ``spec.image_size`` (:func:`sized_views`).
        crd_replace: how CRD draws negatives: ``None`` without replacement unless
            ``CRD.NCE.K`` exceeds the pool (the released CIFAR-100 rule), ``True`` with
            replacement (the released ImageNet rule), ``False`` always without.
        overwrite: replace an existing entry of that name instead of raising ``ValueError``.

    Returns:
        ``read`` (so that the call can decorate it), or the decorator when ``read`` is omitted.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a dataset name is a non-empty string, got {name!r}")
    if not isinstance(spec, DatasetSpec):
        raise TypeError(f"dataset {name!r}: spec must be a DatasetSpec, got {type(spec).__name__}")
    if crd_replace not in (None, True, False):
        raise ValueError(f"dataset {name!r}: crd_replace must be None, True or False, got {crd_replace!r}")
    if transforms is not None and not callable(transforms):
        raise TypeError(f"dataset {name!r}: transforms must be callable (cfg -> (train, test))")

    def add(reader: Reader) -> Reader:
        if not callable(reader):
            raise TypeError(f"dataset {name!r}: the reader must be callable, got {type(reader).__name__}")
        if name in _DATASETS and not overwrite:
            raise ValueError(f"dataset {name!r} is already registered (pass overwrite=True to replace it)")
        _DATASETS[name] = DatasetEntry(name, spec, reader, transforms or partial(_sized_transforms, spec),
                                       crd_replace)
        return reader

    return add if read is None else add(read)


def available_datasets() -> tuple[str, ...]:
    """The registered ``DATASET.TYPE`` values, in registration order (built-ins first)."""
    return tuple(_DATASETS)


def get_dataset(name: str) -> DatasetEntry:
    """The entry of ``DATASET.TYPE`` ``name``; ``ValueError`` naming the valid ones otherwise."""
    try:
        return _DATASETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown DATASET.TYPE {name!r}; valid: {', '.join(_DATASETS)} (a dataset of your own "
                         "is registered with sldistill.data.register_dataset)") from None


class _SpecsView(Mapping):
    """``name -> DatasetSpec`` of the registered datasets (read-only, always current)."""

    def __getitem__(self, name: str) -> DatasetSpec:
        return _DATASETS[name].spec

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(_DATASETS))

    def __len__(self) -> int:
        return len(_DATASETS)

    def __repr__(self) -> str:
        return f"SPECS({dict(self)!r})"


class _NamesView(Sequence):
    """The registered dataset names as a read-only, always current sequence."""

    def __getitem__(self, i: Any) -> Any:
        return available_datasets()[i]

    def __len__(self) -> int:
        return len(_DATASETS)

    def __contains__(self, name: object) -> bool:
        return name in _DATASETS

    def __eq__(self, other: object) -> bool:
        return tuple(self) == (tuple(other) if isinstance(other, (tuple, list, _NamesView)) else other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(available_datasets())


#: ``DATASET.TYPE -> DatasetSpec`` of every registered dataset (a live view of the registry)
SPECS: Mapping[str, DatasetSpec] = _SpecsView()
#: the registered ``DATASET.TYPE`` values (a live view; :func:`available_datasets` as a tuple)
DATASET_TYPES: Sequence[str] = _NamesView()
