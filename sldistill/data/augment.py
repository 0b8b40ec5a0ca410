"""Weak and strong views: the crop/flip transforms and the released RandAugment-style policy.

The strong policy is the one SLD and MLKD train with: after the view's own crop and flip,
two operations are drawn *with replacement* from :data:`STRONG_OPS`, each applied with a
magnitude drawn uniformly from its published ``(low, high)`` range, and then a Cutout square
of side ``U[0, 0.5) * width`` is painted at a uniformly random centre, filled with
``(125, 123, 114)``. The operations follow PIL's arithmetic (nearest-neighbour affine maps
filled with black, the ``ImageEnhance`` blends truncating towards zero, PIL's grey weights)
so that the distribution is that of the released PIL pipeline.

Two implementations live here:

* :class:`StrongAugment` works on a *batch* of ``uint8`` tensors ``[N, 3, H, W]`` with
  per-sample operations and magnitudes (the loaders run it in the collate step of each
  worker). Inside, the batch is a numpy array (a small numpy call costs a fraction of a
  torch call, and these calls touch a few kilobytes each); at each of the ``num_ops`` steps
  the point-wise operations (AutoContrast, Brightness, Contrast, Equalize, Posterize,
  Solarize) become per-image lookup tables applied by one gather, the affine ones one warp,
  and Color and Sharpness one call each on the images that drew them;
* :func:`pil_op` / :func:`pil_strong_augment` are the plain per-image PIL version of the same
  policy (the reference the tests compare the tensor operations with, and the baseline of
  ``benchmarks/data.py``).

Per-sample geometric transforms (random crop with padding, random-resized crop, resize +
centre crop, rotation) act on one image in the dataset's ``__getitem__`` and take an explicit
``numpy.random.Generator``, so a seed fixes the whole augmentation stream.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

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

# (name, low, high): the released operation list and magnitude ranges, in the released order.
STRONG_OPS: tuple[tuple[str, float, float], ...] = (
    ("AutoContrast", 0.0, 1.0),
    ("Brightness", 0.05, 0.95),
    ("Color", 0.05, 0.95),
    ("Contrast", 0.05, 0.95),
    ("Equalize", 0.0, 1.0),
    ("Identity", 0.0, 1.0),
    ("Posterize", 4.0, 8.0),
    ("Rotate", -30.0, 30.0),
    ("Sharpness", 0.05, 0.95),
    ("ShearX", -0.3, 0.3),
    ("ShearY", -0.3, 0.3),
    ("Solarize", 0.0, 256.0),
    ("TranslateX", -0.3, 0.3),
    ("TranslateY", -0.3, 0.3),
)
OP_NAMES: tuple[str, ...] = tuple(name for name, _, _ in STRONG_OPS)
CUTOUT_FILL: tuple[int, int, int] = (125, 123, 114)
CUTOUT_MAX_FRACTION: float = 0.5  # side = U[0, 0.5) * width
NUM_OPS: int = 2  # operations per image, drawn with replacement

_GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")


# ---------------------------------------------------------------------------------------------
# Batched operations on numpy: imgs uint8 [N, 3, H, W] (C-contiguous), v float64 [N]
# (numpy's per-call cost is a fraction of torch's, and these calls touch a few KB each).
# The point-wise operations are written as per-(image, channel) lookup tables [N, 3, 256]
# so that all images of one step that drew any of them are mapped by a single gather.
# ---------------------------------------------------------------------------------------------

_LEVELS = np.arange(256, dtype=np.uint8)


def _blend(degenerate: np.ndarray, imgs: np.ndarray, v: np.ndarray) -> np.ndarray:
    """PIL ``Image.blend`` for factors in [0, 1]: ``trunc(d + f * (x - d))`` in float32."""
    f = v.astype(np.float32).reshape((-1,) + (1,) * (imgs.ndim - 1))
    d = degenerate.astype(np.float32)
    out = d + f * (imgs.astype(np.float32) - d)
    return np.clip(out, 0, 255, out=out).astype(np.uint8)  # float -> uint8 truncates towards zero


def _grey(imgs: np.ndarray) -> np.ndarray:
    """PIL's RGB -> L conversion (ITU-R 601-2 weights in 16-bit fixed point), shape [N, 1, H, W]."""
    x = imgs.astype(np.int32)
    return ((x[:, 0:1] * 19595 + x[:, 1:2] * 38470 + x[:, 2:3] * 7471 + 0x8000) >> 16).astype(np.uint8)


