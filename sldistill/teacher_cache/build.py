"""Building a cache: every weak view of every training image through the teacher, resumably."""
from __future__ import annotations

import datetime as _dt
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from sldistill._cfg import cfg_get

from .cache import data_sha256
from .fileformat import DATA_OFFSET, CacheFileError, create_file, data_bytes, read_header, write_header
from .header import default_cache_path as _default_path
from .header import expected_header, first_mismatch

__all__ = ["build_cache"]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


class _Progress:
    """A tqdm bar on terminals, else a line every 10% (or 60 s); nothing when off."""

    def __init__(self, enabled: bool, total: int, done: int, unit_views: int) -> None:
        self.enabled, self.total, self.unit = enabled, total, unit_views
        self.bar = None
        self.t0, self.start, self.last_line, self.next_pct = time.monotonic(), done, time.monotonic(), 0.0
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total * unit_views, initial=done * unit_views, unit="view", unit_scale=True,
                            desc="teacher cache", dynamic_ncols=True)
        self.next_pct = 100.0 * done / max(total, 1) // 10 * 10 + 10

    def update(self, done: int, step: int) -> None:
        if self.bar is not None:
            self.bar.update(step * self.unit)
            return
        if not self.enabled:
            return
        pct = 100.0 * done / self.total
        now = time.monotonic()
        if pct >= self.next_pct or now - self.last_line >= 60 or done == self.total:
            rate = (done - self.start) * self.unit / max(now - self.t0, 1e-9)
            left = (self.total - done) * self.unit / max(rate, 1e-9)
            print(f"teacher cache: {done}/{self.total} images ({pct:.1f}%), {rate:.0f} views/s, "
                  f"about {left / 60:.1f} min left", file=sys.stderr, flush=True)
            self.last_line = now
            while self.next_pct <= pct:
                self.next_pct += 10

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _lock(fd: int, path: Path) -> None:
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise RuntimeError(f"another process is building the teacher cache {path}; wait for it to finish") from None


def _start(path: Path, header: dict[str, Any], batch_images: int, batch_views: int
           ) -> tuple[dict[str, Any], int] | None:
    """The header to continue from and its slot, creating the file if needed; ``None`` when
    ``path`` already holds the finished cache."""
    if path.exists():
        try:
            found, slot = read_header(path)
        except CacheFileError as e:
            raise CacheFileError(f"{e}; refusing to overwrite it: remove it or choose another path") from None
        mismatch = first_mismatch(header, found)
        if mismatch is not None:
            name, got, want = mismatch
            raise ValueError(f"{path} holds a teacher cache of another configuration ({name} is {got!r} there, "
                             f"{want!r} for this config); remove it or choose another path (--out)")
        if found["progress"].get("complete"):
            return None
        return found, slot
    need = DATA_OFFSET + data_bytes(header["shape"])
    path.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(path.parent).free
    if free < need:
        raise OSError(f"not enough disk space for the teacher cache {path}: it needs {need / 2**30:.2f} GiB, "
                      f"{free / 2**30:.2f} GiB are free")
    header["progress"]["batch_images"] = int(batch_images)
    header["progress"]["batch_views"] = int(batch_views)
    header["build"] = {"started": _now(), "finished": None, "seconds": 0.0}
    create_file(path, header)
    return header, 1  # both slots hold it; the first update goes to slot 0


