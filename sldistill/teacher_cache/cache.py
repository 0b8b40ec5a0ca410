"""Reading a finished cache: :func:`open_cache`, :class:`TeacherCache`, :func:`cache_info`."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .fileformat import DATA_OFFSET, CacheFileError, data_bytes, read_header
from .header import DEPENDS_FIELDS, expected_header, first_mismatch

__all__ = ["TeacherCache", "open_cache", "cache_info", "data_sha256"]


def data_sha256(path: str | os.PathLike, shape: list[int] | tuple[int, int, int]) -> str:
    """SHA-256 of the logits region of the cache file at ``path``."""
    h = hashlib.sha256()
    left = data_bytes(shape)
    with open(path, "rb") as f:
        f.seek(DATA_OFFSET)
        while left > 0:
            chunk = f.read(min(left, 1 << 24))
            if not chunk:
                raise CacheFileError(f"{path}: the file ends {left} bytes before the end of its logits")
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def _as_index(x: Any) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    return a.astype(np.int64, copy=False).reshape(-1)


class TeacherCache:
    """A finished teacher-logit cache, mapped read-only (every DDP rank maps the same file;
    the operating system shares the pages). Open with :func:`open_cache`.

    Attributes:
        path: the file.
        header: its header (a dict; see ``docs/teacher_cache.md``).
        logits: the ``numpy.memmap`` ``float32 [num_images, num_views, num_classes]``.
    """

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = Path(path)
        self.header = header
        n, v, c = (int(d) for d in header["shape"])
        self.num_images, self.num_views, self.num_classes = n, v, c
        self.logits = np.memmap(self.path, dtype="<f4", mode="r", offset=DATA_OFFSET, shape=(n, v, c))

    @property
    def precision(self) -> str:
        """The ``SOLVER.AMP`` the teacher ran under when the cache was built."""
        return str(self.header["depends"]["precision"])

    @property
    def live_dtype(self) -> torch.dtype:
        """The dtype of the live teacher's logits under that precision (what ``lookup(...,
        dtype=cache.live_dtype)`` returns; the values are exactly representable in it)."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision, torch.float32)

    def lookup(self, index: Tensor | np.ndarray, view_id: Tensor | np.ndarray, *,
               dtype: torch.dtype | None = None) -> Tensor:
        """The teacher's logits of weak view ``view_id[b]`` of training image ``index[b]``:
        ``float32 [B, num_classes]`` (``dtype`` to convert), on the CPU. Both arguments are
        the batch's ``"index"`` and ``"view_id"`` (``LongTensor[B]``).

        Raises:
            IndexError: an index or view id outside the cache (naming the first one).
        """
        idx, vid = _as_index(index), _as_index(view_id)
        if idx.shape != vid.shape:
            raise ValueError(f"lookup: {idx.size} indices but {vid.size} view ids")
        if idx.size:
            bad_i = (idx < 0) | (idx >= self.num_images)
            bad_v = (vid < 0) | (vid >= self.num_views)
            if bad_i.any() or bad_v.any():
                b = int(np.flatnonzero(bad_i | bad_v)[0])
                raise IndexError(f"teacher cache {self.path}: (index {idx[b]}, view id {vid[b]}) is outside its "
                                 f"{self.num_images} images x {self.num_views} views")
        out = torch.from_numpy(self.logits[idx, vid])  # fancy indexing copies the rows out of the map
        return out if dtype is None else out.to(dtype)

    def check(self, cfg: Any, *, datasets: Any = None, strict_versions: bool = False) -> None:
        """Refuse (``ValueError``) if this cache was not built for ``cfg``'s teacher, data, weak
        view and precision, naming the first field that differs and both values.

        ``datasets``: the run's :class:`sldistill.data.Datasets` (saves reading the images
        again). ``strict_versions``: also require the same torch and sldistill versions (by
        default they are recorded, not compared: another version or device changes logits by
        float rounding only, as it would change the live teacher's).
        """
        expected = expected_header(cfg, datasets=datasets)
        mismatch = first_mismatch(expected, self.header, strict_versions=strict_versions)
        if mismatch is not None:
            name, found, want = mismatch
            what = DEPENDS_FIELDS.get(name, name)
            raise ValueError(f"teacher cache {self.path} does not match this run: {name} ({what}) is {found!r} in "
                             f"the cache but {want!r} for this config. Build a cache for this config (sldistill "
                             "teacher-cache build --cfg FILE ...) or leave DISTILLER.TEACHER_CACHE empty")

    def verify(self) -> None:
        """Re-hash the logits and compare with the SHA-256 recorded when the build finished
        (``ValueError`` if they differ: the file was damaged after it was written)."""
        want = self.header.get("data_sha256")
        got = data_sha256(self.path, self.header["shape"])
        if want != got:
            raise CacheFileError(f"{self.path}: the logits do not match their recorded SHA-256 ({got} != {want}): "
                                 "the file is damaged; remove it and build the cache again")

    def __reduce__(self) -> tuple:
        return (open_cache, (str(self.path),))

    def __repr__(self) -> str:
        return (f"TeacherCache({str(self.path)!r}, {self.num_images} images x {self.num_views} views x "
                f"{self.num_classes} classes, teacher {self.header['depends']['teacher']}, {self.precision})")


