"""The plain per-image PIL version of the strong policy.

It is the reference the tests compare the batched kernels with (:mod:`sldistill.data.augment`)
and the baseline of ``benchmarks/data.py``: one PIL call per operation, as released.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from .strong_ops import CUTOUT_FILL, CUTOUT_MAX_FRACTION, NUM_OPS, OP_NAMES, STRONG_OPS

__all__ = ["pil_op", "pil_cutout", "pil_strong_augment"]


def _pil_affine(img: Image.Image, coeffs: tuple[float, ...]) -> Image.Image:
    return img.transform(img.size, Image.Transform.AFFINE, coeffs, resample=Image.Resampling.NEAREST)


#: name -> ``(image, magnitude) -> image`` with PIL's own functions
_PIL_OPS: dict[str, Callable[[Image.Image, float], Image.Image]] = {
    "AutoContrast": lambda img, v: ImageOps.autocontrast(img),
    "Brightness": lambda img, v: ImageEnhance.Brightness(img).enhance(v),
    "Color": lambda img, v: ImageEnhance.Color(img).enhance(v),
    "Contrast": lambda img, v: ImageEnhance.Contrast(img).enhance(v),
    "Equalize": lambda img, v: ImageOps.equalize(img),
    "Identity": lambda img, v: img,
    "Posterize": lambda img, v: ImageOps.posterize(img, max(1, int(v))),
    "Rotate": lambda img, v: img.rotate(v),
    "Sharpness": lambda img, v: ImageEnhance.Sharpness(img).enhance(v),
    "ShearX": lambda img, v: _pil_affine(img, (1, v, 0, 0, 1, 0)),
    "ShearY": lambda img, v: _pil_affine(img, (1, 0, 0, v, 1, 0)),
    "Solarize": lambda img, v: ImageOps.solarize(img, v),  # type: ignore[arg-type]  # float threshold, as released
    "TranslateX": lambda img, v: _pil_affine(img, (1, 0, v * img.size[0], 0, 1, 0)),
    "TranslateY": lambda img, v: _pil_affine(img, (1, 0, 0, 0, 1, v * img.size[1])),
}


def pil_op(name: str, img: Image.Image, v: float) -> Image.Image:
    """One strong operation on an RGB PIL image, with PIL's own functions (the reference)."""
    if name not in _PIL_OPS:
        raise ValueError(f"unknown strong operation {name!r}; valid: {list(OP_NAMES)}")
    return _PIL_OPS[name](img, v)


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