def _levels(n: int) -> np.ndarray:
    return np.broadcast_to(_LEVELS, (n, 3, 256))


def _lut_autocontrast(imgs: np.ndarray, v: np.ndarray) -> np.ndarray:
    n = imgs.shape[0]
    flat = imgs.reshape(n, 3, -1)
    lo = flat.min(axis=2).astype(np.float64)
    hi = flat.max(axis=2).astype(np.float64)
    span = hi - lo
    ok = span > 0
    scale = np.where(ok, 255.0 / np.maximum(span, 1.0), 1.0)
    offset = np.where(ok, -lo * scale, 0.0)
    out = np.trunc(_LEVELS.astype(np.float64) * scale[:, :, None] + offset[:, :, None])
    return np.clip(out, 0, 255, out=out).astype(np.uint8)


def _lut_brightness(imgs: np.ndarray, v: np.ndarray) -> np.ndarray:
    lv = _levels(imgs.shape[0])
    return _blend(np.zeros(lv.shape, np.uint8), lv, v)


def _lut_contrast(imgs: np.ndarray, v: np.ndarray) -> np.ndarray:
    n = imgs.shape[0]
    mean = _grey(imgs).reshape(n, -1).astype(np.float64).mean(axis=1)
    level = np.floor(mean + 0.5).astype(np.uint8).reshape(n, 1, 1)
    return _blend(np.broadcast_to(level, (n, 3, 256)), _levels(n), v)


