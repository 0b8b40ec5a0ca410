"""Datasets and loaders from a config; the caller says how many views and which extra items.

``build_loaders(cfg, num_views=..., needs=...)`` returns a :class:`Loaders` record (see
``docs/architecture.md``). The dataset comes from the registry (``DATASET.TYPE``); the number
of views and CRD sampling come from the caller (the distiller's ``num_views`` and ``needs``),
never from the published trainer name. Training batches are ``{"views": [...], "target", "index"}``
(``num_views`` tensors, weak first) plus ``"contrast_index"`` ``[B, K + 1]`` (positive first)
when ``"contrast_index"`` is needed, and ``"view_id"`` ``[B]`` (the id of each weak view) when
the dataset's weak transform has a finite set of views (the CIFAR-style crop and flip: see
:mod:`.transforms`); validation batches are ``{"image", "target"}``.

Randomness: every random draw of the training stream is a pure function of the run seed, the
epoch and the sample or batch, whatever process makes it and however many workers there are.
:class:`EpochSampler` (always used, with or without DDP; the trainer calls ``set_epoch``
every epoch) shuffles with a generator seeded from ``(seed, epoch)``, shards by rank like
``DistributedSampler`` and yields ``(epoch, index)`` keys; the dataset draws an item's crops,
flips and CRD contrast indices from ``item_rng(seed, epoch, index)``; the collate step seeds
the batched strong policy from ``(seed, rank, epoch, the batch's indices)``. A run resumed at
any epoch (or replayed to any iteration) therefore sees the same data as the uninterrupted
run, and 0, 2 or 8 workers give the same batches.

``drop_last``: the published loaders keep the last, smaller training batch
(``DataLoader``'s default); so do we, except that a last batch of exactly one image is
dropped (batch norm cannot train on one sample). ``DATASET.DROP_LAST: true`` drops every
incomplete batch. Validation never drops anything; in distributed runs each process
evaluates its own ``rank::world_size`` share of the validation set (no sample twice, none
padded), so summing counts over processes gives the exact global metrics.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from sldistill._cfg import cfg_get

from .augment import StrongAugment
from .collate import TRAIN_BATCH_KEYS, BatchCollate
from .contrastive import ContrastiveDataset
from .datasets import ArrayDataset, FileDataset, resolve_root
from .keys import data_option
from .registry import available_datasets, get_dataset
from .sampling import EpochSampler, ShardSampler, worker_init
from .transforms import finite_view_problem

__all__ = ["Datasets", "Loaders", "build_datasets", "build_loaders", "build_val_loader", "balanced_subset",
           "view_transforms"]


def view_transforms(kind: str, cfg: Any = None) -> tuple[Callable, Callable]:
    """``(train view transform, test transform)`` of the registered dataset ``kind`` for ``cfg``
    (which matters where the dataset reads keys, e.g. ``folder``'s ``DATASET.IMAGE_SIZE``)."""
    return get_dataset(kind).transforms({} if cfg is None else cfg)


def balanced_subset(targets: Sequence[int] | np.ndarray, n: int, num_classes: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded, class-balanced subset of ``n`` samples.

    Each class gets ``n // num_classes`` samples (the remainder goes to randomly chosen
    classes); a class with too few samples gives all it has and the shortfall is filled at
    random from the rest. ``n <= 0`` or ``n >= len(targets)`` is every sample; with ``n <
    num_classes`` some classes get none (:func:`build_datasets` warns).
    """
    targets = np.asarray(targets, dtype=np.int64)
    if n <= 0 or n >= len(targets):
        return np.arange(len(targets))
    rng = np.random.default_rng([int(seed) & (2**63 - 1), 0x5B5])
    quota = np.full(num_classes, n // num_classes)
    quota[rng.permutation(num_classes)[: n % num_classes]] += 1
    chosen, leftover = [], []
    for c in range(num_classes):
        idx = rng.permutation(np.flatnonzero(targets == c))
        chosen.append(idx[: quota[c]])
        leftover.append(idx[quota[c]:])
    picked = np.concatenate(chosen)
    short = n - len(picked)
    if short > 0:
        rest = np.concatenate(leftover)
        picked = np.concatenate([picked, rng.choice(rest, short, replace=False)])
    return np.sort(picked)


@dataclass
class Datasets:
    """``build_datasets`` output; pass ``train_collate`` / ``val_collate`` as a loader's ``collate_fn``.

    ``test_transform`` is the dataset's un-augmented view (e.g. to evaluate on the training
    images: ``train.with_views([test_transform])`` with ``val_collate``).
    """

    train: ArrayDataset | FileDataset | ContrastiveDataset
    val: ArrayDataset | FileDataset
    num_classes: int
    classes: list[str]
    train_collate: BatchCollate
    val_collate: BatchCollate
    num_views: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    seed: int
    kind: str
    contrastive: bool = False
    test_transform: Callable | None = None
    source: str = ""  #: where the files were read from
    weak_transform: Callable | None = None  #: the first training view's transform
    view_ids: bool = False  #: whether training batches carry ``view_id`` (the weak transform is finite)
    notes: list[str] = field(default_factory=list)  #: warnings for a training run's log (one line each)


def _dataset(kind: str, split: Any, classes: list[str], views: list, seed: int) -> ArrayDataset | FileDataset:
    """A reader's split (``(images, labels)`` or ``[(path, label)]``) as a dataset with ``views``."""
    if isinstance(split, tuple) and len(split) == 2 and isinstance(split[0], np.ndarray):
        ds: ArrayDataset | FileDataset = ArrayDataset(split[0], split[1], classes, views, seed)
    elif isinstance(split, Sequence) and all(isinstance(s, (tuple, list)) and len(s) == 2 for s in split):
        ds = FileDataset(split, classes, views, seed)
    else:
        raise TypeError(f"the {kind} reader returned a split of type {type(split).__name__}; expected "
                        "(uint8 images [N, H, W, C], labels) or a list of (image path, label)")
    if len(ds.targets) and (ds.targets.min() < 0 or ds.targets.max() >= len(classes)):
        raise ValueError(f"the {kind} reader gave labels outside 0..{len(classes) - 1} "
                         f"({len(classes)} class names)")
    return ds


