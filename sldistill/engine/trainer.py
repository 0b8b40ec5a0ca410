"""The trainer: one loop for one-view and two-view distillers, DOT, AMP, DDP, resume.

:class:`Trainer` takes a built distiller and loaders and runs ``SOLVER.EPOCHS`` epochs:
training (terms summed and stepped; with ``SOLVER.TYPE: DOT`` the task and distillation terms
are stepped apart), an evaluation after every epoch (top-1, top-5, loss; gathered over
processes), metrics to CSV/JSONL/TensorBoard, and checkpoints (``latest.pth`` every epoch,
``best.pth``, ``epoch_N.pth`` every ``LOG.SAVE_CHECKPOINT_FREQ`` epochs; see
:mod:`sldistill.engine.state`). What it trains on comes from the distiller: its
``num_views`` and the extra batch items it ``needs`` (batches are named records).

Under DDP only the trainable modules are synchronised: the teacher's parameters and buffers
and a distiller's per-sample buffers (``gathered_buffers``, e.g. CRD's memory banks, which
the distiller gathers itself) are left out of DDP. Before every evaluation and checkpoint
the trainable modules' buffers (BatchNorm statistics) are copied from rank 0, so every rank
evaluates exactly the weights that are saved, and the logged top-1 is what the checkpoint gives.

Inside a training step nothing synchronises with the host: losses, accuracy counts and a
non-finite-loss record are accumulated on the device and read every ``log_interval``
iterations and at the end of the epoch, where all ranks agree on the first non-finite term
and stop together. SIGINT/SIGTERM finish the current iteration, write ``latest.pth`` marked
``"interrupted"`` and return; resuming replays the epoch's data order up to that point.
"""
from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.distributed as tdist
from torch import Tensor, nn

from sldistill.distillers.base import Distiller
from sldistill.engine.checkpoint import BEST, LATEST, atomic_save, capture_rng_state, epoch_name, restore_rng_state
from sldistill.engine.control import (
    STOP,
    EpochMeter,
    NonFiniteLossError,
    StopFlag,
    TrainResult,
    amp_dtype,
    connector_state,
    install_signal_handlers,
    short_name,
    teacher_warnings,
)
from sldistill.engine.distributed import (
    DistInfo,
    all_reduce_grads,
    all_reduce_sum,
    broadcast_buffers,
    convert_sync_batchnorm,
    ddp_ignored_names,
)
from sldistill.engine.metrics import MetricLogger, evaluate, topk_correct
from sldistill.engine.state import build_state, load_resume
from sldistill.optim import DOT, build_optimizer, build_scheduler, split_terms

__all__ = ["Trainer", "TrainResult", "NonFiniteLossError", "StopFlag", "STOP", "install_signal_handlers",
           "amp_dtype", "connector_state"]


