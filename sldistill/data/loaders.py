"""Datasets and loaders from a config: views per dataset and trainer, CRD sampling, seeding.

``build_loaders(cfg)`` returns a :class:`Loaders` record (see ``docs/architecture.md``):
training batches ``(image, target, index)`` where ``image`` is a tensor, or ``[weak, strong]``
when ``SOLVER.TRAINER`` is ``ours``; with ``crd``/``crd_dot`` a fourth item, the contrast
indices ``[B, K + 1]`` (positive first). Validation batches are ``(image, target)``.

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
dropped (batch norm cannot train on one sample). ``DATASET.DROP_LAST: true`` (optional key)
drops every incomplete batch. Validation never drops anything; in distributed runs each
process evaluates its own ``rank::world_size`` share of the validation set (no sample twice,
none padded), so summing counts over processes gives the exact global metrics.
"""
from __future__ import annotations

import math
import random
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler, get_worker_info

from .augment import (
    RandomCropFlip,
    RandomResizedCropFlip,
    RandomRotateFlip,
    ResizeCenterCrop,
    ResizeRandomCropFlip,
    StrongAugment,
    ToArray,
    normalize_batch,
)
from sldistill._cfg import cfg_get

from .datasets import (
    DATASET_TYPES,
    SPECS,
    ArrayDataset,
    FileDataset,
    ItemKey,
    Views,
    ensure_cifar100,
    ensure_fashion_mnist,
    read_cifar100,
    read_fashion_mnist,
    read_folder,
    read_imagenet,
    read_tiny_imagenet,
    resolve_root,
    split_key,
)

__all__ = [
    "TWO_VIEW_TRAINERS",
    "CRD_TRAINERS",
    "EpochSampler",
    "ShardSampler",
    "batch_seed",
    "ContrastiveDataset",
    "BatchCollate",
    "Datasets",
    "Loaders",
    "build_datasets",
    "build_loaders",
    "balanced_subset",
    "view_transforms",
    "check_num_classes",
    "classifier_out_features",
]

TWO_VIEW_TRAINERS = ("ours",)
CRD_TRAINERS = ("crd", "crd_dot")
_KNOWN_TRAINERS = ("base", "ours", "crd", "dot", "aug", "crd_dot")


# ---------------------------------------------------------------------------------------------
# Randomness
# ---------------------------------------------------------------------------------------------

_MASK64 = 2**64 - 1
_ORDER_STREAM = 0x0D3E  # tags of the independent streams derived from the run seed
_BATCH_STREAM = 0xB47C