def build_datasets(cfg: Any, *, num_views: int = 1, contrastive: bool = False, rank: int = 0,
                   seed: int | None = None) -> Datasets:
    """The training and validation datasets of ``cfg``'s ``DATASET.TYPE`` (see module docstring).

    Args:
        num_views: views per training item (1; 2 for weak + strong, the strong policy running
            on every view after the first in the collate step).
        contrastive: add CRD's contrast indices (reads ``CRD.NCE.K``, ``CRD.MODE``).
        rank: keys the strong policy's per-batch seed and decides who downloads (the per-item
            draws need no rank: a sample is on one process per epoch).
        seed: the run seed (default ``EXPERIMENT.SEED``).

    Keys read: the ``DATASET.*`` keys of :data:`sldistill.data.DATA_KEYS` that concern the
    data itself, ``EXPERIMENT.SEED``, and ``CRD.NCE.K`` / ``CRD.MODE`` when contrastive.
    """
    entry = get_dataset(str(cfg_get(cfg, "DATASET.TYPE", "cifar100")))
    if isinstance(num_views, bool) or not isinstance(num_views, int) or num_views < 1:
        raise ValueError(f"num_views must be an int >= 1, got {num_views!r}")
    seed = int(cfg_get(cfg, "EXPERIMENT.SEED", 0) if seed is None else seed)
    root = resolve_root(data_option(cfg, "DATASET.ROOT"))
    size = data_option(cfg, "DATASET.IMAGE_SIZE")
    if size and not entry.sized:
        sized = ", ".join(n for n in available_datasets() if get_dataset(n).sized)
        raise ValueError(f"DATASET.IMAGE_SIZE {size} does not apply to DATASET.TYPE {entry.name!r}, whose views "
                         f"have sizes of their own; it applies to: {sized} (leave it at 0 here)")
    train_view, test_view = entry.transforms(cfg)
    read = entry.read(cfg, root, data_option(cfg, "DATASET.DOWNLOAD"), rank)
    train_split, val_split, classes = read[:3]
    source = str(read[3]) if len(read) > 3 else str(root)  # a reader may say where it found the files
    classes = [str(c) for c in classes]
    train = _dataset(entry.name, train_split, classes, [train_view] * num_views, seed)
    val = _dataset(entry.name, val_split, classes, [test_view], seed)
    subset = data_option(cfg, "DATASET.TRAIN_SUBSET")
    notes = []
    if subset > 0:
        subset_seed = data_option(cfg, "DATASET.SUBSET_SEED")
        picked = balanced_subset(train.targets, subset, len(classes), seed if subset_seed < 0 else subset_seed)
        if subset < len(classes):
            notes.append(f"warning: DATASET.TRAIN_SUBSET {subset} is smaller than the number of classes "
                         f"({len(classes)}): {len(classes) - subset} classes get no training image")
        if subset >= len(train):
            notes.append(f"warning: DATASET.TRAIN_SUBSET {subset} is not smaller than the {len(train)} training "
                         f"images: training on all {len(train)}")
        else:
            train = train.subset(picked)
    train_ds: ArrayDataset | FileDataset | ContrastiveDataset = train
    if contrastive:
        train_ds = ContrastiveDataset(train, int(cfg_get(cfg, "CRD.NCE.K", 16384)),
                                      str(cfg_get(cfg, "CRD.MODE", "exact")), entry.crd_replace)
    spec = entry.spec
    strong = StrongAugment() if num_views > 1 else None
    return Datasets(
        train=train_ds, val=val, num_classes=len(classes), classes=classes,
        train_collate=BatchCollate(spec.mean, spec.std, train=True, strong=strong, seed=seed, rank=rank),
        val_collate=BatchCollate(spec.mean, spec.std, train=False, seed=seed, rank=rank),
        num_views=num_views, mean=spec.mean, std=spec.std, seed=seed, kind=entry.name,
        contrastive=bool(contrastive), test_transform=test_view, source=source,
        weak_transform=train_view, view_ids=finite_view_problem(train_view) is None, notes=notes,
    )


