"""Per-epoch metric logging (CSV, JSON lines, TensorBoard), top-k accuracy, evaluation.

Only rank 0 creates a :class:`MetricLogger` that writes; other ranks get a silent one.
Files in the run folder: ``metrics.csv`` (one row per epoch; the header grows if new
columns appear, by rewriting the file), ``metrics.jsonl`` (one JSON object per epoch),
``tb/`` (TensorBoard events, when ``LOG.TENSORBOARD`` and tensorboard is installed) and
``log.txt`` (the printed lines).
"""
from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from sldistill.engine.distributed import all_reduce_sum

__all__ = ["MetricLogger", "topk_correct", "evaluate"]


class MetricLogger:
    """Write per-epoch metrics to CSV/JSONL/TensorBoard and print lines (rank 0 only).

    Args:
        run_dir: the run folder (``None`` or ``enabled=False``: print nothing, write nothing).
        tensorboard: also write TensorBoard events under ``run_dir/tb``.
        enabled: False on ranks other than 0.
        stream: where :meth:`info` prints (stdout by default).
    """

    def __init__(self, run_dir: str | Path | None, tensorboard: bool = True, enabled: bool = True,
                 stream: Any = None) -> None:
        self.enabled = enabled
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.stream = stream
        self._tb = None
        self._columns: list[str] = []
        self._rows: list[dict] = []
        if not enabled or self.run_dir is None:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        csv_path = self.run_dir / "metrics.csv"
        if csv_path.is_file():  # resumed run: keep the rows already there
            with open(csv_path, newline="") as f:
                reader = csv.DictReader(f)
                self._columns = list(reader.fieldnames or [])
                self._rows = list(reader)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / "tb"))
            except Exception as exc:  # tensorboard missing or broken
                self.info(f"note: TensorBoard logging is off ({type(exc).__name__}: {exc}); "
                          "install the 'tensorboard' package or set LOG.TENSORBOARD false")

    def info(self, msg: str) -> None:
        """Print a line (rank 0) and append it to ``log.txt``."""
        if not self.enabled:
            return
        print(msg, file=self.stream or sys.stdout, flush=True)
        if self.run_dir is not None:
            with open(self.run_dir / "log.txt", "a") as f:
                f.write(msg + "\n")

    def scalar(self, tag: str, value: float, step: int) -> None:
        """One TensorBoard scalar (e.g. per-iteration loss)."""
        if self.enabled and self._tb is not None:
            self._tb.add_scalar(tag, value, step)

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """Append one epoch's metrics to the CSV/JSONL files and TensorBoard."""
        if not self.enabled or self.run_dir is None:
            return
        row = {"epoch": int(epoch), **{k: _plain(v) for k, v in metrics.items()}}
        # drop rows of this epoch or later (a resumed run re-logs them)
        self._rows = [r for r in self._rows if int(r.get("epoch", 0)) < epoch]
        self._rows.append(row)
        new_cols = [k for k in row if k not in self._columns]
        self._columns.extend(new_cols)
        tmp = self.run_dir / ".metrics.csv.tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self._columns, extrasaction="ignore")
            writer.writeheader()
            for r in self._rows:
                writer.writerow(r)
        tmp.replace(self.run_dir / "metrics.csv")
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if k != "epoch" and isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(f"epoch/{k}", v, epoch)
            self._tb.flush()

    def close(self) -> None:
        """Flush and close TensorBoard."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _plain(v: Any) -> Any:
    if isinstance(v, Tensor):
        v = v.item()
    if isinstance(v, float):
        return round(v, 6)
    return v


def topk_correct(logits: Tensor, target: Tensor, ks: Iterable[int] = (1, 5)) -> Tensor:
    """Number of samples whose label is in the top-k predictions, for each k (a device tensor,
    no host synchronisation). k larger than the class count counts every sample."""
    ks = list(ks)
    maxk = min(max(ks), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices
    hit = pred.eq(target.view(-1, 1))
    return torch.stack([hit[:, : min(k, maxk)].any(dim=1).sum() for k in ks]).to(torch.float64)


@torch.no_grad()
def evaluate(model_fn: Callable[[Tensor], Tensor], loader: Iterable, device: torch.device,
             amp_dtype: torch.dtype | None = None, channels_last: bool = False,
             progress: Callable[[Iterable], Iterable] | None = None) -> dict[str, float]:
    """Top-1, top-5 (percent) and mean cross-entropy of ``model_fn`` over ``loader``.

    Sums are accumulated on the device and all-reduced over processes (each rank evaluates
    its shard), then divided by the global sample count: one host synchronisation at the end.
    Batches are named records ``{"image": ..., "target": ...}`` (or ``(image, target)`` pairs).
    """
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, n
    it = progress(loader) if progress is not None else loader
    for batch in it:
        image, target = (batch["image"], batch["target"]) if isinstance(batch, dict) else (batch[0], batch[1])
        image = image.to(device, non_blocking=True)
        if channels_last and image.dim() == 4:
            image = image.contiguous(memory_format=torch.channels_last)
        target = target.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model_fn(image)
        logits = logits.float()
        loss = F.cross_entropy(logits, target, reduction="sum")
        correct = topk_correct(logits, target, (1, 5))
        sums[0] += loss.double()
        sums[1:3] += correct
        sums[3] += target.shape[0]
    all_reduce_sum(sums)
    loss_sum, c1, c5, n = sums.tolist()
    n = max(n, 1.0)
    return {"top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "loss": loss_sum / n}