def build_cache(cfg: Any, path: str | os.PathLike | None = None, *, batch_size: int | None = None,
                progress: bool = True, flush_seconds: float = 30.0,
                on_flush: Callable[[int, int], None] | None = None, datasets: Any = None,
                teacher: torch.nn.Module | None = None) -> Path:
    """Compute the teacher's logits of every weak view of every training image into ``path``.

    The teacher (``build_teacher(cfg)``, eval mode, no grad) runs on ``EXPERIMENT.DEVICE``
    under ``SOLVER.AMP`` autocast and in channels_last when ``SOLVER.CHANNELS_LAST``, as in
    training. Each step takes whole images (``batch_size // V``, at least one: all their
    views) and runs the teacher on them in equal forwards of at most ``batch_size`` views
    (162 views at the CPU default of 64: three forwards of 54). The views are rendered by
    the dataset's own weak transform (``render_all``) and normalised as the loaders do.
    Logits are stored as float32.

    Resumable: every ``flush_seconds`` (and at the end) the written logits are synced and
    the header's ``rows_done`` is advanced atomically; a second call with the same config
    continues from there (with the batch size recorded at the start, so the file ends up
    identical to an uninterrupted build's). The header is marked complete, with the logits'
    SHA-256, only after the last row. A finished cache at ``path`` is returned as it is; a
    file of another configuration is refused.

    Args:
        cfg: the run's configuration.
        path: the file (default :func:`default_cache_path`).
        batch_size: views per teacher forward at most (default 64 on the CPU, where larger
            batches run slower per image, 4096 on CUDA).
        progress: a tqdm bar on terminals, progress lines otherwise.
        flush_seconds: how often progress is made durable (0: after every forward).
        on_flush: called as ``on_flush(rows_done, num_images)`` after each durable step.
        datasets, teacher: the run's datasets / teacher when already built.

    Returns:
        the path of the finished cache.

    Raises:
        NotCacheableError: the weak view is not finite (naming the transform).
        ValueError: ``path`` holds a cache of another configuration (naming the first field).
    """
    from sldistill.data import build_datasets, normalize_batch
    from sldistill.engine.control import amp_dtype
    from sldistill.engine.distributed import resolve_device
    from sldistill.models import build_teacher

    if datasets is None:
        datasets = build_datasets(cfg, num_views=1)
    header = expected_header(cfg, datasets=datasets)
    path = Path(path).expanduser() if path is not None else _default_path(cfg, header)
    n, v, c = header["shape"]
    device = resolve_device(str(cfg_get(cfg, "EXPERIMENT.DEVICE", "auto")))
    if batch_size is None:
        batch_size = 4096 if device.type == "cuda" else 64
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    started = _start(path, header, max(1, int(batch_size) // v), int(batch_size))
    if started is None:
        if progress:
            print(f"teacher cache {path} is already complete", file=sys.stderr, flush=True)
        return path
    header, slot = started
    rows, per_batch = int(header["progress"]["rows_done"]), int(header["progress"]["batch_images"])
    per_forward = int(header["progress"].get("batch_views") or batch_size)  # a resumed build keeps its own
    train = getattr(datasets.train, "base", datasets.train)
    weak = datasets.weak_transform or train.views[0]
    amp = amp_dtype(str(cfg_get(cfg, "SOLVER.AMP", "none")), device)
    mf = torch.channels_last if bool(cfg_get(cfg, "SOLVER.CHANNELS_LAST", True)) else torch.contiguous_format
    if teacher is None:
        teacher = build_teacher(cfg, int(datasets.num_classes))
    teacher = teacher.to(device).eval()
    if mf is torch.channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
    header["info"]["device"] = str(device)
    bar = _Progress(progress, n, rows, v)
    t_start, t_flush = time.monotonic(), time.monotonic()
    seconds0 = float(header["build"].get("seconds") or 0.0)
    fd = os.open(path, os.O_RDWR)
    try:
        _lock(fd, path)
        while rows < n:
            stop = min(rows + per_batch, n)
            views = [weak.render_all(train.image(i)) for i in range(rows, stop)]
            for i, a in zip(range(rows, stop), views):
                if a.shape[0] != v:
                    raise ValueError(f"training image {i} has {a.shape[0]} weak views, the cache {v} (images of "
                                     "different sizes): this dataset cannot be cached")
            x = normalize_batch(torch.from_numpy(np.concatenate(views)).permute(0, 3, 1, 2), datasets.mean,
                                datasets.std)
            x = x.to(device).contiguous(memory_format=mf)
            with torch.no_grad(), torch.autocast(device_type=device.type, dtype=amp or torch.bfloat16,
                                                 enabled=amp is not None):
                parts = torch.tensor_split(x, -(-x.shape[0] // per_forward))  # equal forwards of <= per_forward
                logits = torch.cat([teacher(part.contiguous(memory_format=mf))[0] for part in parts])
            header["info"]["teacher_output_dtype"] = str(logits.dtype).replace("torch.", "")
            out = np.ascontiguousarray(logits.float().cpu().numpy(), dtype="<f4")
            if out.shape != (len(views) * v, c):
                raise ValueError(f"the teacher gives logits of shape {tuple(out.shape)} for {len(views) * v} views; "
                                 f"expected {c} classes")
            os.pwrite(fd, out.tobytes(), DATA_OFFSET + rows * v * c * 4)
            bar.update(stop, stop - rows)
            rows = stop
            if rows == n or time.monotonic() - t_flush >= flush_seconds:
                os.fsync(fd)
                header["progress"]["rows_done"] = rows
                header["build"]["seconds"] = round(seconds0 + time.monotonic() - t_start, 3)
                slot = 1 - slot
                write_header(fd, header, slot)
                t_flush = time.monotonic()
                if on_flush is not None:
                    on_flush(rows, n)
        header["data_sha256"] = data_sha256(path, header["shape"])
        header["progress"]["complete"] = True
        header["build"]["finished"] = _now()
        secs = seconds0 + time.monotonic() - t_start
        header["build"]["seconds"] = round(secs, 3)
        header["build"]["views_per_second"] = round(n * v / max(float(header["build"]["seconds"]), 1e-9), 1)
        for s in (1 - slot, slot):  # both slots: the finished file does not depend on the build's history
            write_header(fd, header, s)
    finally:
        bar.close()
        os.close(fd)
    if progress:
        print(f"teacher cache {path}: {n} images x {v} views done", file=sys.stderr, flush=True)
    return path
