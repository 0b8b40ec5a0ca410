"""CRD's contrast indices: the positive and ``K`` negatives of each sample, drawn per item."""
from __future__ import annotations

import numpy as np
import torch

from .datasets import ArrayDataset, FileDataset, ItemKey, split_key

__all__ = ["ContrastiveDataset"]


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