def _lut_equalize(imgs: np.ndarray, v: np.ndarray) -> np.ndarray:
    n, c, h, w = imgs.shape
    rows = n * c
    flat = imgs.reshape(rows, h * w).astype(np.intp) + (np.arange(rows, dtype=np.intp) * 256)[:, None]
    hist = np.bincount(flat.ravel(), minlength=rows * 256).reshape(rows, 256).astype(np.int64)
    nonzero = hist > 0
    count = nonzero.sum(axis=1)
    # value of the last non-empty bin (the histogram entry for the brightest level present)
    last_level = 255 - np.argmax(nonzero[:, ::-1], axis=1)
    last = hist[np.arange(rows), last_level]
    step = (h * w - last) // 255
    use = (count > 1) & (step > 0)
    safe = np.where(use, step, 1)[:, None]
    before = np.cumsum(hist, axis=1) - hist  # pixels strictly below each level
    lut = np.minimum((safe // 2 + before) // safe, 255)
    lut = np.where(use[:, None], lut, np.arange(256, dtype=np.int64))
    return lut.astype(np.uint8).reshape(n, c, 256)


def _lut_posterize(imgs: np.ndarray, v: np.ndarray) -> np.ndarray:
    bits = np.clip(v.astype(np.int64), 1, 8)  # int(v), at least 1, as released
    mask = (255 - ((1 << (8 - bits)) - 1)).astype(np.uint8).reshape(-1, 1, 1)
    return _levels(len(v)) & mask


def _lut_solarize(imgs: np.ndarray, v: np.ndarray) -> np.ndarray:
    lv = _levels(len(v))
    return np.where(lv.astype(np.float64) >= v.reshape(-1, 1, 1), 255 - lv, lv)


def _apply_lut(imgs: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """``out[n, c, y, x] = lut[n, c, imgs[n, c, y, x]]`` for ``lut`` uint8 [N, 3, 256]."""
    n, c, h, w = imgs.shape
    offs = (np.arange(n * c, dtype=np.intp) * 256).reshape(n, c, 1)
    return np.ascontiguousarray(lut).ravel().take(imgs.reshape(n, c, h * w) + offs).reshape(n, c, h, w)


def _color(imgs: np.ndarray, v: np.ndarray) -> np.ndarray:
    return _blend(_grey(imgs), imgs, v)


def _sharpness(imgs: np.ndarray, v: np.ndarray) -> np.ndarray:
    # degenerate = PIL's SMOOTH filter: 3x3 kernel [[1,1,1],[1,5,1],[1,1,1]] / 13, rounded to
    # nearest (integer sums never tie), one-pixel border left unfiltered.
    x = imgs.astype(np.int32)
    h, w = x.shape[2], x.shape[3]
    total = 4 * x[:, :, 1:-1, 1:-1]
    for dy in range(3):
        for dx in range(3):
            total += x[:, :, dy:h - 2 + dy, dx:w - 2 + dx]
    degenerate = imgs.copy()
    degenerate[:, :, 1:-1, 1:-1] = (2 * total + 13) // 26
    return _blend(degenerate, imgs, v)


def _affine_coeffs(name: str, v: np.ndarray, h: int, w: int) -> np.ndarray:
    """PIL affine data ``(a, b, c, d, e, f)`` (output pixel -> input position), shape [N, 6]."""
    out = np.zeros((len(v), 6), dtype=np.float64)
    out[:, 0] = out[:, 4] = 1.0
    if name == "ShearX":
        out[:, 1] = v
    elif name == "ShearY":
        out[:, 3] = v
    elif name == "TranslateX":
        out[:, 2] = v * w
    elif name == "TranslateY":
        out[:, 5] = v * h
    elif name == "Rotate":  # counter-clockwise by v degrees about the image centre (PIL Image.rotate)
        phi = -np.deg2rad(np.remainder(v, 360.0))
        a, b = np.cos(phi), np.sin(phi)
        a, b = np.round(a * 1e15) / 1e15, np.round(b * 1e15) / 1e15
        cx, cy = w / 2.0, h / 2.0
        out[:, 0], out[:, 1], out[:, 3], out[:, 4] = a, b, -b, a
        out[:, 2] = a * (-cx) + b * (-cy) + cx
        out[:, 5] = -b * (-cx) + a * (-cy) + cy
    else:
        raise ValueError(f"{name!r} is not a geometric operation; valid: {_GEOMETRIC}")
    return out


def _warp(imgs: np.ndarray, coeffs: np.ndarray, fill: int = 0) -> np.ndarray:
    """Nearest-neighbour affine warp with PIL's sampling rule, outside filled with ``fill``.

    Output pixel ``(x, y)`` reads input ``floor(a (x + .5) + b (y + .5) + c)`` (likewise for
    rows), evaluated as PIL's nearest-neighbour affine does: in 16.16 fixed point, with each
    coefficient rounded to the nearest 1/65536.
    """
    n, c, h, w = imgs.shape
    k = coeffs
    fixed = np.floor(np.stack([k[:, 0], k[:, 1], k[:, 2] + k[:, 0] * 0.5 + k[:, 1] * 0.5,
                               k[:, 3], k[:, 4], k[:, 5] + k[:, 3] * 0.5 + k[:, 4] * 0.5], 1)
                     * 65536.0 + 0.5).astype(np.int64)
    hw = h * w
    # |coefficient| * 65536 * (size + 1) must fit in int32 for the narrow arithmetic below
    wide = np.abs(fixed).max(initial=0) * (max(h, w) + 1) * 4 >= 2**31
    it = np.int64 if wide else np.int32
    fixed = fixed.astype(it).reshape(n, 6, 1, 1)
    a0, a1, a2, a3, a4, a5 = (fixed[:, i] for i in range(6))
    ys = np.arange(h, dtype=it).reshape(1, h, 1)
    xs = np.arange(w, dtype=it).reshape(1, 1, w)
    xin = (a0 * xs + (a2 + a1 * ys)) >> 16
    yin = (a3 * xs + (a5 + a4 * ys)) >> 16
    # negative coordinates wrap to large unsigned values: one comparison per axis
    valid = (xin.view(np.uint64 if wide else np.uint32) < w) & (yin.view(np.uint64 if wide else np.uint32) < h)
    src = np.where(valid, yin * w + xin, hw).reshape(n, 1, hw)  # outside -> the appended fill pixel
    planes = np.empty((n, c, hw + 1), dtype=np.uint8)
    planes[:, :, :hw] = imgs.reshape(n, c, hw)
    planes[:, :, hw] = fill
    src = src + (np.arange(n * c, dtype=it) * (hw + 1)).reshape(n, c, 1)
    return planes.ravel().take(src).reshape(n, c, h, w)


def _geometric(name: str) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    def op(imgs: np.ndarray, v: np.ndarray) -> np.ndarray:
        return _warp(imgs, _affine_coeffs(name, v, imgs.shape[2], imgs.shape[3]))

    op.__name__ = f"_{name.lower()}"
    return op


_LUT_OPS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "AutoContrast": _lut_autocontrast,
    "Brightness": _lut_brightness,
    "Contrast": _lut_contrast,
    "Equalize": _lut_equalize,
    "Posterize": _lut_posterize,
    "Solarize": _lut_solarize,
}


def _lut_op(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    def op(imgs: np.ndarray, v: np.ndarray) -> np.ndarray:
        return _apply_lut(imgs, fn(imgs, v))

    return op


_OPS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    **{name: _lut_op(fn) for name, fn in _LUT_OPS.items()},
    "Identity": lambda imgs, v: imgs.copy(),
    "Color": _color,
    "Sharpness": _sharpness,
    **{g: _geometric(g) for g in _GEOMETRIC},
}
# kinds of operation, for grouping one step's draws
_IDENTITY, _LUT, _PIXEL, _GEO = 0, 1, 2, 3


def _kind(name: str) -> int:
    if name == "Identity":
        return _IDENTITY
    if name in _LUT_OPS:
        return _LUT
    return _GEO if name in _GEOMETRIC else _PIXEL


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


def _cutout(imgs: np.ndarray, side: np.ndarray, cx: np.ndarray, cy: np.ndarray, fill: Sequence[int]) -> np.ndarray:
    """:func:`cutout` on a numpy batch (a new batch)."""
    n, _, h, w = imgs.shape
    side = side.reshape(n, 1)
    x0 = np.trunc(np.maximum(cx.reshape(n, 1) - side / 2, 0.0))
    y0 = np.trunc(np.maximum(cy.reshape(n, 1) - side / 2, 0.0))
    x1 = np.trunc(np.minimum(x0 + side, float(w)))
    y1 = np.trunc(np.minimum(y0 + side, float(h)))
    xs = np.arange(w, dtype=np.float64).reshape(1, w)
    ys = np.arange(h, dtype=np.float64).reshape(1, h)
    on = side > 0
    mx = (xs >= x0) & (xs <= x1) & on
    my = (ys >= y0) & (ys <= y1) & on
    inside = (my[:, :, None] & mx[:, None, :]).view(np.uint8)[:, None]  # [N, 1, H, W], 0 or 1
    colour = np.asarray(fill, dtype=np.uint8).reshape(1, -1, 1, 1)
    return imgs * (1 - inside) + colour * inside  # one of the two terms is 0: no overflow


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


# ---------------------------------------------------------------------------------------------
# The plain PIL version of the policy (reference and benchmark baseline)
# ---------------------------------------------------------------------------------------------

def _pil_affine(img: Image.Image, coeffs: tuple[float, ...]) -> Image.Image:
    return img.transform(img.size, Image.Transform.AFFINE, coeffs, resample=Image.Resampling.NEAREST)


def pil_op(name: str, img: Image.Image, v: float) -> Image.Image:
    """One strong operation on an RGB PIL image, with PIL's own functions (the reference)."""
    w, h = img.size
    if name == "AutoContrast":
        return ImageOps.autocontrast(img)
    if name == "Brightness":
        return ImageEnhance.Brightness(img).enhance(v)
    if name == "Color":
        return ImageEnhance.Color(img).enhance(v)
    if name == "Contrast":
        return ImageEnhance.Contrast(img).enhance(v)
    if name == "Equalize":
        return ImageOps.equalize(img)
    if name == "Identity":
        return img
    if name == "Posterize":
        return ImageOps.posterize(img, max(1, int(v)))
    if name == "Rotate":
        return img.rotate(v)
    if name == "Sharpness":
        return ImageEnhance.Sharpness(img).enhance(v)
    if name == "ShearX":
        return _pil_affine(img, (1, v, 0, 0, 1, 0))
    if name == "ShearY":
        return _pil_affine(img, (1, 0, 0, v, 1, 0))
    if name == "Solarize":
        return ImageOps.solarize(img, v)
    if name == "TranslateX":
        return _pil_affine(img, (1, 0, v * w, 0, 1, 0))
    if name == "TranslateY":
        return _pil_affine(img, (1, 0, 0, 0, 1, v * h))
    raise ValueError(f"unknown strong operation {name!r}; valid: {list(OP_NAMES)}")


def pil_cutout(img: Image.Image, side: float, cx: float, cy: float,
               fill: Sequence[int] = CUTOUT_FILL) -> Image.Image:
    """The released Cutout on a PIL image (a filled ``ImageDraw`` rectangle)."""
    if side <= 0:
        return img
    w, h = img.size
    x0 = int(max(0.0, cx - side / 2.0))
    y0 = int(max(0.0, cy - side / 2.0))
    x1 = min(w, x0 + side)
    y1 = min(h, y0 + side)
    img = img.copy()
    ImageDraw.Draw(img).rectangle((x0, y0, x1, y1), tuple(fill))
    return img


def pil_strong_augment(img: Image.Image, rng: np.random.Generator, num_ops: int = NUM_OPS,
                       ops: Sequence[tuple[str, float, float]] = STRONG_OPS,
                       cutout_fraction: float = CUTOUT_MAX_FRACTION) -> Image.Image:
    """The strong policy on one PIL image, one PIL call per operation (benchmark baseline)."""
    for k in rng.integers(0, len(ops), size=num_ops):
        name, lo, hi = ops[int(k)]
        img = pil_op(name, img, lo + (hi - lo) * float(rng.random()))
    w, h = img.size
    side = float(rng.random()) * cutout_fraction * w
    return pil_cutout(img, side, float(rng.random()) * w, float(rng.random()) * h)


# ---------------------------------------------------------------------------------------------
# Per-sample geometric transforms (weak view; the strong view's crop): image -> uint8 HWC array
# ---------------------------------------------------------------------------------------------

def to_rgb_array(img: Image.Image | np.ndarray) -> np.ndarray:
    """A PIL image or ``H x W [x C]`` array as a ``uint8`` ``H x W x 3`` array (grey repeated)."""
    a = np.asarray(img.convert("RGB") if isinstance(img, Image.Image) and img.mode != "RGB" else img)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a, dtype=np.uint8)


class ToArray:
    """No augmentation: the image as a ``uint8`` ``H x W x 3`` array (CIFAR / Tiny-ImageNet test)."""

    def __call__(self, img: Image.Image | np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        return to_rgb_array(img)

    def __repr__(self) -> str:
        return "ToArray()"


class RandomCropFlip:
    """``RandomCrop(size, padding)`` (zero padding) then a horizontal flip with probability 1/2."""

    def __init__(self, size: int, padding: int = 4, flip: bool = True) -> None:
        self.size, self.padding, self.flip = int(size), int(padding), bool(flip)

    def __call__(self, img: Image.Image | np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if type(img) is np.ndarray and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3:
            a = img  # the common case (CIFAR rows), without to_rgb_array's checks and copy
        else:
            a = to_rgb_array(img)
        h, w = a.shape[:2]
        p, s = self.padding, self.size
        if h + 2 * p < s or w + 2 * p < s:
            raise ValueError(f"image {h}x{w} with padding {p} is smaller than the crop {s}")
        top = int(rng.integers(0, h + 2 * p - s + 1)) - p
        left = int(rng.integers(0, w + 2 * p - s + 1)) - p
        out = np.zeros((s, s, 3), dtype=np.uint8)
        y0 = top if top > 0 else 0
        x0 = left if left > 0 else 0
        y1 = min(top + s, h)
        x1 = min(left + s, w)
        if self.flip and rng.random() < 0.5:  # flipped: window column j lands in column s - 1 - j
            out[y0 - top:y1 - top, s - (x1 - left):s - (x0 - left)] = a[y0:y1, x0:x1, :][:, ::-1]
        else:
            out[y0 - top:y1 - top, x0 - left:x1 - left] = a[y0:y1, x0:x1]
        return out

    def __repr__(self) -> str:
        return f"RandomCropFlip(size={self.size}, padding={self.padding}, flip={self.flip})"


def _resize_short(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    if min(w, h) == size:
        return img
    if w <= h:
        nw, nh = size, int(size * h / w)
    else:
        nw, nh = int(size * w / h), size
    return img.resize((nw, nh), Image.Resampling.BILINEAR)


def _center_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    if w < size or h < size:  # pad like torchvision's CenterCrop
        canvas = Image.new(img.mode, (max(w, size), max(h, size)))
        canvas.paste(img, ((max(w, size) - w) // 2, (max(h, size) - h) // 2))
        img, (w, h) = canvas, canvas.size
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def _as_pil(img: Image.Image | np.ndarray) -> Image.Image:
    if isinstance(img, Image.Image):
        return img if img.mode == "RGB" else img.convert("RGB")
    return Image.fromarray(to_rgb_array(img))


class RandomResizedCropFlip:
    """``RandomResizedCrop(size, scale, ratio)`` (bilinear) then a horizontal flip with p = 1/2.

    The crop box is drawn as torchvision does: up to 10 tries of an area fraction
    ``U(scale)`` and a log-uniform aspect ratio; otherwise the centred crop of the largest
    box within ``ratio``.
    """

    def __init__(self, size: int, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0), flip: bool = True) -> None:
        self.size, self.scale, self.ratio, self.flip = int(size), tuple(scale), tuple(ratio), bool(flip)

    def box(self, width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """``(top, left, h, w)`` of the crop."""
        area = width * height
        log_r = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * rng.uniform(self.scale[0], self.scale[1])
            aspect = math.exp(rng.uniform(log_r[0], log_r[1]))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            h, w = height, int(round(height * max(self.ratio)))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, img: Image.Image | np.ndarray, rng: np.random.Generator) -> np.ndarray:
        pil = _as_pil(img)
        top, left, h, w = self.box(pil.size[0], pil.size[1], rng)
        pil = pil.resize((self.size, self.size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))
        a = np.asarray(pil)
        if self.flip and rng.random() < 0.5:
            a = a[:, ::-1]
        return to_rgb_array(a)

    def __repr__(self) -> str:
        return f"RandomResizedCropFlip(size={self.size}, scale={self.scale}, ratio={self.ratio})"


class ResizeCenterCrop:
    """``Resize(resize)`` (shorter side, bilinear) then ``CenterCrop(crop)`` (ImageNet test)."""

    def __init__(self, resize: int, crop: int) -> None:
        self.resize, self.crop = int(resize), int(crop)

    def __call__(self, img: Image.Image | np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        return to_rgb_array(_center_crop(_resize_short(_as_pil(img), self.resize), self.crop))

    def __repr__(self) -> str:
        return f"ResizeCenterCrop(resize={self.resize}, crop={self.crop})"


class ResizeRandomCropFlip:
    """``Resize(size)`` + ``CenterCrop(size)``, then ``RandomCrop(size, padding)`` + flip (small folders)."""

    def __init__(self, size: int, padding: int) -> None:
        self.size = int(size)
        self.inner = RandomCropFlip(size, padding)

    def __call__(self, img: Image.Image | np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.inner(_center_crop(_resize_short(_as_pil(img), self.size), self.size), rng)

    def __repr__(self) -> str:
        return f"ResizeRandomCropFlip(size={self.size}, padding={self.inner.padding})"


class RandomRotateFlip:
    """``RandomRotation(degrees)`` (nearest, black fill) then a horizontal flip (Tiny-ImageNet)."""

    def __init__(self, degrees: float = 20.0, flip: bool = True) -> None:
        self.degrees, self.flip = float(degrees), bool(flip)

    def __call__(self, img: Image.Image | np.ndarray, rng: np.random.Generator) -> np.ndarray:
        angle = float(rng.uniform(-self.degrees, self.degrees))
        a = np.asarray(_as_pil(img).rotate(angle, resample=Image.Resampling.NEAREST))
        if self.flip and rng.random() < 0.5:
            a = a[:, ::-1]
        return to_rgb_array(a)

    def __repr__(self) -> str:
        return f"RandomRotateFlip(degrees={self.degrees})"