@dataclass
class Loaders:
    """What the trainer iterates: see ``docs/architecture.md`` (Data)."""

    train: DataLoader
    val: DataLoader
    num_classes: int
    train_sampler: EpochSampler | None  # always set by build_loaders
    num_train: int
    num_val: int
    classes: list[str] = field(default_factory=list)
    num_views: int = 1
    batch_size: int = 0  # per process
    datasets: Datasets | None = None
    batch_keys: tuple[str, ...] = ("views", "target", "index")  # the keys of a training batch


def build_loaders(cfg: Any, *, num_views: int = 1, needs: Sequence[str] = (), rank: int = 0, world_size: int = 1,
                  device: str | torch.device = "cpu", seed: int | None = None) -> Loaders:
    """Training and validation loaders for ``cfg`` (see module docstring for batches and seeding).

    Args:
        num_views: the distiller's number of views (1, or 2 for weak + strong).
        needs: the distiller's extra batch items; ``"index"`` is always there,
            ``"contrast_index"`` turns on CRD sampling, ``"view_id"`` is there when the weak
            view is finite (asking for it otherwise is a ``ValueError`` naming the transform).
            Anything else is a ``ValueError``.
        rank, world_size: this process and the number of processes.
        device: where the batches go (memory is pinned for CUDA when ``DATASET.PIN_MEMORY``).
        seed: the run seed (default ``EXPERIMENT.SEED``).

    ``SOLVER.BATCH_SIZE`` is the global batch: each of ``world_size`` processes loads
    ``BATCH_SIZE // world_size`` (an error if it does not divide). The training order comes
    from an :class:`EpochSampler` (``train_sampler``; call ``set_epoch`` before each epoch),
    which also splits the set over the processes; validation is split with a
    :class:`ShardSampler` (each sample on one process). Workers (``DATASET.NUM_WORKERS``)
    are persistent.
    """
    if isinstance(needs, str):
        needs = (needs,)
    unknown = [n for n in needs if n not in TRAIN_BATCH_KEYS]
    if unknown:
        raise ValueError(f"the data loaders cannot provide batch item(s) {unknown}; a training batch holds "
                         f"{', '.join(TRAIN_BATCH_KEYS)} (contrast_index only when needed, view_id when the "
                         "weak view is finite)")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    seed = int(cfg_get(cfg, "EXPERIMENT.SEED", 0) if seed is None else seed)
    global_batch = int(cfg_get(cfg, "SOLVER.BATCH_SIZE", 64))
    if global_batch < 1 or global_batch % world_size:
        raise ValueError(f"SOLVER.BATCH_SIZE={global_batch} (the global batch) must be a positive multiple "
                         f"of the number of processes ({world_size})")
    batch = global_batch // world_size
    contrastive = "contrast_index" in needs
    ds = build_datasets(cfg, num_views=num_views, contrastive=contrastive, rank=rank, seed=seed)
    if "view_id" in needs and not ds.view_ids:
        raise ValueError(f"weak-view ids were asked for, but the weak view of DATASET.TYPE {ds.kind!r} is not finite: "
                         f"{finite_view_problem(ds.weak_transform)}")
    sampler = EpochSampler(len(ds.train), seed=seed, rank=rank, world_size=world_size)
    per_proc = len(sampler)
    drop_last = data_option(cfg, "DATASET.DROP_LAST")
    if not drop_last and per_proc % batch == 1 and per_proc > 1:
        drop_last = True  # a one-image batch cannot train batch norm
        warnings.warn(f"dropping the last training batch: {per_proc} images per process leave one "
                      f"image after {per_proc // batch} batches of {batch}", stacklevel=2)
    if per_proc < batch and drop_last:
        raise ValueError(f"{per_proc} training images per process is fewer than one batch of {batch}")
    train = DataLoader(ds.train, batch_size=batch, shuffle=False, sampler=sampler,
                       drop_last=drop_last, collate_fn=ds.train_collate,
                       generator=torch.Generator().manual_seed(seed + 104729 * rank), **_loader_options(cfg, device))
    val = build_val_loader(cfg, ds, rank=rank, world_size=world_size, device=device, seed=seed)
    keys = TRAIN_BATCH_KEYS[:3] + (("contrast_index",) if contrastive else ()) + (("view_id",) if ds.view_ids else ())
    return Loaders(train=train, val=val, num_classes=ds.num_classes, train_sampler=sampler,
                   num_train=len(ds.train), num_val=len(ds.val), classes=ds.classes,
                   num_views=ds.num_views, batch_size=batch, datasets=ds, batch_keys=keys)


