"""Per-epoch metric logging (CSV, JSON lines, TensorBoard, W&B), top-k accuracy, evaluation.

Only rank 0 creates a :class:`MetricLogger` that writes; other ranks get a silent one.
Files in the run folder: ``metrics.csv`` (one row per epoch; the header grows if new
columns appear, by rewriting the file), ``metrics.jsonl`` (one JSON object per epoch; both
drop the rows of epochs a resumed run trains again, see :meth:`MetricLogger.drop_epochs_from`),
``tb/`` (TensorBoard events, when ``LOG.TENSORBOARD`` and tensorboard is installed) and
``log.txt`` (the printed lines).

Weights & Biases (``LOG.WANDB: true``; ``pip install sldistill[wandb]``) is logged as mdistiller
does: project ``EXPERIMENT.PROJECT``, run name ``EXPERIMENT.NAME`` or ``TAG``, tags the
comma-separated parts of ``TAG``, the resolved config, one history row per epoch (the learning
rate and every metric, against ``epoch``) and ``best_acc`` / ``last_acc`` in the run summary.
The W&B run id is kept in ``wandb_id.txt`` in the run folder; a resumed run continues that W&B
run. ``WANDB_MODE=offline`` works as usual (``wandb sync`` uploads later); the W&B files go
under ``$WANDB_DIR``, else the run folder.
"""
from __future__ import annotations

import csv
import json
import math
import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from sldistill.engine.distributed import all_reduce_sum

__all__ = ["MetricLogger", "WandbOptions", "WandbMissingError", "WandbInitError", "wandb_options", "require_wandb",
           "topk_correct", "evaluate"]

WANDB_ID_FILE = "wandb_id.txt"


class WandbMissingError(ImportError, ValueError):
    """``LOG.WANDB`` is on but the ``wandb`` package cannot be imported (a ``ValueError`` too, so
    the command line prints it as one line)."""


class WandbInitError(RuntimeError, ValueError):
    """``wandb.init`` failed (not logged in, no network in online mode, ...); a ``ValueError`` too,
    so the command line prints it as one line."""


def require_wandb() -> Any:
    """The imported ``wandb`` module, or :class:`WandbMissingError` naming the extra to install."""
    try:
        import wandb
    except ImportError as exc:
        raise WandbMissingError(
            f"LOG.WANDB is true but the 'wandb' package is not installed ({exc}); install it with "
            "`pip install 'sldistill[wandb]'`, or set LOG.WANDB false") from exc
    return wandb


@dataclass
class WandbOptions:
    """What a W&B run is opened with (see :func:`wandb_options`).

    Attributes:
        project: the W&B project (``EXPERIMENT.PROJECT``).
        name: the run's display name (``EXPERIMENT.NAME`` or ``TAG``).
        tags: the run's tags (the non-empty comma-separated parts of ``TAG``).
        config: the resolved configuration as a plain nested dict.
        resumed: True when the training run resumes: the W&B run of ``wandb_id.txt`` continues.
    """

    project: str
    name: str
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    resumed: bool = False


def wandb_options(cfg: Any, *, resumed: bool = False) -> WandbOptions | None:
    """The :class:`WandbOptions` of a config, or ``None`` when ``LOG.WANDB`` is false.

    Raises:
        WandbMissingError: ``LOG.WANDB`` is true and ``wandb`` is not installed (call this at
            the start of a run, so that the message comes before any data is loaded).
    """
    from sldistill._cfg import cfg_value

    if not bool(cfg_value(cfg, "LOG.WANDB")):
        return None
    require_wandb()
    tag = str(cfg_value(cfg, "EXPERIMENT.TAG") or "")
    name = str(cfg_value(cfg, "EXPERIMENT.NAME") or "") or tag
    config = cfg.to_dict() if hasattr(cfg, "to_dict") else json.loads(json.dumps(cfg, default=str))
    return WandbOptions(project=str(cfg_value(cfg, "EXPERIMENT.PROJECT") or "sldistill"), name=name,
                        tags=[t.strip() for t in tag.split(",") if t.strip()], config=config, resumed=resumed)


