"""Weak and strong views: the crop/flip transforms and the released RandAugment-style policy.

The strong policy is the one SLD and MLKD train with: after the view's own crop and flip,
two operations are drawn *with replacement* from :data:`STRONG_OPS`, each applied with a
magnitude drawn uniformly from its published ``(low, high)`` range, and then a Cutout square
of side ``U[0, 0.5) * width`` is painted at a uniformly random centre, filled with
``(125, 123, 114)``. The operations follow PIL's arithmetic (nearest-neighbour affine maps
filled with black, the ``ImageEnhance`` blends truncating towards zero, PIL's grey weights)
so that the distribution is that of the released PIL pipeline.

Two implementations of the policy:

* :class:`StrongAugment` (here; its kernels are in :mod:`sldistill.data.strong_ops`) works on
  a *batch* of ``uint8`` tensors ``[N, 3, H, W]`` with per-sample operations and magnitudes
  (the loaders run it in the collate step of each worker). Inside, the batch is a numpy
  array; at each of the ``num_ops`` steps the point-wise operations (AutoContrast,
  Brightness, Contrast, Equalize, Posterize, Solarize) become per-image lookup tables
  applied by one gather, the affine ones one warp, and Color and Sharpness one call each on
  the images that drew them;
* :func:`pil_op` / :func:`pil_strong_augment` (:mod:`sldistill.data.pil_reference`) are the
  plain per-image PIL version of the same policy (the reference the tests compare the
  tensor operations with, and the baseline of ``benchmarks/data.py``).

The per-sample geometric transforms (:mod:`sldistill.data.transforms`: random crop with
padding, random-resized crop, resize + centre crop, rotation) act on one image in the
dataset's ``__getitem__`` and take an explicit ``numpy.random.Generator``, so a seed fixes
the whole augmentation stream. This module re-exports them and the PIL reference.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .pil_reference import pil_cutout, pil_op, pil_strong_augment
from .strong_ops import (
    _GEO,
    _LUT,
    _LUT_OPS,
    _OPS,
    _PIXEL,
    CUTOUT_FILL,
    CUTOUT_MAX_FRACTION,
    NUM_OPS,
    OP_NAMES,
    STRONG_OPS,
    _affine_coeffs,
    _apply_lut,
    _cutout,
    _kind,
    _warp,
)
from .transforms import (
    RandomCropFlip,
    RandomResizedCropFlip,
    RandomRotateFlip,
    ResizeCenterCrop,
    ResizeRandomCropFlip,
    ToArray,
    to_rgb_array,
)

__all__ = [
    "STRONG_OPS",
    "CUTOUT_FILL",
    "CUTOUT_MAX_FRACTION",
    "apply_op",
    "cutout",
    "StrongAugment",
    "normalize_batch",
    "pil_op",
    "pil_cutout",
    "pil_strong_augment",
    "RandomCropFlip",
    "RandomResizedCropFlip",
    "ResizeCenterCrop",
    "RandomRotateFlip",
    "ResizeRandomCropFlip",
    "ToArray",
    "to_rgb_array",
]


def _host(t: torch.Tensor, dtype: torch.dtype | None = None) -> np.ndarray:
    """A tensor as a C-contiguous numpy array on the host (copied only where needed)."""
    t = t.detach().to("cpu", dtype) if dtype is not None else t.detach().cpu()
    return t.contiguous().numpy()


def apply_op(name: str, imgs: torch.Tensor, magnitude: float | Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Apply one strong operation to a ``uint8`` batch ``[N, 3, H, W]`` (or one image ``[3, H, W]``).

    ``magnitude`` is the released operation's argument (e.g. degrees for ``Rotate``, a
    fraction of the width for ``TranslateX``, the threshold for ``Solarize``): a number for
    all images or one value per image. The result equals PIL's on the same image, up to
    float rounding at exact sampling boundaries.
    """
    if name not in _OPS:
        raise ValueError(f"unknown strong operation {name!r}; valid: {list(OP_NAMES)}")
    single = imgs.dim() == 3
    x = imgs.unsqueeze(0) if single else imgs
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected uint8 images [N, 3, H, W], got {tuple(imgs.shape)} {imgs.dtype}")
    v = torch.as_tensor(magnitude, dtype=torch.float64).reshape(-1)
    if v.numel() == 1:
        v = v.expand(x.shape[0])
    elif v.numel() != x.shape[0]:
        raise ValueError(f"got {v.numel()} magnitudes for {x.shape[0]} images")
    out = torch.from_numpy(_OPS[name](_host(x), _host(v))).to(imgs.device)
    return out[0] if single else out


def cutout(imgs: torch.Tensor, side: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor,
           fill: Sequence[int] = CUTOUT_FILL) -> torch.Tensor:
    """Paint the released Cutout square on each image of a ``uint8`` batch (a new batch).

    ``side`` (pixels, float), ``cx`` and ``cy`` (centre, float) are per image. As released:
    the top-left corner is ``int(max(0, centre - side / 2))``, the far corner
    ``min(size, corner + side)``, and PIL's rectangle includes both corners; ``side <= 0``
    leaves the image unchanged.
    """
    return torch.from_numpy(_cutout(_host(imgs), _host(side, torch.float64), _host(cx, torch.float64),
                                    _host(cy, torch.float64), fill)).to(imgs.device)


