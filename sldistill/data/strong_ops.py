"""The strong policy's table and its batched kernels on numpy ``uint8`` arrays ``[N, 3, H, W]``.

:data:`STRONG_OPS` is the released operation list with its magnitude ranges. The kernels
reproduce PIL's arithmetic (nearest-neighbour affine maps filled with black, the
``ImageEnhance`` blends truncating towards zero, PIL's grey weights) with one value per image.
The point-wise operations are written as per-(image, channel) lookup tables ``[N, 3, 256]``
so that all images of one step that drew any of them are mapped by a single gather. Numpy is
used rather than torch because a small numpy call costs a fraction of a torch call and these
calls touch a few kilobytes each. :mod:`sldistill.data.augment` builds the policy on them.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

__all__ = ["STRONG_OPS", "OP_NAMES", "CUTOUT_FILL", "CUTOUT_MAX_FRACTION", "NUM_OPS"]

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