class MetricLogger:
    """Write per-epoch metrics to CSV/JSONL/TensorBoard and print lines (rank 0 only).

    Args:
        run_dir: the run folder (``None`` or ``enabled=False``: print nothing, write nothing).
        tensorboard: also write TensorBoard events under ``run_dir/tb``.
        enabled: False on ranks other than 0.
        stream: where :meth:`info` prints (stdout by default).
        wandb: also log to Weights & Biases (:func:`wandb_options` of the config); the package
            is imported on every rank, so a missing one stops every process at the start.

    Raises:
        WandbMissingError: ``wandb`` is requested and not installed.
        WandbInitError: ``wandb.init`` failed (not logged in, ...); the message says what to do.
    """

    def __init__(self, run_dir: str | Path | None, tensorboard: bool = True, enabled: bool = True,
                 stream: Any = None, wandb: WandbOptions | None = None) -> None:
        self.enabled = enabled
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.stream = stream
        self._tb = None
        self._wandb: Any = None
        self._columns: list[str] = []
        self._rows: list[dict] = []
        wandb_module = require_wandb() if wandb is not None else None
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
        if wandb is not None:
            self._wandb = self._start_wandb(wandb_module, wandb)

    @property
    def wandb_run(self) -> Any:
        """The W&B run (``None`` without W&B logging, or after :meth:`close`)."""
        return self._wandb

    def _start_wandb(self, module: Any, opts: WandbOptions) -> Any:
        assert self.run_dir is not None
        id_file = self.run_dir / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if opts.resumed and id_file.is_file() else ""
        new = not run_id
        kwargs: dict[str, Any] = dict(project=opts.project, name=opts.name, tags=list(opts.tags),
                                      config=opts.config, id=run_id or secrets.token_hex(4), resume="allow",
                                      reinit=True, allow_val_change=True)
        if not os.environ.get("WANDB_DIR"):
            kwargs["dir"] = str(self.run_dir)
        try:
            run = module.init(**kwargs)
        except Exception as exc:  # not logged in, no network in online mode, bad settings, ...
            raise WandbInitError(
                f"W&B: wandb.init failed ({type(exc).__name__}: {exc}); run `wandb login`, set WANDB_MODE=offline "
                "(upload later with `wandb sync`), or set LOG.WANDB false") from exc
        id_file.write_text(str(run.id) + "\n")
        run.define_metric("epoch")
        run.define_metric("*", step_metric="epoch")
        self.info(f"W&B: {'new' if new else 'resumed'} run {run.id} (project {opts.project}, name {opts.name})")
        if new and opts.resumed:  # a run resumed with W&B newly on: send the epochs logged before
            for row in self._rows:
                self._wandb_row(run, {k: _number(v) for k, v in row.items()})
        return run

    def _wandb_row(self, run: Any, row: Mapping[str, Any]) -> None:
        run.log({k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        accs = [(int(r["epoch"]), float(acc)) for r in self._rows
                if isinstance(acc := _number(r.get("test_acc", "")), (int, float))]
        if accs:
            best_epoch, best = max(accs, key=lambda ea: (ea[1], ea[0]))  # ties: the later epoch, as the trainer
            run.summary.update({"best_acc": best, "best_epoch": best_epoch, "last_acc": accs[-1][1],
                                "last_epoch": accs[-1][0]})

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

    def drop_epochs_from(self, epoch: int) -> None:
        """Forget the rows of ``epoch`` and later in ``metrics.csv`` and ``metrics.jsonl`` (a
        resumed run trains them again and logs them anew; called on resume with the first epoch
        it trains). Each file is rewritten, atomically, only when it holds such rows."""
        if not self.enabled or self.run_dir is None:
            return
        kept = [r for r in self._rows if _epoch_of(r) < epoch]
        if len(kept) != len(self._rows):
            self._rows = kept
            self._write_csv()
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return
        lines = path.read_text().splitlines()
        keep = []
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if not isinstance(row, dict) or _epoch_of(row) < epoch:  # an unreadable line is kept as it is
                keep.append(line)
        if len(keep) != len(lines):
            tmp = self.run_dir / ".metrics.jsonl.tmp"
            tmp.write_text("".join(line + "\n" for line in keep))
            tmp.replace(path)

    def _write_csv(self) -> None:
        assert self.run_dir is not None
        tmp = self.run_dir / ".metrics.csv.tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self._columns, extrasaction="ignore")
            writer.writeheader()
            for r in self._rows:
                writer.writerow(r)
        tmp.replace(self.run_dir / "metrics.csv")

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """Append one epoch's metrics to the CSV/JSONL files and TensorBoard (a CSV row of this
        epoch or later is replaced; a resume has dropped such rows from both files already)."""
        if not self.enabled or self.run_dir is None:
            return
        row = {"epoch": int(epoch), **{k: _plain(v) for k, v in metrics.items()}}
        self._rows = [r for r in self._rows if _epoch_of(r) < epoch]
        self._rows.append(row)
        new_cols = [k for k in row if k not in self._columns]
        self._columns.extend(new_cols)
        self._write_csv()
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            # strict JSON: a non-finite number (a diverged test loss) is written as null
            f.write(json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                for k, v in row.items()}, allow_nan=False) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if k != "epoch" and isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(f"epoch/{k}", v, epoch)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb_row(self._wandb, row)

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        """Set W&B run-summary values (the trainer's ``summary.json``: ``best_acc``, ``last_acc``, ...);
        ``None`` values are skipped. Without W&B, nothing."""
        if self.enabled and self._wandb is not None:
            self._wandb.summary.update({k: _plain(v) for k, v in summary.items() if v is not None})

    def close(self, exit_code: int | None = None) -> None:
        """Flush and close TensorBoard; finish the W&B run (with ``exit_code`` when given)."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            run, self._wandb = self._wandb, None
            run.finish(exit_code=exit_code)


def _epoch_of(row: Mapping[str, Any]) -> int:
    try:
        return int(row.get("epoch", 0) or 0)
    except (TypeError, ValueError):
        return 0


def _plain(v: Any) -> Any:
    if isinstance(v, Tensor):
        v = v.item()
    if isinstance(v, float):
        return round(v, 6)
    return v


def _number(v: Any) -> Any:
    """A CSV cell back as int / float where it is one (``""`` for empty), else unchanged."""
    if isinstance(v, str):
        if v == "":
            return ""
        for kind in (int, float):
            try:
                return kind(v)
            except ValueError:
                pass
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

    With 5 classes or fewer every label is among the top 5, so ``top5`` is NaN there (not a
    meaningless 100; written as ``null`` in ``metrics.jsonl``).

    Sums are accumulated on the device and all-reduced over processes (each rank evaluates
    its shard), then divided by the global sample count: one host synchronisation at the end.
    Batches are named records ``{"image": ..., "target": ...}`` (or ``(image, target)`` pairs).
    """
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, n
    num_classes = 0
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
        num_classes = logits.shape[1]
        loss = F.cross_entropy(logits, target, reduction="sum")
        correct = topk_correct(logits, target, (1, 5))
        sums[0] += loss.double()
        sums[1:3] += correct
        sums[3] += target.shape[0]
    all_reduce_sum(sums)
    loss_sum, c1, c5, n = sums.tolist()
    n = max(n, 1.0)
    top5 = 100.0 * c5 / n if num_classes > 5 else float("nan")
    return {"top1": 100.0 * c1 / n, "top5": top5, "loss": loss_sum / n}