def open_cache(path: str | os.PathLike) -> TeacherCache:
    """Open a finished cache read-only.

    Raises:
        FileNotFoundError: no file at ``path``.
        CacheFileError (a ``ValueError``): not a teacher cache, damaged, shorter than its
            header says, or not finished (a build that stopped: running the same ``build``
            again finishes it).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"teacher cache {path}: no such file (build it with `sldistill teacher-cache build "
                                "--cfg FILE`)")
    header, _ = read_header(path)
    progress = header.get("progress", {})
    if not progress.get("complete"):
        n = header.get("shape", ["?"])[0]
        raise CacheFileError(f"teacher cache {path} is incomplete ({progress.get('rows_done', 0)} of {n} images "
                             "done): its build stopped before the end. Run the same `sldistill teacher-cache build` "
                             "again to finish it; an incomplete cache is never used")
    need = DATA_OFFSET + data_bytes(header["shape"])
    size = path.stat().st_size
    if size < need:
        raise CacheFileError(f"teacher cache {path} is truncated: {size} bytes, its header needs {need}")
    return TeacherCache(path, header)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def cache_info(path: str | os.PathLike, *, verify: bool = False) -> str:
    """A readable summary of the cache file at ``path`` (finished or not): its state, shape,
    size and every header field (``sldistill teacher-cache info PATH``). With ``verify``, the
    logits are re-hashed against the recorded SHA-256."""
    path = Path(path).expanduser()
    header, slot = read_header(path)
    n, v, c = header["shape"]
    progress = header.get("progress", {})
    state = "complete" if progress.get("complete") else \
        f"INCOMPLETE: {progress.get('rows_done', 0)} of {n} images done (run the same build again to finish it)"
    lines = [f"teacher cache {path}",
             f"  state:      {state}",
             f"  logits:     {n} images x {v} views x {c} classes, float32 ({_size(data_bytes(header['shape']))})"]
    for name, value in header.get("depends", {}).items():
        lines.append(f"  {name + ':':<21} {value}")
    lines.append("  versions:   " + ", ".join(f"{k} {val}" for k, val in header.get("versions", {}).items()))
    for name, value in {**header.get("info", {}), **header.get("build", {})}.items():
        if value not in ("", None):
            lines.append(f"  {name + ':':<21} {value}")
    lines.append(f"  data sha256: {header.get('data_sha256') or '(recorded when the build finishes)'}")
    if verify and progress.get("complete"):
        TeacherCache(path, header).verify()
        lines.append("  verified:   the logits match their SHA-256")
    lines.append(f"  header slot: {slot}, format {header.get('format')}")
    return "\n".join(lines)
