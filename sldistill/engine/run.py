"""Assemble a training run from a config: process group, seeds, data, models, distiller, trainer.

:func:`train` is what ``sldistill train`` calls (in every process of a ``torchrun`` launch).
:func:`evaluate_checkpoint` is what ``sldistill eval`` calls.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sldistill.distillers.base import Distiller
from sldistill.engine.config import format_config, save_config, unreleased_reason
from sldistill.engine.config import run_dir as config_run_dir
from sldistill.engine.distributed import (
    DistInfo,
    barrier,
    cleanup_distributed,
    init_distributed,
    per_process_batch,
    resolve_device,
)
from sldistill.engine.metrics import MetricLogger, evaluate
from sldistill.engine.trainer import STOP, StopFlag, Trainer, TrainResult, amp_dtype

__all__ = ["seed_everything", "set_determinism", "train", "evaluate_checkpoint", "check_run_config"]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) generators."""
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def set_determinism(deterministic: bool, device: torch.device) -> None:
    """``EXPERIMENT.DETERMINISTIC``: deterministic algorithms (and cuDNN) on, benchmark off;
    otherwise cuDNN benchmark on CUDA."""
    if deterministic:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = device.type == "cuda"


def check_run_config(cfg: Any, device: torch.device, world_size: int) -> int:
    """Checks that need the device and process count; returns the per-process batch."""
    reason = unreleased_reason(cfg)
    if reason:
        raise ValueError(reason)
    amp_dtype(cfg.SOLVER.AMP, device)
    if bool(cfg.SOLVER.SYNC_BN) and device.type != "cuda":
        raise ValueError("SOLVER.SYNC_BN needs CUDA: PyTorch's SyncBatchNorm runs only on CUDA devices "
                         f"(this run is on {device}); set SOLVER.SYNC_BN false")
    return per_process_batch(int(cfg.SOLVER.BATCH_SIZE), world_size)


def build_distiller_for(cfg: Any, num_classes: int, num_train: int | None = None) -> Distiller:
    """Student, teacher (none for ``DISTILLER.TYPE`` NONE) and the distiller.

    ``num_train`` (the training-set size) is handed to distillers that size a per-sample
    memory by it (CRD's memory bank takes a ``num_data`` argument).
    """
    import inspect

    from sldistill import models
    from sldistill.data import check_num_classes
    from sldistill.distillers import get_distiller_class

    student = models.build_student(cfg, num_classes)
    check_num_classes(student, num_classes, what=f"student {cfg.DISTILLER.STUDENT}")
    cls = get_distiller_class(str(cfg.DISTILLER.TYPE))
    teacher = models.build_teacher(cfg, num_classes) if cls.needs_teacher else None
    if teacher is not None:
        check_num_classes(teacher, num_classes, what=f"teacher {cfg.DISTILLER.TEACHER}")
    kwargs = {}
    if num_train is not None and "num_data" in inspect.signature(cls.__init__).parameters:
        kwargs["num_data"] = int(num_train)
    return cls(student, teacher, cfg, **kwargs)


def build_run_loaders(cfg: Any, **kwargs: Any) -> Any:
    """The loaders for ``cfg``'s distiller: as many views as it trains on, and the extra batch
    items it needs (CRD sampling when it needs ``contrast_index``)."""
    from sldistill.data import build_loaders
    from sldistill.distillers import get_distiller_class

    cls = get_distiller_class(str(cfg.DISTILLER.TYPE))
    return build_loaders(cfg, num_views=cls.num_views, needs=tuple(cls.needs), **kwargs)


def train(cfg: Any, *, resume: bool = False, stop_flag: StopFlag = STOP, log_interval: int = 20,
          stop_after_epoch: int | None = None) -> TrainResult:
    """Train as ``cfg`` says, in this process (one of ``WORLD_SIZE`` under torchrun).

    Prints the resolved config and saves it as ``config.yaml`` in the run folder (rank 0),
    then builds loaders, models and distiller and runs :class:`Trainer`.
    """
    dist_info: DistInfo = init_distributed(str(cfg.EXPERIMENT.DEVICE))
    try:
        per_proc = check_run_config(cfg, dist_info.device, dist_info.world_size)
        seed = int(cfg.EXPERIMENT.SEED)
        set_determinism(bool(cfg.EXPERIMENT.DETERMINISTIC), dist_info.device)
        seed_everything(seed)
        run_dir = Path(config_run_dir(cfg))
        logger = MetricLogger(run_dir, tensorboard=bool(cfg.LOG.TENSORBOARD), enabled=dist_info.is_main)
        if dist_info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            logger.info(format_config(cfg))
            if not (resume and (run_dir / "config.yaml").is_file()):
                save_config(cfg, run_dir / "config.yaml")
            logger.info(f"run folder: {run_dir}")
            logger.info(f"device {dist_info.device}; processes {dist_info.world_size}; global batch "
                        f"{cfg.SOLVER.BATCH_SIZE}; per-process batch {per_proc}")
        loaders = build_run_loaders(cfg, rank=dist_info.rank, world_size=dist_info.world_size,
                                    device=dist_info.device, seed=seed)
        distiller = build_distiller_for(cfg, loaders.num_classes, loaders.num_train)
        if dist_info.rank:  # different augmentation streams per process, same initial weights
            seed_everything(seed + dist_info.rank)
        extra = distiller.extra_parameter_count() if hasattr(distiller, "extra_parameter_count") else 0
        n_student = sum(p.numel() for p in distiller.student.parameters())
        logger.info(f"{cfg.DISTILLER.TYPE}: student {cfg.DISTILLER.STUDENT} ({n_student / 1e6:.2f} M params)"
                    + (f", teacher {cfg.DISTILLER.TEACHER}" if distiller.teacher is not None else "")
                    + (f", connectors {extra / 1e6:.3f} M params" if extra else ""))
        trainer = Trainer(cfg, distiller, loaders.train, loaders.val, run_dir, dist_info,
                          train_sampler=getattr(loaders, "train_sampler", None), resume=resume,
                          log_interval=log_interval, stop_after_epoch=stop_after_epoch, stop_flag=stop_flag,
                          logger=logger)
        result = trainer.fit()
        # every rank finishes before the group is torn down: a gloo rank that destroys it
        # while its peer is still inside the group can abort the peer at exit
        barrier()
        return result
    finally:
        cleanup_distributed()


def evaluate_checkpoint(cfg: Any, model_name: str, ckpt: str | Path, *, strict: bool = True) -> dict[str, float]:
    """Top-1/top-5/loss of model ``model_name`` with weights ``ckpt`` on ``cfg``'s validation set."""
    from sldistill import models
    from sldistill.data import build_loaders

    device = resolve_device(str(cfg.EXPERIMENT.DEVICE))
    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint not found: {ckpt}")
    loaders = build_loaders(cfg, rank=0, world_size=1, device=device, seed=int(cfg.EXPERIMENT.SEED))
    model = models.create(model_name, num_classes=loaders.num_classes, dataset=str(cfg.DATASET.TYPE))
    models.load_weights(model, str(ckpt), strict=strict)
    model.to(device).eval()
    channels_last = bool(cfg.SOLVER.CHANNELS_LAST)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return evaluate(lambda x: model(x)[0], loaders.val, device, amp_dtype=amp_dtype(cfg.SOLVER.AMP, device),
                    channels_last=channels_last)