def _loader_options(cfg: Any, device: str | torch.device) -> dict[str, Any]:
    workers = data_option(cfg, "DATASET.NUM_WORKERS")
    return dict(num_workers=workers, pin_memory=data_option(cfg, "DATASET.PIN_MEMORY") and
                torch.device(device).type == "cuda", persistent_workers=workers > 0,
                worker_init_fn=worker_init if workers > 0 else None)


def build_val_loader(cfg: Any, ds: Datasets, *, rank: int = 0, world_size: int = 1,
                     device: str | torch.device = "cpu", seed: int | None = None) -> DataLoader:
    """The validation loader of ``ds`` (``DATASET.TEST.BATCH_SIZE``; this process's
    ``rank::world_size`` share when distributed): what evaluation needs, without the training
    loader."""
    seed = int(cfg_get(cfg, "EXPERIMENT.SEED", 0) if seed is None else seed)
    sampler = ShardSampler(len(ds.val), rank, world_size) if world_size > 1 else None
    return DataLoader(ds.val, batch_size=data_option(cfg, "DATASET.TEST.BATCH_SIZE"), shuffle=False, sampler=sampler,
                      drop_last=False, collate_fn=ds.val_collate, generator=torch.Generator().manual_seed(seed + 1),
                      **_loader_options(cfg, device))
