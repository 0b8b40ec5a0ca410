"""Per-sample view transforms: image -> ``uint8`` ``H x W x 3`` array, drawing from a given generator.

They act on one image in the dataset's ``__getitem__`` (the weak view, and the strong view's
crop before the batched policy) and take an explicit ``numpy.random.Generator``, so the
per-item generator (:func:`sldistill.data.datasets.item_rng`) fixes every draw.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

__all__ = [
    "to_rgb_array",
    "ToArray",
    "RandomCropFlip",
    "RandomResizedCropFlip",
    "ResizeCenterCrop",
    "ResizeRandomCropFlip",
    "RandomRotateFlip",
    "sized_views",
]


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


def sized_views(size: int) -> tuple[ResizeRandomCropFlip | RandomResizedCropFlip, ResizeCenterCrop]:
    """``(train, test)`` transforms for images of any size brought to ``size`` (the ``folder`` rule).

    Up to 64 pixels, the CIFAR-style view: resize and centre-crop to ``size``, then a random
    crop with ``size // 8`` padding and a flip; larger, the ImageNet-style random-resized crop,
    and for testing a resize to ``size * 256 / 224`` and a centre crop.
    """
    s = int(size)
    if s < 1:
        raise ValueError(f"image size must be >= 1, got {size}")
    if s <= 64:
        return ResizeRandomCropFlip(s, padding=max(1, s // 8)), ResizeCenterCrop(s, s)
    return RandomResizedCropFlip(s), ResizeCenterCrop(int(round(s * 256 / 224)), s)