class EpochSampler(Sampler):
    """Training order: a shuffle seeded from ``(seed, epoch)``, sharded by rank, as keys.

    Yields ``(epoch, index)`` keys (see :func:`sldistill.data.datasets.split_key`). With
    ``world_size > 1`` it splits like ``DistributedSampler``: the permutation is padded by
    wrapping around to a multiple of ``world_size`` and rank ``r`` takes positions
    ``r, r + world_size, ...``, so every process gets ``ceil(n / world_size)`` samples (equal
    shards; DDP needs the same number of steps everywhere). Call :meth:`set_epoch` before
    each epoch (the trainer does); the order is then a pure function of ``(seed, epoch)``.
    """

    def __init__(self, num_samples: int, *, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True) -> None:
        if num_samples < 1:
            raise ValueError(f"EpochSampler needs at least one sample, got {num_samples}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.num_samples, self.seed = int(num_samples), int(seed)
        self.rank, self.world_size, self.shuffle = int(rank), int(world_size), bool(shuffle)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the order (and the augmentation keys) of ``epoch`` (>= 0) from now on."""
        if int(epoch) < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def order(self, epoch: int) -> list[int]:
        """This rank's sample indices in ``epoch``, in order."""
        n = self.num_samples
        if self.shuffle:
            state = np.random.SeedSequence([self.seed & _MASK64, int(epoch), _ORDER_STREAM]).generate_state(1, np.uint64)
            g = torch.Generator().manual_seed(int(state[0]) & (2**63 - 1))
            perm = torch.randperm(n, generator=g).tolist()
        else:
            perm = list(range(n))
        total = len(self) * self.world_size
        while len(perm) < total:  # pad by wrapping (more than once when n < world_size)
            perm += perm[: total - len(perm)]
        return perm[self.rank:total:self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return iter([(epoch, i) for i in self.order(epoch)])

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.world_size)


class ShardSampler(Sampler):
    """Indices ``rank, rank + world_size, ...`` of ``num_samples``, in order: each sample on
    exactly one process, nothing padded (shards may differ in length by one). For evaluation,
    where sums are all-reduced."""

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.indices = range(int(rank), int(num_samples), int(world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def batch_seed(seed: int, rank: int, epoch: int, indices: Sequence[int]) -> int:
    """Seed of one batch's strong-policy generator: a pure function of its arguments."""
    ss = np.random.SeedSequence([int(seed) & _MASK64, _BATCH_STREAM, int(rank), int(epoch), len(indices),
                                 *(int(i) for i in indices)])
    return int(ss.generate_state(1, np.uint64)[0]) & (2**63 - 1)


def _worker_init(worker_id: int) -> None:
    """Seed python's and numpy's global generators from the worker seed (for user transforms;
    ours never use the global generators)."""
    info = get_worker_info()
    seed = int(info.seed) if info is not None else 0
    random.seed(seed)
    np.random.seed(seed % 2**32)


# ---------------------------------------------------------------------------------------------
# CRD sampling
# ---------------------------------------------------------------------------------------------

class ContrastiveDataset(torch.utils.data.Dataset):
    """Adds CRD's contrast indices to each item: ``(views, target, index, contrast_index)``.

    ``contrast_index`` has ``k + 1`` entries: the positive first (``mode='exact'``: the
    sample itself; ``'relax'``: a random sample of the same class), then ``k`` negatives drawn
    uniformly from the samples of the *other* classes. ``replace=None`` follows the released
    CIFAR-100 rule (without replacement unless ``k`` exceeds the number of negatives);
    ``True`` is the released ImageNet/Tiny-ImageNet rule. The negative pools are never
    materialised per class (an ImageNet-sized table would take gigabytes). Keys as for the
    base dataset; the contrast indices come from the same per-item generator as the views.
    """

    def __init__(self, base: ArrayDataset | FileDataset, k: int, mode: str = "exact",
                 replace: bool | None = None) -> None:
        if mode not in ("exact", "relax"):
            raise ValueError(f"CRD.MODE must be 'exact' or 'relax', got {mode!r}")
        if k < 1:
            raise ValueError(f"CRD.NCE.K must be >= 1, got {k}")
        self.base, self.k, self.mode, self.replace = base, int(k), mode, replace
        targets = np.asarray(base.targets, dtype=np.int64)
        n_cls = base.num_classes
        self.order = np.argsort(targets, kind="stable")  # sample indices grouped by class
        counts = np.bincount(targets, minlength=n_cls)
        self.start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.count = counts
        self.n = len(targets)
        if n_cls < 2 or (counts == self.n).any():
            raise ValueError("CRD sampling needs samples of at least two classes")

    def __len__(self) -> int:
        return len(self.base)

    @property
    def targets(self) -> np.ndarray:
        return self.base.targets

    @property
    def num_classes(self) -> int:
        return self.base.num_classes

    def sample(self, index: int, target: int, rng: np.random.Generator) -> np.ndarray:
        """The ``k + 1`` contrast indices of one sample."""
        s, c = int(self.start[target]), int(self.count[target])
        if self.mode == "exact":
            pos = index
        else:
            pos = int(self.order[s + int(rng.integers(0, c))])
        n_neg = self.n - c
        replace = self.k > n_neg if self.replace is None else self.replace
        if not replace and self.k > n_neg:
            raise ValueError(f"CRD.NCE.K={self.k} exceeds the {n_neg} negatives of class {target} "
                             "and sampling without replacement was requested")
        r = rng.choice(n_neg, self.k, replace=replace) if not replace else rng.integers(0, n_neg, self.k)
        r = np.where(r >= s, r + c, r)  # skip this class's block in the class-sorted order
        out = np.empty(self.k + 1, dtype=np.int64)
        out[0] = pos
        out[1:] = self.order[r]
        return out

    def __getitem__(self, key: ItemKey) -> tuple:
        epoch, index = split_key(key, len(self))
        rng = self.base.item_rng(epoch, index)
        views, target, idx = self.base.item(index, rng, epoch)
        return views, target, idx, self.sample(idx, target, rng)


# ---------------------------------------------------------------------------------------------
# Collation: stack, strong policy on the strong view, normalise
# ---------------------------------------------------------------------------------------------

def _worker_output(shape: Sequence[int]) -> torch.Tensor | None:
    """An empty ``float32`` tensor in shared memory when called in a ``DataLoader`` worker, else
    None. A batch built in shared memory crosses to the main process without the copy that
    pickling an ordinary tensor makes (``default_collate`` does the same for its stacks)."""
    if get_worker_info() is None:
        return None
    numel = math.prod(int(d) for d in shape)
    try:
        storage = torch.empty(0, dtype=torch.float32)._typed_storage()._new_shared(numel)
    except (AttributeError, RuntimeError):  # no shared-memory storage here: an ordinary tensor
        return None
    return torch.empty(0, dtype=torch.float32).new(storage).view(*shape)


class BatchCollate:
    """Turn items ``(views, target, index[, contrast])`` into a normalised float batch.

    ``train=True``: ``(image, target, index[, contrast_index])`` with ``image`` a tensor
    (one view) or ``[weak, strong]`` (two views; the strong policy runs on the second view as
    a batch). ``train=False``: ``(image, target)``.

    The strong policy's generator is seeded with :func:`batch_seed` ``(seed, rank, epoch,
    indices)``, the epoch being the one the items were drawn for (:class:`Views` carry it; 0
    for items of another kind).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], *, train: bool,
                 strong: StrongAugment | None = None, seed: int = 0, rank: int = 0) -> None:
        self.mean, self.std, self.train = tuple(mean), tuple(std), bool(train)
        self.strong = strong
        self.seed, self.rank = int(seed), int(rank)

    @staticmethod
    def _stack(arrays: Sequence[np.ndarray]) -> torch.Tensor:
        """``H x W x C`` arrays -> ``[N, C, H, W]``, each copied straight into its channel-first
        slot (one pass; faster than stacking and then permuting for small images)."""
        first = arrays[0]
        if any(a.shape != first.shape for a in arrays):
            raise ValueError(f"cannot batch views of different shapes: {sorted({a.shape for a in arrays})}")
        h, w, c = first.shape
        out = np.empty((len(arrays), c, h, w), dtype=first.dtype)
        for slot, a in zip(out, arrays):
            slot[...] = a.transpose(2, 0, 1)
        return torch.from_numpy(out)

    def __call__(self, items: Sequence[tuple]) -> tuple:
        n_views = len(items[0][0])
        views = [self._stack([it[0][v] for it in items]) for v in range(n_views)]
        if self.strong is not None and n_views >= 2:
            epoch = getattr(items[0][0], "epoch", 0)
            g = torch.Generator().manual_seed(batch_seed(self.seed, self.rank, epoch, [it[2] for it in items]))
            views[1] = self.strong(views[1], g)
        images = [normalize_batch(v, self.mean, self.std, out=_worker_output(v.shape)) for v in views]
        image: torch.Tensor | list[torch.Tensor] = images[0] if n_views == 1 else images
        target = torch.tensor([it[1] for it in items], dtype=torch.int64)
        if not self.train:
            return image, target
        index = torch.tensor([it[2] for it in items], dtype=torch.int64)
        if len(items[0]) > 3:
            contrast = torch.from_numpy(np.stack([it[3] for it in items]))
            return image, target, index, contrast
        return image, target, index


# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------

def view_transforms(kind: str, image_size: int | None = None) -> tuple[Callable, Callable]:
    """``(train view transform, test transform)`` as published for a dataset type."""
    if kind in ("cifar100", "fashion_mnist"):
        return RandomCropFlip(32, padding=4), ToArray()
    if kind == "imagenet":
        return RandomResizedCropFlip(224), ResizeCenterCrop(256, 224)
    if kind == "tiny_imagenet":
        return RandomRotateFlip(20.0), ToArray()
    if kind == "folder":
        s = int(image_size or SPECS["folder"].image_size)
        if s <= 64:
            return ResizeRandomCropFlip(s, padding=max(1, s // 8)), ResizeCenterCrop(s, s)
        return RandomResizedCropFlip(s), ResizeCenterCrop(int(round(s * 256 / 224)), s)
    raise ValueError(f"unknown DATASET.TYPE {kind!r}; valid: {list(DATASET_TYPES)}")


def balanced_subset(targets: Sequence[int] | np.ndarray, n: int, num_classes: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded, class-balanced subset of ``n`` samples.

    Each class gets ``n // num_classes`` samples (the remainder goes to randomly chosen
    classes); a class with too few samples gives all it has and the shortfall is filled at
    random from the rest.
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
    """``build_datasets`` output; pass ``train_collate`` / ``val_collate`` as a loader's ``collate_fn``."""

    train: torch.utils.data.Dataset
    val: torch.utils.data.Dataset
    num_classes: int
    classes: list[str]
    train_collate: BatchCollate
    val_collate: BatchCollate
    num_views: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    seed: int
    kind: str


def _read(kind: str, root, download: bool, rank: int, views, test_view, seed: int):
    src = seed
    if kind == "cifar100":
        ensure_cifar100(root, download, rank)
        xtr, ytr, classes = read_cifar100(root, train=True)
        xte, yte, _ = read_cifar100(root, train=False)
        return ArrayDataset(xtr, ytr, classes, views, src), ArrayDataset(xte, yte, classes, [test_view], src), classes
    if kind == "fashion_mnist":
        folder = ensure_fashion_mnist(root, download, rank)
        xtr, ytr, classes = read_fashion_mnist(folder, train=True)
        xte, yte, _ = read_fashion_mnist(folder, train=False)
        return ArrayDataset(xtr, ytr, classes, views, src), ArrayDataset(xte, yte, classes, [test_view], src), classes
    reader = {"imagenet": read_imagenet, "tiny_imagenet": read_tiny_imagenet, "folder": read_folder}[kind]
    tr, va, classes = reader(root)
    return FileDataset(tr, classes, views, src), FileDataset(va, classes, [test_view], src), classes


def build_datasets(cfg: Any, *, rank: int = 0, seed: int | None = None) -> Datasets:
    """Build the training and validation datasets described by ``cfg`` (see module docstring).

    Keys read: ``DATASET.TYPE``, ``DATASET.ROOT``, ``DATASET.DOWNLOAD``,
    ``DATASET.TRAIN_SUBSET``, ``DATASET.SUBSET_SEED``, ``SOLVER.TRAINER``, ``CRD.NCE.K``, ``CRD.MODE``,
    ``EXPERIMENT.SEED``; optional ``DATASET.IMAGE_SIZE`` (``folder`` only, default 32).
    ``rank`` keys the strong policy's per-batch seed (the per-item draws need no rank: a
    sample is on one process per epoch).
    """
    kind = str(cfg_get(cfg, "DATASET.TYPE", "cifar100"))
    if kind not in DATASET_TYPES:
        raise ValueError(f"unknown DATASET.TYPE {kind!r}; valid: {list(DATASET_TYPES)}")
    trainer = str(cfg_get(cfg, "SOLVER.TRAINER", "base"))
    if trainer not in _KNOWN_TRAINERS:
        raise ValueError(f"unknown SOLVER.TRAINER {trainer!r}; valid: {list(_KNOWN_TRAINERS)}")
    seed = int(cfg_get(cfg, "EXPERIMENT.SEED", 0) if seed is None else seed)
    root = resolve_root(cfg_get(cfg, "DATASET.ROOT", ""))
    train_view, test_view = view_transforms(kind, cfg_get(cfg, "DATASET.IMAGE_SIZE", None) or None)
    two_view = trainer in TWO_VIEW_TRAINERS
    views = [train_view, train_view] if two_view else [train_view]
    train, val, classes = _read(kind, root, bool(cfg_get(cfg, "DATASET.DOWNLOAD", True)), rank, views, test_view, seed)
    subset = int(cfg_get(cfg, "DATASET.TRAIN_SUBSET", 0) or 0)
    if subset < 0:
        raise ValueError(f"DATASET.TRAIN_SUBSET must be >= 0, got {subset}")
    if 0 < subset < len(train):
        subset_seed = int(cfg_get(cfg, "DATASET.SUBSET_SEED", -1))
        subset_seed = seed if subset_seed < 0 else subset_seed
        train = train.subset(balanced_subset(train.targets, subset, len(classes), subset_seed))
    train_ds: torch.utils.data.Dataset = train
    if trainer in CRD_TRAINERS:
        k = int(cfg_get(cfg, "CRD.NCE.K", 16384))
        replace = None if kind in ("cifar100", "fashion_mnist", "folder") else True
        train_ds = ContrastiveDataset(train, k, str(cfg_get(cfg, "CRD.MODE", "exact")), replace)
    spec = SPECS[kind]
    return Datasets(
        train=train_ds, val=val, num_classes=len(classes), classes=classes,
        train_collate=BatchCollate(spec.mean, spec.std, train=True, strong=StrongAugment() if two_view else None,
                                   seed=seed, rank=rank),
        val_collate=BatchCollate(spec.mean, spec.std, train=False, seed=seed, rank=rank),
        num_views=2 if two_view else 1, mean=spec.mean, std=spec.std, seed=seed, kind=kind,
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


def build_loaders(cfg: Any, *, rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu",
                  seed: int | None = None) -> Loaders:
    """Training and validation loaders for ``cfg`` (see module docstring for batches and seeding).

    ``SOLVER.BATCH_SIZE`` is the global batch: each of ``world_size`` processes loads
    ``BATCH_SIZE // world_size`` (an error if it does not divide). The training order comes
    from an :class:`EpochSampler` (``train_sampler``; call ``set_epoch`` before each epoch),
    which also splits the set over ``world_size`` processes; validation is split with a
    :class:`ShardSampler` (each sample on one process). Workers (``DATASET.NUM_WORKERS``) are persistent; memory is pinned on CUDA when
    ``DATASET.PIN_MEMORY``.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    seed = int(cfg_get(cfg, "EXPERIMENT.SEED", 0) if seed is None else seed)
    global_batch = int(cfg_get(cfg, "SOLVER.BATCH_SIZE", 64))
    if global_batch < 1 or global_batch % world_size:
        raise ValueError(f"SOLVER.BATCH_SIZE={global_batch} (the global batch) must be a positive multiple "
                         f"of the number of processes ({world_size})")
    batch = global_batch // world_size
    val_batch = int(cfg_get(cfg, "DATASET.TEST.BATCH_SIZE", 64))
    if val_batch < 1:
        raise ValueError(f"DATASET.TEST.BATCH_SIZE must be >= 1, got {val_batch}")
    workers = int(cfg_get(cfg, "DATASET.NUM_WORKERS", 2))
    if workers < 0:
        raise ValueError(f"DATASET.NUM_WORKERS must be >= 0, got {workers}")
    ds = build_datasets(cfg, rank=rank, seed=seed)
    pin = bool(cfg_get(cfg, "DATASET.PIN_MEMORY", True)) and torch.device(device).type == "cuda"

    sampler = EpochSampler(len(ds.train), seed=seed, rank=rank, world_size=world_size)
    per_proc = len(sampler)
    drop_last = bool(cfg_get(cfg, "DATASET.DROP_LAST", False))
    if not drop_last and per_proc % batch == 1 and per_proc > 1:
        drop_last = True  # a one-image batch cannot train batch norm
        warnings.warn(f"dropping the last training batch: {per_proc} images per process leave one "
                      f"image after {per_proc // batch} batches of {batch}", stacklevel=2)
    if per_proc < batch and drop_last:
        raise ValueError(f"{per_proc} training images per process is fewer than one batch of {batch}")
    common = dict(num_workers=workers, pin_memory=pin, persistent_workers=workers > 0,
                  worker_init_fn=_worker_init if workers > 0 else None)
    train = DataLoader(ds.train, batch_size=batch, shuffle=False, sampler=sampler,
                       drop_last=drop_last, collate_fn=ds.train_collate,
                       generator=torch.Generator().manual_seed(seed + 104729 * rank), **common)
    val_sampler = ShardSampler(len(ds.val), rank, world_size) if world_size > 1 else None
    val = DataLoader(ds.val, batch_size=val_batch, shuffle=False, sampler=val_sampler, drop_last=False,
                     collate_fn=ds.val_collate, generator=torch.Generator().manual_seed(seed + 1), **common)
    return Loaders(train=train, val=val, num_classes=ds.num_classes, train_sampler=sampler,
                   num_train=len(ds.train), num_val=len(ds.val), classes=ds.classes,
                   num_views=ds.num_views, batch_size=batch, datasets=ds)


# ---------------------------------------------------------------------------------------------
# Class-count check
# ---------------------------------------------------------------------------------------------

_HEAD_NAMES = ("fc", "classifier", "linear", "head", "last_linear")


def classifier_out_features(model: nn.Module) -> int | None:
    """Number of outputs of ``model``'s classifier, found without running it, or None.

    Looks at the usual head attributes (``fc``, ``classifier``, ``linear``, ``head``) on the
    model and on a wrapped ``model.model`` / ``model.module``, then at the last ``nn.Linear``
    registered in the model.
    """
    for m in (model, getattr(model, "module", None), getattr(model, "model", None)):
        if not isinstance(m, nn.Module):
            continue
        for name in _HEAD_NAMES:
            head = getattr(m, name, None)
            if isinstance(head, nn.Linear):
                return head.out_features
            if isinstance(head, nn.Sequential):
                lins = [x for x in head.modules() if isinstance(x, nn.Linear)]
                if lins:
                    return lins[-1].out_features
    lins = [x for x in model.modules() if isinstance(x, nn.Linear)]
    return lins[-1].out_features if lins else None


def check_num_classes(model: nn.Module, num_classes: int, *, sample: torch.Tensor | None = None,
                      what: str = "model") -> None:
    """Raise ``ValueError`` if ``model``'s classifier does not output ``num_classes`` logits.

    Call it before training. The head is found statically (see
    :func:`classifier_out_features`); if none is found and ``sample`` is given, one forward
    on it is run (the model may return ``logits`` or ``(logits, features)``).
    """
    n = classifier_out_features(model)
    if n is None and sample is not None:
        was = model.training
        model.eval()
        with torch.no_grad():
            out = model(sample)
        model.train(was)
        logits = out[0] if isinstance(out, (tuple, list)) else out
        n = int(logits.shape[-1])
    if n is None:
        warnings.warn(f"could not find the classifier of the {what} to check it against {num_classes} classes",
                      stacklevel=2)
        return
    if n != num_classes:
        raise ValueError(f"the {what}'s classifier outputs {n} classes but the dataset has {num_classes}; "
                         f"create the {what} with num_classes={num_classes} (or use a dataset with {n} classes)")
