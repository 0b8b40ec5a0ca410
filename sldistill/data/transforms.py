"""Per-sample view transforms: image -> ``uint8`` ``H x W x 3`` array, drawing from a given generator.

They act on one image in the dataset's ``__getitem__`` (the weak view, and the strong view's
crop before the batched policy) and take an explicit ``numpy.random.Generator``, so the
per-item generator (:func:`sldistill.data.datasets.item_rng`) fixes every draw.

Finite views. A transform whose distinct outputs for an image form a small finite set says
so with ``finite_views = True`` and numbers its outputs ("view ids", ``0 .. V - 1``):

* ``view_count(img) -> V``: how many distinct views the image has;
* ``draw(img, rng) -> (view, view_id)``: the same generator draws and the same output as
  ``transform(img, rng)``, with the id of the view drawn;
* ``render(img, view_id) -> view``: the view of a given id, no randomness;
* ``render_all(img) -> uint8 [V, H, W, 3]``: every view, in id order;
* ``view_params() -> dict``: the parameters that fix the set (what a teacher cache records).

:class:`RandomCropFlip` (the CIFAR-style weak view: ``(h + 2p - s + 1) * (w + 2p - s + 1) * 2``
views, 162 for a 32 x 32 image with ``padding=4``), :class:`ResizeRandomCropFlip` (the same
after a fixed resize) and the deterministic :class:`ToArray` / :class:`ResizeCenterCrop`
(one view) are finite; their ids follow :class:`CropFlipGrid`, the one place the encoding is
defined. :class:`RandomResizedCropFlip` and :class:`RandomRotateFlip` draw continuous
parameters: ``finite_views = False`` and ``not_finite`` says why (see :func:`finite_view_problem`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "CropFlipGrid",
    "finite_view_problem",
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


@dataclass(frozen=True)
class CropFlipGrid:
    """The view ids of a random crop with zero padding and an optional horizontal flip.

    The crop's top-left corner in the padded image is ``(dy, dx)`` with ``0 <= dy < rows``
    and ``0 <= dx < cols`` (``rows = h + 2 * padding - size + 1``, likewise ``cols``), and
    ``flipped`` is 0 or 1 (always 0 when ``flips == 1``). The id is::

        view_id = (dy * cols + dx) * flips + flipped

    so ``0 <= view_id < rows * cols * flips`` (162 for CIFAR: 9 * 9 * 2). ``dy`` and ``dx`` are
    exactly the values :class:`RandomCropFlip` draws from its generator.
    """

    rows: int
    cols: int
    flips: int

    @property
    def count(self) -> int:
        """Number of distinct views."""
        return self.rows * self.cols * self.flips

    def encode(self, dy: int, dx: int, flipped: bool | int) -> int:
        """The id of the view with crop corner ``(dy, dx)`` in the padded image and ``flipped``."""
        return (int(dy) * self.cols + int(dx)) * self.flips + int(bool(flipped))

    def decode(self, view_id: int) -> tuple[int, int, bool]:
        """``(dy, dx, flipped)`` of ``view_id``; ``ValueError`` outside ``0 .. count - 1``."""
        v = int(view_id)
        if not 0 <= v < self.count:
            raise ValueError(f"view id {view_id} out of range for {self.count} views")
        cell, flipped = divmod(v, self.flips)
        dy, dx = divmod(cell, self.cols)
        return dy, dx, bool(flipped)


def finite_view_problem(transform: Any) -> str | None:
    """``None`` if ``transform`` has a finite, numbered set of views (``finite_views``), else
    a sentence naming it and saying why not (what a teacher cache refuses with)."""
    if getattr(transform, "finite_views", False):
        return None
    name = type(transform).__name__
    reason = getattr(transform, "not_finite", "")
    return (f"{transform!r}: {reason}" if reason else
            f"{name} declares no finite set of views (a transform of your own can: finite_views = True with "
            "view_count, draw, render, render_all and view_params, see sldistill.data.transforms)")


class _OneView:
    """A deterministic transform: one view (id 0) per image."""

    finite_views = True

    def __call__(self, img: Any, rng: np.random.Generator | None = None) -> np.ndarray:
        raise NotImplementedError

    def view_count(self, img: Any = None) -> int:
        return 1

    def draw(self, img: Any, rng: np.random.Generator | None = None) -> tuple[np.ndarray, int]:
        return self(img), 0

    def render(self, img: Any, view_id: int = 0) -> np.ndarray:
        if int(view_id) != 0:
            raise ValueError(f"view id {view_id} out of range for 1 view")
        return self(img)

    def render_all(self, img: Any) -> np.ndarray:
        return self(img)[None]

    def view_params(self) -> dict[str, Any]:
        return {"transform": type(self).__name__, **{k: v for k, v in vars(self).items() if not k.startswith("_")}}


class ToArray(_OneView):
    """No augmentation: the image as a ``uint8`` ``H x W x 3`` array (CIFAR / Tiny-ImageNet test)."""

    def __call__(self, img: Image.Image | np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        return to_rgb_array(img)

    def __repr__(self) -> str:
        return "ToArray()"


def _rgb(img: Image.Image | np.ndarray) -> np.ndarray:
    if type(img) is np.ndarray and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3:
        return img  # the common case (CIFAR rows), without to_rgb_array's checks and copy
    return to_rgb_array(img)


class RandomCropFlip:
    """``RandomCrop(size, padding)`` (zero padding) then a horizontal flip with probability 1/2.

    Finite: an ``h x w`` image has ``CropFlipGrid`` ``(h + 2p - s + 1) x (w + 2p - s + 1) x 2``
    views (see the module docstring for ``draw`` / ``render`` / ``render_all``).
    """

    finite_views = True

    def __init__(self, size: int, padding: int = 4, flip: bool = True) -> None:
        self.size, self.padding, self.flip = int(size), int(padding), bool(flip)

    def grid(self, height: int, width: int) -> CropFlipGrid:
        """The views of a ``height x width`` image."""
        p, s = self.padding, self.size
        if height + 2 * p < s or width + 2 * p < s:
            raise ValueError(f"image {height}x{width} with padding {p} is smaller than the crop {s}")
        return CropFlipGrid(height + 2 * p - s + 1, width + 2 * p - s + 1, 2 if self.flip else 1)

    def _draw(self, grid: CropFlipGrid, rng: np.random.Generator) -> tuple[int, int, bool]:
        dy = int(rng.integers(0, grid.rows))
        dx = int(rng.integers(0, grid.cols))
        return dy, dx, bool(self.flip and rng.random() < 0.5)

    def _crop(self, a: np.ndarray, dy: int, dx: int, flipped: bool) -> np.ndarray:
        h, w = a.shape[:2]
        p, s = self.padding, self.size
        top, left = dy - p, dx - p
        out = np.zeros((s, s, 3), dtype=np.uint8)
        y0 = top if top > 0 else 0
        x0 = left if left > 0 else 0
        y1 = min(top + s, h)
        x1 = min(left + s, w)
        if flipped:  # window column j lands in column s - 1 - j
            out[y0 - top:y1 - top, s - (x1 - left):s - (x0 - left)] = a[y0:y1, x0:x1, :][:, ::-1]
        else:
            out[y0 - top:y1 - top, x0 - left:x1 - left] = a[y0:y1, x0:x1]
        return out

    def __call__(self, img: Image.Image | np.ndarray, rng: np.random.Generator) -> np.ndarray:
        a = _rgb(img)
        return self._crop(a, *self._draw(self.grid(a.shape[0], a.shape[1]), rng))

    def view_count(self, img: Image.Image | np.ndarray) -> int:
        """Number of distinct views of ``img`` (it depends on the image's size only)."""
        h, w = (img.size[1], img.size[0]) if isinstance(img, Image.Image) else np.shape(img)[:2]
        return self.grid(h, w).count

    def draw(self, img: Image.Image | np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """``(view, view id)``: the draws and the view of ``self(img, rng)``, and its id."""
        a = _rgb(img)
        grid = self.grid(a.shape[0], a.shape[1])
        dy, dx, flipped = self._draw(grid, rng)
        return self._crop(a, dy, dx, flipped), grid.encode(dy, dx, flipped)

    def render(self, img: Image.Image | np.ndarray, view_id: int) -> np.ndarray:
        """The view of id ``view_id`` (:class:`CropFlipGrid`)."""
        a = _rgb(img)
        return self._crop(a, *self.grid(a.shape[0], a.shape[1]).decode(view_id))

    def render_all(self, img: Image.Image | np.ndarray) -> np.ndarray:
        """Every view of ``img``, ``uint8 [V, size, size, 3]`` in id order (one pass over the
        padded image; equal to ``render`` of each id)."""
        a = _rgb(img)
        h, w = a.shape[:2]
        p, s = self.padding, self.size
        grid = self.grid(h, w)
        padded = np.zeros((h + 2 * p, w + 2 * p, 3), dtype=np.uint8)
        padded[p:p + h, p:p + w] = a
        windows = np.lib.stride_tricks.sliding_window_view(padded, (s, s), axis=(0, 1))  # [rows, cols, 3, s, s]
        crops = windows.transpose(0, 1, 3, 4, 2)  # [rows, cols, s, s, 3]
        out = np.empty((grid.rows, grid.cols, grid.flips, s, s, 3), dtype=np.uint8)
        out[:, :, 0] = crops
        if grid.flips == 2:
            out[:, :, 1] = crops[:, :, :, ::-1]
        return out.reshape(grid.count, s, s, 3)

    def view_params(self) -> dict[str, Any]:
        """What fixes the set of views (besides the image size)."""
        return {"transform": "RandomCropFlip", "size": self.size, "padding": self.padding, "flip": self.flip}

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

    finite_views = False
    not_finite = ("a random-resized crop draws a continuous scale and aspect ratio, so an image has no small finite "
                  "set of views")

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


class ResizeCenterCrop(_OneView):
    """``Resize(resize)`` (shorter side, bilinear) then ``CenterCrop(crop)`` (ImageNet test)."""

    def __init__(self, resize: int, crop: int) -> None:
        self.resize, self.crop = int(resize), int(crop)

    def __call__(self, img: Image.Image | np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        return to_rgb_array(_center_crop(_resize_short(_as_pil(img), self.resize), self.crop))

    def __repr__(self) -> str:
        return f"ResizeCenterCrop(resize={self.resize}, crop={self.crop})"


class ResizeRandomCropFlip:
    """``Resize(size)`` + ``CenterCrop(size)``, then ``RandomCrop(size, padding)`` + flip (small folders).

    Finite: every image is first brought to ``size x size``, so each has the same
    ``(2 * padding + 1) ** 2 * 2`` views, numbered as for :class:`RandomCropFlip`.
    """

    finite_views = True

    def __init__(self, size: int, padding: int) -> None:
        self.size = int(size)
        self.inner = RandomCropFlip(size, padding)

    def _fixed(self, img: Image.Image | np.ndarray) -> Image.Image:
        return _center_crop(_resize_short(_as_pil(img), self.size), self.size)

    def __call__(self, img: Image.Image | np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.inner(self._fixed(img), rng)

    def view_count(self, img: Any = None) -> int:
        """Number of distinct views (the same for every image)."""
        return self.inner.grid(self.size, self.size).count

    def draw(self, img: Image.Image | np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """``(view, view id)``: the draws and the view of ``self(img, rng)``, and its id."""
        return self.inner.draw(self._fixed(img), rng)

    def render(self, img: Image.Image | np.ndarray, view_id: int) -> np.ndarray:
        """The view of id ``view_id``."""
        return self.inner.render(self._fixed(img), view_id)

    def render_all(self, img: Image.Image | np.ndarray) -> np.ndarray:
        """Every view, ``uint8 [V, size, size, 3]`` in id order."""
        return self.inner.render_all(self._fixed(img))

    def view_params(self) -> dict[str, Any]:
        """What fixes the set of views."""
        return {**self.inner.view_params(), "transform": "ResizeRandomCropFlip", "resize": self.size}

    def __repr__(self) -> str:
        return f"ResizeRandomCropFlip(size={self.size}, padding={self.inner.padding})"


class RandomRotateFlip:
    """``RandomRotation(degrees)`` (nearest, black fill) then a horizontal flip (Tiny-ImageNet)."""

    finite_views = False
    not_finite = "a random rotation draws a continuous angle, so an image has no small finite set of views"

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
