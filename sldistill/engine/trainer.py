"""The trainer: one loop for one-view and two-view distillers, DOT, AMP, DDP, resume.

:class:`Trainer` takes a built distiller and loaders and runs ``SOLVER.EPOCHS`` epochs:
training (terms summed and stepped; with ``SOLVER.TYPE: DOT`` the task and distillation terms
are stepped apart), an evaluation after every epoch (top-1, top-5, loss; gathered over
processes), metrics to CSV/JSONL/TensorBoard, and checkpoints (``latest.pth`` every epoch,
``best.pth``, ``epoch_N.pth`` every ``LOG.SAVE_CHECKPOINT_FREQ`` epochs; see
:mod:`sldistill.engine.checkpoint`). What it trains on comes from the distiller: its
``num_views`` and the extra batch items it ``needs`` (batches are named records, see
:mod:`sldistill.data`).

Inside a training step nothing synchronises with the host: losses, accuracy counts and a
non-finite-loss record are accumulated on the device and read every ``log_interval``
iterations and at the end of the epoch. A non-finite loss therefore stops the run at the
next read, with a message naming the epoch, iteration and term where it first appeared;
the checkpoints on disk are those of the last good epoch.

SIGINT/SIGTERM (see :func:`install_signal_handlers`) finish the current iteration, write
``latest.pth`` marked ``"interrupted"`` with the position in the epoch, and return; resuming
replays the epoch's data order up to that position and continues from there.
"""
from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import Tensor, nn

from sldistill.distillers.base import Distiller
from sldistill.engine.checkpoint import (
    BEST,
    LATEST,
    atomic_save,
    capture_rng_state,
    epoch_name,
    find_resume_checkpoint,
    load_checkpoint,
    restore_rng_state,
)
from sldistill.engine.control import (
    STOP,
    NonFiniteLossError,
    StopFlag,
    TrainResult,
    amp_dtype,
    connector_state,
    grow_terms,
    install_signal_handlers,
    short_name,
)
from sldistill.engine.distributed import DistInfo, all_reduce_grads, all_reduce_sum
from sldistill.engine.metrics import MetricLogger, evaluate, topk_correct
from sldistill.optim import DOT, build_optimizer, build_scheduler, split_terms

__all__ = ["Trainer", "TrainResult", "NonFiniteLossError", "StopFlag", "STOP", "install_signal_handlers",
           "amp_dtype", "connector_state"]


