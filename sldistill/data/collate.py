"""Collation: stack the items' ``uint8`` views, run the strong policy per batch, normalise.

Batches are named records (dicts):

* training: ``{"views": [Tensor, ...], "target": LongTensor[B], "index": LongTensor[B]}``
  with one ``float32`` ``[B, 3, H, W]`` tensor per view (the weak view first, every later
  one strong), plus ``"contrast_index": LongTensor[B, K + 1]`` when the items carry CRD's
  contrast indices, and ``"view_id": LongTensor[B]`` (the id of each weak view, see
  :class:`sldistill.data.transforms.CropFlipGrid`) when the weak view's transform is finite:
  ``(index, view_id)`` names the exact weak view, which a teacher-logit cache looks up;
* validation: ``{"image": Tensor, "target": LongTensor[B]}``.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import get_worker_info

from .augment import StrongAugment, normalize_batch
from .sampling import batch_seed

__all__ = ["BatchCollate", "TRAIN_BATCH_KEYS"]

#: what a training batch holds: always the first three, ``contrast_index`` for CRD sampling,
#: ``view_id`` when the weak view's transform is finite
TRAIN_BATCH_KEYS = ("views", "target", "index", "contrast_index", "view_id")


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


def _stack(arrays: Sequence[np.ndarray]) -> torch.Tensor:
    """``H x W x C`` arrays -> ``[N, C, H, W]``, each copied straight into its channel-first slot
    (one pass; faster than stacking and then permuting for small images)."""
    first = arrays[0]
    if any(a.shape != first.shape for a in arrays):
        raise ValueError(f"cannot batch views of different shapes: {sorted({a.shape for a in arrays})}")
    h, w, c = first.shape
    out = np.empty((len(arrays), c, h, w), dtype=first.dtype)
    for slot, a in zip(out, arrays):
        slot[...] = a.transpose(2, 0, 1)
    return torch.from_numpy(out)


class BatchCollate:
    """Turn dataset items ``(views, target, index[, contrast_index])`` into a batch record.

    ``train=True`` gives the training record, ``train=False`` the validation one (see the
    module docstring; a validation item has exactly one view). With ``strong`` given, the
    strong policy runs on every view after the first, as a batch, from one generator seeded
    with :func:`batch_seed` ``(seed, rank, epoch, indices)``: the epoch being the one the
    items were drawn for (:class:`~sldistill.data.datasets.Views` carry it; 0 for items of
    another kind).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], *, train: bool,
                 strong: StrongAugment | None = None, seed: int = 0, rank: int = 0) -> None:
        self.mean, self.std, self.train = tuple(mean), tuple(std), bool(train)
        self.strong = strong
        self.seed, self.rank = int(seed), int(rank)

    def __call__(self, items: Sequence[tuple]) -> dict[str, Any]:
        n_views = len(items[0][0])
        views = [_stack([it[0][v] for it in items]) for v in range(n_views)]
        if self.strong is not None and n_views >= 2:
            epoch = getattr(items[0][0], "epoch", 0)
            g = torch.Generator().manual_seed(batch_seed(self.seed, self.rank, epoch, [it[2] for it in items]))
            for v in range(1, n_views):
                views[v] = self.strong(views[v], g)
        images = [normalize_batch(v, self.mean, self.std, out=_worker_output(v.shape)) for v in views]
        target = torch.tensor([it[1] for it in items], dtype=torch.int64)
        if not self.train:
            if n_views != 1:
                raise ValueError(f"a validation item has one view, got {n_views}")
            return {"image": images[0], "target": target}
        batch: dict[str, Any] = {"views": images, "target": target,
                                 "index": torch.tensor([it[2] for it in items], dtype=torch.int64)}
        if len(items[0]) > 3:
            batch["contrast_index"] = torch.from_numpy(np.stack([it[3] for it in items]))
        view_ids = [getattr(it[0], "view_id", None) for it in items]
        if all(v is not None for v in view_ids):
            batch["view_id"] = torch.tensor(view_ids, dtype=torch.int64)
        return batch