class StrongAugment:
    """The released strong policy on a ``uint8`` batch ``[N, 3, H, W]``, per-image randomness.

    For each image: ``num_ops`` operations drawn uniformly with replacement from ``ops``,
    each magnitude ``low + (high - low) * U[0, 1)``, applied in order; then Cutout with side
    ``U[0, cutout) * W`` at a uniform centre (``cutout=0`` disables it). At each step, the
    images that drew point-wise operations (AutoContrast, Brightness, Contrast, Equalize,
    Posterize, Solarize) are mapped by one per-image lookup table gather, those that drew
    an affine operation by one warp, and Color / Sharpness run once on the images that drew them.
    """

    def __init__(self, num_ops: int = NUM_OPS, ops: Sequence[tuple[str, float, float]] = STRONG_OPS,
                 cutout: float = CUTOUT_MAX_FRACTION, fill: Sequence[int] = CUTOUT_FILL) -> None:
        for name, lo, hi in ops:
            if name not in _OPS:
                raise ValueError(f"unknown strong operation {name!r}; valid: {list(OP_NAMES)}")
            if hi < lo:
                raise ValueError(f"operation {name}: range ({lo}, {hi}) has high < low")
        if num_ops < 0:
            raise ValueError(f"num_ops must be >= 0, got {num_ops}")
        if not 0.0 <= cutout <= 1.0:
            raise ValueError(f"cutout fraction must be in [0, 1], got {cutout}")
        self.num_ops = int(num_ops)
        self.ops = tuple((str(n), float(lo), float(hi)) for n, lo, hi in ops)
        self.cutout = float(cutout)
        self.fill = tuple(int(c) for c in fill)
        self._lo = torch.tensor([lo for _, lo, _ in self.ops], dtype=torch.float64)
        self._span = torch.tensor([hi - lo for _, lo, hi in self.ops], dtype=torch.float64)
        self._kinds = np.array([_kind(name) for name, _, _ in self.ops], dtype=np.int64)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``(op_ids [n, num_ops], magnitudes [n, num_ops])`` for ``n`` images."""
        ids = torch.randint(0, len(self.ops), (n, self.num_ops), generator=generator)
        u = torch.rand((n, self.num_ops), generator=generator, dtype=torch.float64)
        return ids, self._lo[ids] + self._span[ids] * u

    def _apply(self, out: np.ndarray, ids: np.ndarray, mags: np.ndarray) -> np.ndarray:
        """The drawn operations on a numpy batch, in place (``out`` is returned)."""
        h, w = out.shape[2], out.shape[3]
        for step in range(ids.shape[1]):
            col, mag = ids[:, step], mags[:, step]
            kinds = self._kinds[col]
            lut_sel = np.flatnonzero(kinds == _LUT)
            if lut_sel.size:  # all point-wise operations of this step: one gather
                sub, sub_col, sub_mag = out[lut_sel], col[lut_sel], mag[lut_sel]
                lut = np.empty((len(lut_sel), 3, 256), dtype=np.uint8)
                for k in np.unique(sub_col):
                    pos = np.flatnonzero(sub_col == k)
                    lut[pos] = _LUT_OPS[self.ops[k][0]](sub[pos], sub_mag[pos])
                out[lut_sel] = _apply_lut(sub, lut)
            pix_sel = np.flatnonzero(kinds == _PIXEL)
            if pix_sel.size:
                for k in np.unique(col[pix_sel]):
                    sel = np.flatnonzero(col == k)
                    out[sel] = _OPS[self.ops[k][0]](out[sel], mag[sel])
            geo_sel = np.flatnonzero(kinds == _GEO)
            if geo_sel.size:  # all affine maps of this step in one warp
                coeffs = np.empty((len(geo_sel), 6), dtype=np.float64)
                sub_col = col[geo_sel]
                for k in np.unique(sub_col):
                    pos = np.flatnonzero(sub_col == k)
                    coeffs[pos] = _affine_coeffs(self.ops[k][0], mag[geo_sel[pos]], h, w)
                out[geo_sel] = _warp(out[geo_sel], coeffs)
        return out

    def apply(self, imgs: torch.Tensor, ids: torch.Tensor, mags: torch.Tensor) -> torch.Tensor:
        """Apply drawn operations (see :meth:`sample`) to ``imgs``; no randomness."""
        out = self._apply(_host(imgs).copy(), _host(ids), _host(mags, torch.float64))
        return torch.from_numpy(out).to(imgs.device)

    def __call__(self, imgs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment a ``uint8`` batch ``[N, 3, H, W]``; returns a new ``uint8`` batch."""
        if imgs.dtype != torch.uint8 or imgs.dim() != 4 or imgs.shape[1] != 3:
            raise ValueError(f"expected uint8 images [N, 3, H, W], got {tuple(imgs.shape)} {imgs.dtype}")
        n, _, h, w = imgs.shape
        ids, mags = self.sample(n, generator)
        out = self._apply(_host(imgs).copy(), ids.numpy(), mags.numpy())
        if self.cutout > 0:
            u = torch.rand((n, 3), generator=generator, dtype=torch.float64).numpy()
            out = _cutout(out, u[:, 0] * self.cutout * w, u[:, 1] * w, u[:, 2] * h, self.fill)
        return torch.from_numpy(out).to(imgs.device)


def normalize_batch(imgs: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """``uint8 [N, C, H, W]`` -> ``float32`` ``(x / 255 - mean) / std`` (what ToTensor + Normalize give).

    ``out``: a ``float32`` tensor of the same shape to write the result into (e.g. one in
    shared memory, so that a worker's batch reaches the main process without a copy).
    """
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    if out is None:
        x = imgs.to(torch.float32)
    else:
        if out.dtype != torch.float32 or out.shape != imgs.shape:
            raise ValueError(f"out must be float32 of shape {tuple(imgs.shape)}, got {out.dtype} {tuple(out.shape)}")
        x = out.copy_(imgs)
    return x.div_(255.0).sub_(m).div_(s)  # in place after the one conversion