class Trainer:
    """Train a distiller as the config says.

    Args:
        cfg: the experiment config (``SOLVER``, ``LOG``, ``EXPERIMENT``).
        distiller: a built :class:`~sldistill.distillers.Distiller` (on any device).
        train_loader, val_loader: the loaders (batches are named records, see sldistill.data).
        run_dir: the run folder (written by rank 0 only).
        dist_info: this process's place in the process group.
        train_sampler: the sampler whose ``set_epoch(epoch)`` is called before every epoch
            (default ``train_loader.sampler`` when it has ``set_epoch``).
        resume: continue from ``run_dir/latest.pth``.
        log_interval: iterations between host reads of the running sums (progress, non-finite
            check, stop-signal agreement) and, off a terminal, between progress lines.
        stop_after_epoch: return after this epoch even if ``SOLVER.EPOCHS`` is larger.
        stop_flag: the flag SIGINT/SIGTERM set.
        logger: a :class:`MetricLogger` (built from ``run_dir`` when omitted).
        on_iteration: test hook called as ``f(epoch, iteration)`` after each step.
        num_classes: when given, labels outside ``[0, num_classes)`` are refused on the host
            before they reach the device (on CUDA they would be a device-side assert).
    """

    def __init__(self, cfg: Any, distiller: Distiller, train_loader: Iterable, val_loader: Iterable,
                 run_dir: str | Path, dist_info: DistInfo | None = None, *, train_sampler: Any = None,
                 resume: bool = False, log_interval: int = 20, stop_after_epoch: int | None = None,
                 stop_flag: StopFlag = STOP, logger: MetricLogger | None = None,
                 on_iteration: Callable[[int, int], None] | None = None, num_classes: int | None = None) -> None:
        self.cfg = cfg
        self.dist = dist_info or DistInfo()
        self.device = self.dist.device
        self.run_dir = Path(run_dir)
        self.train_loader, self.val_loader = train_loader, val_loader
        if train_sampler is None and hasattr(getattr(train_loader, "sampler", None), "set_epoch"):
            train_sampler = train_loader.sampler  # type: ignore[attr-defined]
        self.train_sampler = train_sampler
        self.log_interval = max(1, int(log_interval))
        self.stop_after_epoch = stop_after_epoch
        self.stop_flag = stop_flag
        self.on_iteration = on_iteration
        self.num_classes = num_classes
        self.use_dot = str(cfg.SOLVER.TYPE) == "DOT"
        self.epochs = int(cfg.SOLVER.EPOCHS)
        self.amp_dtype = amp_dtype(cfg.SOLVER.AMP, self.device)
        self.channels_last = bool(cfg.SOLVER.CHANNELS_LAST)
        self.progress = bool(cfg.LOG.PROGRESS) and self.dist.is_main and sys.stderr.isatty()
        self.logger = logger or MetricLogger(self.run_dir, tensorboard=bool(cfg.LOG.TENSORBOARD),
                                             enabled=self.dist.is_main)
        if self.use_dot and self.amp_dtype == torch.float16:
            raise ValueError("SOLVER.AMP 'fp16' is not supported with SOLVER.TYPE DOT (two backward passes and a "
                             "grad scaler); use 'bf16' or 'none'")
        self.distiller = distiller.to(self.device)
        if self.channels_last:
            self.distiller = self.distiller.to(memory_format=torch.channels_last)
        if bool(cfg.SOLVER.SYNC_BN):
            if self.device.type != "cuda":
                raise ValueError("SOLVER.SYNC_BN needs CUDA: PyTorch's SyncBatchNorm runs only on CUDA devices "
                                 f"(this run is on {self.device}); set SOLVER.SYNC_BN false")
            if self.dist.distributed:
                convert_sync_batchnorm(self.distiller)
        self.num_views = int(self.distiller.num_views)
        self.needs = tuple(self.distiller.needs)
        self.model: nn.Module = self.distiller
        if self.dist.distributed:
            nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                self.distiller, ddp_ignored_names(self.distiller))
            self.model = nn.parallel.DistributedDataParallel(
                self.distiller, device_ids=[self.device] if self.device.type == "cuda" else None,
                find_unused_parameters=bool(getattr(self.distiller, "ddp_find_unused_parameters", False)))
        ignored = set(ddp_ignored_names(self.distiller))
        self.synced_buffers = [b for n, b in self.distiller.named_buffers() if n not in ignored]
        self.optimizer = build_optimizer(cfg, self.distiller.learnable_parameters())
        self.steps_per_epoch = len(train_loader)  # type: ignore[arg-type]
        self.scheduler = build_scheduler(cfg, self.optimizer, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.start_epoch, self.skip_iters = 1, 0
        self.best_acc, self.best_epoch = -1.0, 0
        self.teacher_acc: float | None = None
        self._epoch_rng: dict | None = None
        self._resume_rng: dict | None = None
        self._resume_meter: dict | None = None
        if resume:
            load_resume(self)

    # ------------------------------------------------------------------ helpers
    def _save(self, state: dict, name: str) -> None:
        if self.dist.is_main:
            atomic_save(state, self.run_dir / name)

    def _epoch_start_lr(self, epoch: int) -> float:
        """The rate of the epoch's first step (logged as the epoch's ``lr``; the schedule is per
        iteration, so after a mid-epoch resume the current rate is another one)."""
        sched = self.scheduler
        return sched.base_lrs[0] * sched.factor((epoch - 1) * self.steps_per_epoch)

    def sync_buffers(self) -> None:
        """Rank 0's buffers of the trainable modules on every rank (before eval and saving)."""
        broadcast_buffers(self.synced_buffers)

    def _unpack(self, batch: Mapping[str, Any]) -> tuple[list[Tensor], Tensor, dict[str, Any]]:
        """A named-record batch (``views``, ``target`` and extras by name) moved to the device."""
        views = list(batch["views"])
        if len(views) != self.num_views:
            raise ValueError(f"DISTILLER.TYPE {self.cfg.DISTILLER.TYPE!r} trains on {self.num_views} view(s) but "
                             f"the loader gives {len(views)}; build the loaders with the distiller's num_views")
        target = batch["target"]
        if self.num_classes is not None and target.device.type == "cpu" and target.numel() and \
                (int(target.min()) < 0 or int(target.max()) >= self.num_classes):
            raise ValueError(f"a training label is outside [0, {self.num_classes}) (got {int(target.min())}.."
                             f"{int(target.max())}); check the dataset's labels and the class count")
        mf = torch.channels_last if self.channels_last else torch.contiguous_format
        views = [v.to(self.device, non_blocking=True).contiguous(memory_format=mf) if v.dim() == 4
                 else v.to(self.device, non_blocking=True) for v in views]
        extras: dict[str, Any] = {}
        for name in self.needs:
            if name not in batch:
                raise ValueError(f"DISTILLER.TYPE {self.cfg.DISTILLER.TYPE!r} needs batch item {name!r}, which the "
                                 f"loader does not give (it gives {', '.join(sorted(batch))}); build the loaders "
                                 "with the distiller's needs")
            extras[name] = batch[name].to(self.device, non_blocking=True)
        if self.distiller.teacher_cache is not None:
            if "view_id" not in batch:
                raise ValueError("DISTILLER.TEACHER_CACHE is set but the loader gives no weak-view ids: the weak "
                                 "view of this dataset is not one of a finite set")
            extras["cache_keys"] = (batch["index"], batch["view_id"])  # stays on the host: the cache is there
        return views, target.to(self.device, non_blocking=True), extras

    def _autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def _train_step(self, views: list[Tensor], target: Tensor, epoch: int, extras: dict[str, Any]
                    ) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """One optimisation step; returns (logits, terms, total) without host synchronisation."""
        if self.use_dot:
            # DOT steps twice outside DDP's reducer; copy the buffers as DDP's forward would
            self.sync_buffers()
            ctx = self.model.no_sync() if isinstance(self.model, nn.parallel.DistributedDataParallel) \
                else contextlib.nullcontext()
            with ctx:
                with self._autocast():
                    logits, terms = self.model(views, target, epoch, **extras)
                task, kd = split_terms(terms)
                assert isinstance(self.optimizer, DOT)
                self.optimizer.step_terms(task, kd, grad_sync=all_reduce_grads if self.dist.distributed else None)
            total = task.detach() + kd.detach()
        else:
            with self._autocast():
                logits, terms = self.model(views, target, epoch, **extras)
            total = torch.stack([t.float() for t in terms.values()]).sum()
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler.is_enabled():
                self.scaler.scale(total).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                total.backward()
                self.optimizer.step()
        self.scheduler.step()
        return logits, terms, total

    def _agree_stop(self) -> bool:
        if not self.dist.distributed:
            return bool(self.stop_flag)
        t = torch.tensor([1.0 if self.stop_flag else 0.0], device=self.device)
        all_reduce_sum(t)
        return bool(t.item() > 0)

    def _reduce_min(self, t: Tensor) -> Tensor:
        if self.dist.distributed:
            tdist.all_reduce(t, op=tdist.ReduceOp.MIN)
        return t

    # ------------------------------------------------------------------ epochs
    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """Train one epoch; returns averaged terms, loss, top-1, images/s, ``stopped_at`` (the
        iteration count when a stop signal ended the epoch early, else ``None``) and ``meter``
        (then the epoch's running sums, for the checkpoint)."""
        self.model.train()
        if self.train_sampler is not None and hasattr(self.train_sampler, "set_epoch"):
            self.train_sampler.set_epoch(epoch)
        skip = self.skip_iters
        # Our loaders' data are keyed by (seed, epoch, sample), so replaying needs only the
        # global generators' state at the epoch start (for loaders that draw from them).
        if skip and self._epoch_rng is not None:
            restore_rng_state(self._epoch_rng.get("global"))
        epoch_rng = {"global": capture_rng_state()}
        loader_iter = iter(self.train_loader)
        meter = EpochMeter(self.device)
        if skip:
            for _ in range(skip):  # replay the data order up to the interrupt point
                next(loader_iter)
            restore_rng_state(self._resume_rng)
            if self._resume_meter is not None:  # the sums of the iterations before the interrupt
                meter.load_state_dict(self._resume_meter)
            self._resume_rng, self.skip_iters, self._epoch_rng, self._resume_meter = None, 0, None, None
        pbar = None
        if self.progress:
            from tqdm import tqdm

            pbar = tqdm(total=self.steps_per_epoch, initial=skip, desc=f"epoch {epoch}/{self.epochs}",
                        dynamic_ncols=True, leave=False, file=sys.stderr)
        t0 = time.perf_counter()
        images_seen, iteration, stopped_at = 0, skip, None
        while True:
            try:
                batch = next(loader_iter)
            except StopIteration:
                break
            except Exception as exc:  # an unreadable file met mid-epoch: keep the progress, then stop
                if not self.dist.distributed:  # (under DDP the peers wait in a collective; the epoch's state stays)
                    self._save(build_state(self, epoch - 1, interrupted_at=iteration, epoch_rng=epoch_rng,
                                           meter=meter.state_dict()), LATEST)
                self.logger.info(f"data error at epoch {epoch}, iteration {iteration + 1}: {exc}; "
                                 f"{self.run_dir / LATEST} holds the progress (fix the file, then --resume)")
                raise
            iteration += 1
            views, target, extras = self._unpack(batch)
            logits, terms, total = self._train_step(views, target, epoch, extras)
            meter.add(iteration, terms, total, topk_correct(logits.detach(), target, (1,))[0], target.shape[0])
            images_seen += target.shape[0] * len(views)
            if self.on_iteration is not None:
                self.on_iteration(epoch, iteration)
            last = iteration == self.steps_per_epoch
            if iteration % self.log_interval == 0 or last:
                meter.check_finite(epoch, self._reduce_min if self.dist.distributed else None)
                self._report_progress(pbar, epoch, iteration, skip, meter, images_seen, t0, last)
            if pbar is not None:
                pbar.update(1)
            if (not self.dist.distributed or iteration % self.log_interval == 0 or last) and self._agree_stop():
                stopped_at = iteration
                break
        if pbar is not None:
            pbar.close()
        meter.check_finite(epoch, self._reduce_min if self.dist.distributed else None)
        elapsed = time.perf_counter() - t0
        # an interrupted epoch's checkpoint keeps this rank's sums (before they are summed over ranks)
        out: dict[str, Any] = {"meter": meter.state_dict() if stopped_at is not None else None}
        all_reduce_sum(meter.stats)
        out.update({f"train_{k}": v for k, v in zip(meter.names, meter.averages())})
        tot, c1, n = meter.stats.tolist()
        out["train_loss"] = tot / max(1, meter.steps * self.dist.world_size)
        out["train_acc"] = 100.0 * c1 / max(1.0, n)
        out["images_per_s"] = images_seen * self.dist.world_size / max(1e-9, elapsed)
        out["epoch_time_s"] = elapsed
        out["stopped_at"], out["epoch_rng"] = stopped_at, epoch_rng
        return out

    def _report_progress(self, pbar: Any, epoch: int, iteration: int, skip: int, meter: EpochMeter,
                         images_seen: int, t0: float, last: bool) -> None:
        """The progress bar on a terminal; off a terminal (nohup, SLURM) a logged line."""
        if not self.dist.is_main:
            return
        elapsed = max(1e-9, time.perf_counter() - t0)
        avg = meter.averages()
        rate = images_seen / elapsed
        terms = {short_name(k): f"{v:.4f}" for k, v in zip(meter.names, avg)}
        if pbar is not None:
            pbar.set_postfix({**terms, "img/s": f"{rate:.0f}"}, refresh=False)
        elif not last and bool(self.cfg.LOG.PROGRESS):
            eta = elapsed / max(1, iteration - skip) * (self.steps_per_epoch - iteration)
            self.logger.info(f"{time.strftime('%H:%M:%S')} epoch {epoch} iteration {iteration}/{self.steps_per_epoch}"
                             f"  " + "  ".join(f"{k} {v}" for k, v in terms.items())
                             + f"  {rate:.0f} img/s  ETA {eta:.0f} s")
        if self.logger._tb is not None:
            step = (epoch - 1) * self.steps_per_epoch + iteration
            self.logger.scalar("train/loss", float(meter.stats[0] / max(1, meter.steps)), step)
            self.logger.scalar("train/lr", self.scheduler.get_last_lr()[0], step)

    def evaluate_model(self, fn: Callable[[Tensor], Tensor], desc: str) -> dict[str, float]:
        """Top-1/top-5/loss of ``fn`` on the validation loader, gathered over processes; the
        distiller is in eval mode for the pass (then back to its previous mode)."""
        prog = None
        if self.progress:
            from tqdm import tqdm

            def prog(it: Iterable) -> Iterable:
                return tqdm(it, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)
        was_training = self.model.training
        self.model.eval()
        try:
            return evaluate(fn, self.val_loader, self.device, amp_dtype=self.amp_dtype,
                            channels_last=self.channels_last, progress=prog)
        finally:
            self.model.train(was_training)

    def evaluate_teacher(self) -> float | None:
        """Teacher top-1 on the validation set (``None`` when there is no teacher)."""
        teacher = self.distiller.teacher
        if teacher is None:
            return None
        was = teacher.training
        teacher.eval()
        res = self.evaluate_model(lambda x: teacher(x)[0], "teacher eval")
        teacher.train(was)
        self.logger.info(f"teacher {self.cfg.DISTILLER.TEACHER}: top-1 {res['top1']:.2f}  top-5 {res['top5']:.2f}  "
                         f"loss {res['loss']:.4f}")
        return res["top1"]

    # ------------------------------------------------------------------ main loop
    def fit(self) -> TrainResult:
        """Run from the start (or resume) epoch to ``SOLVER.EPOCHS``; see :class:`TrainResult`."""
        if self.start_epoch > self.epochs:
            self.logger.info(f"already finished at epoch {self.start_epoch - 1}: nothing to do (raise "
                             "SOLVER.EPOCHS with --allow-config-change to train further)")
            self.logger.close()
            return TrainResult("finished", self.best_acc, self.best_epoch, float("nan"), self.start_epoch - 1,
                               self.teacher_acc, self.run_dir, [], "")
        if self.dist.distributed:
            self.logger.info(f"DDP: {self.dist.world_size} processes ({self.dist.backend}); global batch "
                             f"{self.cfg.SOLVER.BATCH_SIZE}, per-process batch "
                             f"{int(self.cfg.SOLVER.BATCH_SIZE) // self.dist.world_size}")
        if self.teacher_acc is None:
            self.teacher_acc = self.evaluate_teacher()
            for warning in teacher_warnings(self.cfg, self.teacher_acc, self.num_classes):
                self.logger.info(warning)
        if self._resume_rng is not None and not self.skip_iters:
            restore_rng_state(self._resume_rng)
            self._resume_rng = None
        summary = self.run_dir / "summary.json"
        if self.dist.is_main and summary.is_file():  # training past a finished run: it is not finished now
            summary.unlink()
            self.logger.info(f"training on past the finished epoch {self.start_epoch - 1}: removed {summary} "
                             "(written again when the run finishes)")
        history: list[dict] = []
        last_acc, last_epoch = float("nan"), self.start_epoch - 1
        status = "finished"
        for epoch in range(self.start_epoch, self.epochs + 1):
            lr = self._epoch_start_lr(epoch)
            train = self.train_epoch(epoch)
            epoch_rng, stopped_at, meter = train.pop("epoch_rng"), train.pop("stopped_at"), train.pop("meter")
            self.sync_buffers()
            if stopped_at is not None:
                self._save(build_state(self, epoch - 1, interrupted_at=stopped_at, epoch_rng=epoch_rng,
                                       meter=meter), LATEST)
                self.logger.info(f"stopped by {self.stop_flag.name or 'signal'} at epoch {epoch}, iteration "
                                 f"{stopped_at}; saved {self.run_dir / LATEST} (resume with --resume)")
                status = "interrupted"
                break
            val = self.evaluate_model(self.distiller.forward_test, f"eval {epoch}")
            is_best = val["top1"] >= self.best_acc
            if is_best:
                self.best_acc, self.best_epoch = val["top1"], epoch
            last_acc, last_epoch = val["top1"], epoch
            # the checkpoints first, latest.pth last: a failed save leaves latest.pth at the previous
            # epoch and no metric row for this one, so a resume re-runs the epoch and logs it once
            state = build_state(self, epoch)
            if is_best:
                self._save(state, BEST)
            freq = int(self.cfg.LOG.SAVE_CHECKPOINT_FREQ)
            if freq > 0 and epoch % freq == 0:
                self._save(state, epoch_name(epoch))
            self._save(state, LATEST)
            row = {"lr": lr, **train, "test_acc": val["top1"], "test_acc_top5": val["top5"],
                   "test_loss": val["loss"], "best_acc": self.best_acc}
            history.append({"epoch": epoch, **row})
            self.logger.log_epoch(epoch, row)
            terms = "  ".join(f"{k[6:]} {v:.4f}" for k, v in train.items() if k.startswith("train_loss_"))
            self.logger.info(f"{time.strftime('%Y-%m-%d %H:%M:%S')} epoch {epoch}/{self.epochs}  lr {lr:.5g}  "
                             f"{terms}  train top-1 {train['train_acc']:.2f}  test top-1 {val['top1']:.2f}  top-5 "
                             f"{val['top5']:.2f}  loss {val['loss']:.4f}  best {self.best_acc:.2f} (epoch "
                             f"{self.best_epoch})  {train['images_per_s']:.0f} img/s  {train['epoch_time_s']:.0f} s")
            if self.stop_after_epoch is not None and self.stop_after_epoch <= epoch < self.epochs:
                status = "stopped"
                break
            if self._agree_stop():
                self.logger.info(f"stopped by {self.stop_flag.name or 'signal'} after epoch {epoch}; "
                                 f"{self.run_dir / LATEST} is up to date (resume with --resume)")
                status = "interrupted"
                break
        if status == "finished":
            self._finish(last_acc, last_epoch)
        self.logger.close()
        return TrainResult(status, self.best_acc, self.best_epoch, last_acc, last_epoch, self.teacher_acc,
                           self.run_dir, history, self.stop_flag.name)

    def _finish(self, last_acc: float, last_epoch: int) -> None:
        self.logger.info(f"done: best top-1 {self.best_acc:.2f} at epoch {self.best_epoch}; last top-1 "
                         f"{last_acc:.2f} at epoch {last_epoch}"
                         + (f"; teacher top-1 {self.teacher_acc:.2f}" if self.teacher_acc is not None else ""))
        if self.dist.is_main:
            summary = {"best_acc": self.best_acc, "best_epoch": self.best_epoch, "last_acc": last_acc,
                       "last_epoch": last_epoch, "teacher_acc": self.teacher_acc}
            clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in summary.items()}
            (self.run_dir / "summary.json").write_text(json.dumps(clean, indent=2, allow_nan=False) + "\n")
            self.logger.log_summary(clean)