class Trainer:
    """Train a distiller as the config says.

    Args:
        cfg: the experiment config (published keys; ``SOLVER``, ``LOG``, ``EXPERIMENT``).
        distiller: a built :class:`~sldistill.distillers.Distiller` (on any device).
        train_loader, val_loader: the loaders (see docs/architecture.md for batch layout).
        run_dir: the run folder (written by rank 0 only).
        dist_info: this process's place in the process group.
        train_sampler: the sampler whose ``set_epoch(epoch)`` is called before every epoch
            (``Loaders.train_sampler``; it fixes the epoch's order and augmentation keys). When
            omitted, ``train_loader.sampler`` is used if it has ``set_epoch``.
        resume: continue from ``run_dir/latest.pth``.
        log_interval: iterations between host reads of the running sums (progress bar,
            non-finite check, stop-signal agreement across processes).
        stop_after_epoch: return after this epoch even if ``SOLVER.EPOCHS`` is larger (for
            time-boxed jobs; resume continues).
        stop_flag: the flag SIGINT/SIGTERM set.
        logger: a :class:`MetricLogger` (built from ``run_dir`` when omitted).
        on_iteration: test hook called as ``f(epoch, iteration)`` after each step.
    """

    def __init__(self, cfg: Any, distiller: Distiller, train_loader: Iterable, val_loader: Iterable,
                 run_dir: str | Path, dist_info: DistInfo | None = None, *, train_sampler: Any = None,
                 resume: bool = False, log_interval: int = 20, stop_after_epoch: int | None = None,
                 stop_flag: StopFlag = STOP, logger: MetricLogger | None = None,
                 on_iteration: Callable[[int, int], None] | None = None) -> None:
        self.cfg = cfg
        self.dist = dist_info or DistInfo()
        self.device = self.dist.device
        self.run_dir = Path(run_dir)
        self.train_loader = train_loader
        self.val_loader = val_loader
        if train_sampler is None and hasattr(getattr(train_loader, "sampler", None), "set_epoch"):
            train_sampler = train_loader.sampler  # type: ignore[attr-defined]
        self.train_sampler = train_sampler
        self.resume = resume
        self.log_interval = max(1, int(log_interval))
        self.stop_after_epoch = stop_after_epoch
        self.stop_flag = stop_flag
        self.on_iteration = on_iteration
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

        # ---- model placement
        self.distiller = distiller.to(self.device)
        if self.channels_last:
            self.distiller = self.distiller.to(memory_format=torch.channels_last)
        if bool(cfg.SOLVER.SYNC_BN):
            if self.device.type != "cuda":
                raise ValueError("SOLVER.SYNC_BN needs CUDA: PyTorch's SyncBatchNorm runs only on CUDA devices "
                                 f"(this run is on {self.device}); set SOLVER.SYNC_BN false")
            if self.dist.distributed:
                self.distiller.student = nn.SyncBatchNorm.convert_sync_batchnorm(self.distiller.student)
        self.num_views = int(getattr(self.distiller, "num_views", 1))
        self.needs = tuple(getattr(self.distiller, "needs", ()))
        self.model: nn.Module = self.distiller
        if self.dist.distributed:
            self.model = nn.parallel.DistributedDataParallel(
                self.distiller, device_ids=[self.device] if self.device.type == "cuda" else None,
                find_unused_parameters=bool(getattr(self.distiller, "ddp_find_unused_parameters", False)))

        params = self.distiller.learnable_parameters()
        self.optimizer = build_optimizer(cfg, params)
        self.steps_per_epoch = len(train_loader)  # type: ignore[arg-type]
        self.scheduler = build_scheduler(cfg, self.optimizer, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

        self.start_epoch = 1
        self.skip_iters = 0
        self.best_acc = -1.0
        self.best_epoch = 0
        self.teacher_acc: float | None = None
        self._epoch_rng: dict | None = None
        self._resume_rng: dict | None = None
        if resume:
            self._load_resume()

    # ------------------------------------------------------------------ checkpoints
    def _state(self, epoch: int, *, interrupted_at: int | None = None, epoch_rng: dict | None = None) -> dict:
        cfg_plain = self.cfg.to_dict() if hasattr(self.cfg, "to_dict") else dict(self.cfg)
        state = {
            "model": self.distiller.student.state_dict(),
            "distiller": connector_state(self.distiller),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,
            "best_acc": self.best_acc,
            "best_epoch": self.best_epoch,
            "teacher_acc": self.teacher_acc,
            "rng": capture_rng_state(),
            "cfg": cfg_plain,
        }
        if interrupted_at is not None:
            state["interrupted"] = True
            state["iteration"] = interrupted_at
            state["epoch_rng"] = epoch_rng
        return state

    def _save(self, state: dict, name: str) -> None:
        if self.dist.is_main:
            atomic_save(state, self.run_dir / name)

    def _load_resume(self) -> None:
        path = find_resume_checkpoint(self.run_dir)
        ckpt = load_checkpoint(path, map_location=self.device)
        self.distiller.student.load_state_dict(ckpt["model"])
        if ckpt.get("distiller"):
            missing = self.distiller.load_state_dict(ckpt["distiller"], strict=False)
            bad = [k for k in missing.unexpected_keys]
            if bad:
                raise ValueError(f"{path}: connector state has keys this distiller lacks: {bad[:5]}")
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.best_acc = float(ckpt.get("best_acc", -1.0))
        self.best_epoch = int(ckpt.get("best_epoch", 0))
        self.teacher_acc = ckpt.get("teacher_acc")
        self.start_epoch = int(ckpt["epoch"]) + 1
        if ckpt.get("interrupted"):
            self.skip_iters = int(ckpt.get("iteration", 0))
            self._epoch_rng = ckpt.get("epoch_rng")
        self._resume_rng = ckpt.get("rng")
        where = f"epoch {self.start_epoch}" + (f", iteration {self.skip_iters + 1}" if self.skip_iters else "")
        self.logger.info(f"resumed from {path}: continuing at {where} (best top-1 so far {self.best_acc:.2f})")

    # ------------------------------------------------------------------ helpers
    def _unpack(self, batch: Mapping[str, Any]) -> tuple[list[Tensor], Tensor, dict[str, Tensor]]:
        """A named-record batch (``views``, ``target`` and extras by name) moved to the device."""
        views = list(batch["views"])
        if len(views) != self.num_views:
            raise ValueError(f"DISTILLER.TYPE {self.cfg.DISTILLER.TYPE!r} trains on {self.num_views} view(s) but "
                             f"the loader gives {len(views)}; build the loaders with the distiller's num_views")
        mf = torch.channels_last if self.channels_last else torch.contiguous_format
        views = [v.to(self.device, non_blocking=True).contiguous(memory_format=mf) if v.dim() == 4
                 else v.to(self.device, non_blocking=True) for v in views]
        target = batch["target"].to(self.device, non_blocking=True)
        extras: dict[str, Tensor] = {}
        for name in self.needs:
            if name not in batch:
                raise ValueError(f"DISTILLER.TYPE {self.cfg.DISTILLER.TYPE!r} needs batch item {name!r}, which the "
                                 f"loader does not give (it gives {', '.join(sorted(batch))}); build the loaders "
                                 "with the distiller's needs")
            extras[name] = batch[name].to(self.device, non_blocking=True)
        return views, target, extras

    def _autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def _train_step(self, views: list[Tensor], target: Tensor, epoch: int, extras: dict[str, Tensor]
                    ) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """One optimisation step; returns (logits, terms, total) without host synchronisation."""
        if self.use_dot:
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

    # ------------------------------------------------------------------ epochs
    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """Train one epoch; returns averaged terms, loss, top-1, images/s and ``stopped_at``
        (the iteration count when a stop signal ended the epoch early, else ``None``)."""
        self.model.train()
        if self.train_sampler is not None and hasattr(self.train_sampler, "set_epoch"):
            self.train_sampler.set_epoch(epoch)
        skip = self.skip_iters
        # The data stream of our loaders is keyed by (seed, epoch, sample) (see sldistill.data),
        # so replaying needs only the global generators' state at the epoch start (for loaders
        # that draw from them, e.g. DataLoader(shuffle=True) without a generator).
        if skip and self._epoch_rng is not None:
            restore_rng_state(self._epoch_rng.get("global"))
        epoch_rng = {"global": capture_rng_state()}
        loader_iter = iter(self.train_loader)
        if skip:
            for _ in range(skip):  # replay the data order up to the interrupt point
                next(loader_iter)
            if self._resume_rng is not None:
                restore_rng_state(self._resume_rng)
            self._resume_rng = None
            self.skip_iters = 0
            self._epoch_rng = None

        names: list[str] = []
        sums = torch.zeros(0, dtype=torch.float64, device=self.device)
        first_bad = torch.zeros(0, dtype=torch.long, device=self.device)
        stats = torch.zeros(3, dtype=torch.float64, device=self.device)  # total, correct@1, n
        pbar = None
        if self.progress:
            from tqdm import tqdm

            pbar = tqdm(total=self.steps_per_epoch, initial=skip, desc=f"epoch {epoch}/{self.epochs}",
                        dynamic_ncols=True, leave=False, file=sys.stderr)
        t0 = time.perf_counter()
        images_seen = 0
        iteration = skip
        stopped_at = None
        for batch in loader_iter:
            iteration += 1
            views, target, extras = self._unpack(batch)
            logits, terms, total = self._train_step(views, target, epoch, extras)
            if list(terms) != names:
                names, sums, first_bad = grow_terms(names, sums, first_bad, list(terms))
            vec = torch.stack([terms[n].detach().double() for n in names])
            bad = ~torch.isfinite(vec)
            first_bad = torch.where(bad & (first_bad < 0), torch.full_like(first_bad, iteration), first_bad)
            sums += vec
            stats[0] += total.detach().double()
            stats[1] += topk_correct(logits.detach(), target, (1,))[0]
            stats[2] += target.shape[0]
            images_seen += target.shape[0] * len(views)
            if self.on_iteration is not None:
                self.on_iteration(epoch, iteration)
            last = iteration == self.steps_per_epoch
            if iteration % self.log_interval == 0 or last:
                self._check_finite(epoch, names, first_bad, sums)
                if pbar is not None:
                    n_done = max(1, iteration - skip)
                    avg = (sums / n_done).tolist()
                    rate = images_seen / max(1e-9, time.perf_counter() - t0)
                    pbar.set_postfix({**{short_name(k): f"{v:.4f}" for k, v in zip(names, avg)},
                                      "img/s": f"{rate:.0f}"}, refresh=False)
                if self.dist.is_main and self.logger._tb is not None:
                    step = (epoch - 1) * self.steps_per_epoch + iteration
                    self.logger.scalar("train/loss", float((stats[0] / max(1.0, float(iteration - skip))).item()), step)
                    self.logger.scalar("train/lr", self.scheduler.get_last_lr()[0], step)
            if pbar is not None:
                pbar.update(1)
            if (not self.dist.distributed or iteration % self.log_interval == 0 or last) and self._agree_stop():
                stopped_at = iteration
                break
        if pbar is not None:
            pbar.close()
        self._check_finite(epoch, names, first_bad, sums)
        elapsed = time.perf_counter() - t0
        all_reduce_sum(stats)
        n_steps = max(1, (stopped_at or iteration) - skip)
        out: dict[str, Any] = {f"train_{k}": v for k, v in zip(names, (sums / n_steps).tolist())}
        tot, c1, n = stats.tolist()
        out["train_loss"] = tot / max(1, n_steps * self.dist.world_size)
        out["train_acc"] = 100.0 * c1 / max(1.0, n)
        out["images_per_s"] = images_seen * self.dist.world_size / max(1e-9, elapsed)
        out["stopped_at"] = stopped_at
        out["epoch_rng"] = epoch_rng
        return out

    def _check_finite(self, epoch: int, names: list[str], first_bad: Tensor, sums: Tensor) -> None:
        if first_bad.numel() == 0:
            return
        fb = first_bad.tolist()
        hits = [(it, n) for it, n in zip(fb, names) if it >= 0]
        if hits:
            it, name = min(hits)
            value = sums[names.index(name)].item()
            raise NonFiniteLossError(epoch, it, name, value)

    def evaluate_model(self, fn: Callable[[Tensor], Tensor], desc: str) -> dict[str, float]:
        """Top-1/top-5/loss of ``fn`` on the validation loader, gathered over processes.

        The distiller (student and connectors) is put in eval mode for the pass, so batch
        norm uses its running statistics and does not update them on validation data, and is
        returned to its previous mode afterwards."""
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
        teacher = getattr(self.distiller, "teacher", None)
        if teacher is None:
            return None
        teacher.eval()
        res = self.evaluate_model(lambda x: teacher(x)[0], "teacher eval")
        self.logger.info(f"teacher {self.cfg.DISTILLER.TEACHER}: top-1 {res['top1']:.2f}  top-5 {res['top5']:.2f}  "
                         f"loss {res['loss']:.4f}")
        return res["top1"]

    # ------------------------------------------------------------------ main loop
    def fit(self) -> TrainResult:
        """Run from the start (or resume) epoch to ``SOLVER.EPOCHS``; see :class:`TrainResult`."""
        if self.dist.distributed:
            self.logger.info(f"DDP: {self.dist.world_size} processes ({self.dist.backend}); global batch "
                             f"{self.cfg.SOLVER.BATCH_SIZE}, per-process batch "
                             f"{int(self.cfg.SOLVER.BATCH_SIZE) // self.dist.world_size}")
        if self.teacher_acc is None:
            self.teacher_acc = self.evaluate_teacher()
        if self._resume_rng is not None and not self.skip_iters:
            restore_rng_state(self._resume_rng)
            self._resume_rng = None
        history: list[dict] = []
        last_acc, last_epoch = float("nan"), self.start_epoch - 1
        status = "finished"
        for epoch in range(self.start_epoch, self.epochs + 1):
            lr = self.scheduler.get_last_lr()[0]
            train = self.train_epoch(epoch)
            epoch_rng = train.pop("epoch_rng")
            stopped_at = train.pop("stopped_at")
            if stopped_at is not None:
                self._save(self._state(epoch - 1, interrupted_at=stopped_at, epoch_rng=epoch_rng), LATEST)
                self.logger.info(f"stopped by {self.stop_flag.name or 'signal'} at epoch {epoch}, iteration "
                                 f"{stopped_at}; saved {self.run_dir / LATEST} (resume with --resume)")
                status = "interrupted"
                break
            val = self.evaluate_model(self.distiller.forward_test, f"eval {epoch}")
            is_best = val["top1"] >= self.best_acc
            if is_best:
                self.best_acc, self.best_epoch = val["top1"], epoch
            last_acc, last_epoch = val["top1"], epoch
            row = {"lr": lr, **train, "test_acc": val["top1"], "test_acc_top5": val["top5"],
                   "test_loss": val["loss"], "best_acc": self.best_acc}
            history.append({"epoch": epoch, **row})
            self.logger.log_epoch(epoch, row)
            terms = "  ".join(f"{k[6:]} {v:.4f}" for k, v in train.items() if k.startswith("train_loss_"))
            self.logger.info(f"epoch {epoch}/{self.epochs}  lr {lr:.5g}  {terms}  "
                             f"train top-1 {train['train_acc']:.2f}  "
                             f"test top-1 {val['top1']:.2f}  top-5 {val['top5']:.2f}  loss {val['loss']:.4f}  "
                             f"best {self.best_acc:.2f} (epoch {self.best_epoch})  {train['images_per_s']:.0f} img/s")
            if self.dist.is_main:
                state = self._state(epoch)
                self._save(state, LATEST)
                if is_best:
                    self._save(state, BEST)
                freq = int(self.cfg.LOG.SAVE_CHECKPOINT_FREQ)
                if freq > 0 and epoch % freq == 0:
                    self._save(state, epoch_name(epoch))
            if self.stop_after_epoch is not None and epoch >= self.stop_after_epoch and epoch < self.epochs:
                status = "stopped"
                break
            if self._agree_stop():
                self.logger.info(f"stopped by {self.stop_flag.name or 'signal'} after epoch {epoch}; "
                                 f"{self.run_dir / LATEST} is up to date (resume with --resume)")
                status = "interrupted"
                break
        if status == "finished":
            self.logger.info(f"done: best top-1 {self.best_acc:.2f} at epoch {self.best_epoch}; last top-1 "
                             f"{last_acc:.2f} at epoch {last_epoch}"
                             + (f"; teacher top-1 {self.teacher_acc:.2f}" if self.teacher_acc is not None else ""))
            if self.dist.is_main:
                summary = {"best_acc": self.best_acc, "best_epoch": self.best_epoch, "last_acc": last_acc,
                           "last_epoch": last_epoch, "teacher_acc": self.teacher_acc}
                (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        self.logger.close()
        return TrainResult(status, self.best_acc, self.best_epoch, last_acc, last_epoch, self.teacher_acc,
                           self.run_dir, history, self.stop_flag.name)


