"""Assemble a training run from a config: process group, seeds, data, models, distiller, trainer.

:func:`train` is what ``sldistill train`` calls (in every process of a ``torchrun`` launch).
:func:`evaluate_checkpoint` is what ``sldistill eval`` calls.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from sldistill.distillers.base import Distiller
from sldistill.engine.checkpoint import BEST, LATEST, load_checkpoint
from sldistill.engine.config import run_dir as config_run_dir
from sldistill.engine.config import save_config, unreleased_reason
from sldistill.engine.distributed import (
    DistInfo,
    barrier,
    cleanup_distributed,
    init_distributed,
    per_process_batch,
    resolve_device,
)
from sldistill.engine.metrics import MetricLogger, evaluate, wandb_options
from sldistill.engine.rundir import (
    RunFolderError,
    RunLock,
    batch_order_changes,
    clear_run,
    config_changes,
    flat_config,
    run_state,
)
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
    distiller = cls(student, teacher, cfg, **kwargs)
    distiller.num_classes = int(num_classes)  # forward_train's logits are checked against it, teacher or not
    return distiller


def attach_teacher_cache(cfg: Any, distiller: Distiller, datasets: Any = None) -> Any:
    """Open ``DISTILLER.TEACHER_CACHE`` (when set), check that its header matches this run and
    let the distiller read the weak view's teacher logits from it. Every process maps the
    same read-only file. Returns the cache, or ``None``."""
    path = str(cfg.DISTILLER.TEACHER_CACHE)
    if not path:
        return None
    if distiller.uses_teacher_features:
        raise ValueError(f"DISTILLER.TEACHER_CACHE holds teacher logits only, and {cfg.DISTILLER.TYPE} reads the "
                         "teacher's features: the cache does not apply to it; unset DISTILLER.TEACHER_CACHE")
    if distiller.teacher is None:
        raise ValueError(f"DISTILLER.TEACHER_CACHE is set but {cfg.DISTILLER.TYPE} uses no teacher; unset it")
    from sldistill.teacher_cache import open_cache

    cache = open_cache(path)
    cache.check(cfg, datasets=datasets)
    distiller.teacher_cache = cache
    return cache


def build_run_loaders(cfg: Any, **kwargs: Any) -> Any:
    """The loaders for ``cfg``'s distiller: as many views as it trains on, and the extra batch
    items it needs (CRD sampling when it needs ``contrast_index``)."""
    from sldistill.data import build_loaders
    from sldistill.distillers import get_distiller_class

    cls = get_distiller_class(str(cfg.DISTILLER.TYPE))
    return build_loaders(cfg, num_views=cls.num_views, needs=tuple(cls.needs), **kwargs)


@dataclass
class FolderPlan:
    """What rank 0 decided about the run folder before anything is built or written."""

    changes: list[str] = field(default_factory=list)  #: resumed: what the config changes
    finished_epoch: int | None = None  #: resumed: the run is already finished at this epoch
    notes: list[str] = field(default_factory=list)


def _method_sections(cfg: Any) -> tuple[str, ...]:
    from sldistill.distillers import get_distiller_class
    from sldistill.engine.config.keys import SECTION_ORDER

    keys = get_distiller_class(str(cfg.DISTILLER.TYPE)).config
    return tuple(sorted({k.split(".")[0] for k in keys} - set(SECTION_ORDER)))


def plan_run_folder(cfg: Any, run_dir: Path, resume: bool, overwrite: bool, allow_config_change: bool,
                    world_size: int = 1) -> FolderPlan:
    """Refuse what would lose a result, reading only (raises :class:`RunFolderError`):

    * a folder another live run holds (``run.lock``; checked first, whatever the options);
    * a folder holding a run, without ``--resume`` or ``--overwrite``;
    * a resume that changes the models, method, data or seed without ``--allow-config-change``;
    * a resume in the middle of an epoch that changes that epoch's batches (batch size, process
      count, ...: :func:`~sldistill.engine.rundir.batch_order_changes`): the resumed epoch
      replays its first batches, so it needs them unchanged;
    * a resume of an unfinished run with a ``SOLVER.EPOCHS`` it has already reached (the run was
      extended and the resume does not repeat the longer ``SOLVER.EPOCHS``). The config given is
      the one used: a resume does not take ``SOLVER.EPOCHS`` from the checkpoint, as it cannot
      tell a value left at its default from one given on purpose.
    """
    RunLock(run_dir).check()
    state = run_state(run_dir)
    plan = FolderPlan()
    if resume:
        latest = run_dir / LATEST
        if not latest.is_file():
            what = "--overwrite starts it afresh" if state.exists else "start the run without --resume"
            raise RunFolderError(f"--resume: no {LATEST} in {run_dir} ({state.describe()}): nothing to resume; "
                                 f"{what}")
        ckpt = load_checkpoint(latest)
        old_cfg = ckpt.get("cfg", {}) or {}
        plan.changes, protected = config_changes(old_cfg, cfg, _method_sections(cfg))
        if protected and not allow_config_change:
            raise RunFolderError(
                f"--resume: the config differs from the one {run_dir} was trained with in "
                f"{', '.join(protected)} ({'; '.join(c for c in plan.changes if c.split(':')[0] in protected)}): "
                "that would continue the run as a different experiment. Use --allow-config-change to do it "
                "anyway, or train into another folder (EXPERIMENT.NAME)")
        epoch = int(ckpt.get("epoch", 0))
        if ckpt.get("interrupted"):
            order = batch_order_changes(old_cfg, cfg, int(ckpt.get("world_size", 1) or 1), world_size)
            if order:
                raise RunFolderError(
                    f"--resume: {run_dir} stopped in the middle of epoch {epoch + 1} (after "
                    f"{int(ckpt.get('iteration', 0))} batches), and this start changes that epoch's batches: "
                    f"{'; '.join(order)}. A mid-epoch resume replays the epoch's batches up to the interrupt, so "
                    "resume with the old values; a resume at an epoch boundary may change them (the "
                    "process count and batch size freely, the seed and the data with --allow-config-change)")
        planned = int(flat_config(old_cfg).get("SOLVER.EPOCHS", epoch) or epoch)
        if epoch >= int(cfg.SOLVER.EPOCHS):
            if planned > epoch:  # not finished: it was training to more epochs than this config asks for
                where = f"in epoch {epoch + 1}" if ckpt.get("interrupted") else f"after epoch {epoch}"
                raise RunFolderError(
                    f"--resume: {run_dir} stopped {where} of {planned} (the SOLVER.EPOCHS it was training with), "
                    f"and this config has SOLVER.EPOCHS {int(cfg.SOLVER.EPOCHS)}, which leaves nothing to train: "
                    f"pass SOLVER.EPOCHS {planned} to continue it; nothing changed")
            plan.finished_epoch = epoch
    elif overwrite:
        if state.exists:
            plan.notes.append(f"--overwrite: replacing {state.describe()} in {run_dir}")
    elif state.exists:
        options = "; --resume continues it, --overwrite replaces it" if state.checkpoint or state.finished \
            else " (nothing to resume); --overwrite replaces it"
        raise RunFolderError(f"run folder {run_dir} holds {state.describe()}{options}, or set EXPERIMENT.NAME "
                             "to train into another folder")
    return plan


def _on_rank0(dist_info: DistInfo, fn: Callable[[], Any]) -> Any:
    """``fn()`` on rank 0, its result (or its RunFolderError) on every rank, so that all stop together."""
    if not dist_info.distributed:
        return fn()
    import torch.distributed as tdist

    box: list[Any] = [None]
    if dist_info.is_main:
        try:
            box = [("ok", fn())]
        except RunFolderError as exc:
            box = [("error", str(exc))]
    tdist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise RunFolderError(value)
    return value


def _finished_result(run_dir: Path, epoch: int) -> TrainResult:
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    nan = float("nan")
    return TrainResult("finished", float(summary.get("best_acc") or nan), int(summary.get("best_epoch") or 0),
                       float(summary.get("last_acc") or nan), int(summary.get("last_epoch") or epoch),
                       summary.get("teacher_acc"), run_dir, [], "")


def config_summary(cfg: Any) -> list[str]:
    """The console's view of a config: the keys that differ from the base's defaults, and those
    of them that are accepted for compatibility only (not acted on)."""
    from sldistill.engine.config import get_defaults, schema

    defaults, flat = flat_config(get_defaults(str(cfg.BASE))), flat_config(cfg)
    diff = [f"  {k}: {v!r}" for k, v in flat.items() if defaults.get(k) != v]
    lines = [f"config: {len(diff)} key(s) differ from the {cfg.BASE} defaults (the full config is saved as "
             "config.yaml):", *diff]
    compat = [k for k, key in schema().items() if key.compat and k in flat and flat[k] != defaults.get(k)]
    if compat:
        lines.append("accepted for compatibility, not acted on: " + ", ".join(compat))
    return lines


def _missing_dirs(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove each of ``folders`` (deepest first) while it is empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (another run uses it) or gone
            return


def train(cfg: Any, *, resume: bool = False, overwrite: bool = False, allow_config_change: bool = False,
          stop_flag: StopFlag = STOP, log_interval: int = 20, stop_after_epoch: int | None = None) -> TrainResult:
    """Train as ``cfg`` says, in this process (one of ``WORLD_SIZE`` under torchrun).

    The run folder is checked first (see :func:`plan_run_folder`) and locked (``run.lock``)
    for the run; then data, models, distiller and :class:`Trainer` are built (a resume puts the
    checkpoint back), the config is saved as ``config.yaml`` (on resume only once accepted, and
    only when it changed) and the trainer runs. A start that fails before training removes
    the folder it created, and the (empty) parents it created for it. ``overwrite`` replaces a
    run in the folder; ``resume`` continues it.
    """
    if resume and overwrite:
        raise ValueError("--resume continues the run in the folder and --overwrite replaces it: give one of them")
    dist_info: DistInfo = init_distributed(str(cfg.EXPERIMENT.DEVICE))
    run_dir = Path(config_run_dir(cfg))
    lock: RunLock | None = None
    created = started = failed = False
    new_dirs: list[Path] = []
    try:
        per_proc = check_run_config(cfg, dist_info.device, dist_info.world_size)
        wandb_opts = wandb_options(cfg, resumed=resume)  # a missing package stops every rank here
        plan: FolderPlan = _on_rank0(dist_info, lambda: plan_run_folder(cfg, run_dir, resume, overwrite,
                                                                        allow_config_change, dist_info.world_size))
        if plan.finished_epoch is not None:
            if dist_info.is_main:
                print(f"{run_dir}: already finished at epoch {plan.finished_epoch}; nothing changed "
                      "(raise SOLVER.EPOCHS to train further)")
            return _finished_result(run_dir, plan.finished_epoch)
        created = dist_info.is_main and not run_dir.exists()
        new_dirs = _missing_dirs(run_dir) if created else []
        lock = _on_rank0(dist_info, lambda: RunLock(run_dir, take_stale=resume or overwrite).acquire())
        if not dist_info.is_main:
            lock = None
        seed = int(cfg.EXPERIMENT.SEED)
        set_determinism(bool(cfg.EXPERIMENT.DETERMINISTIC), dist_info.device)
        seed_everything(seed)
        # warnings raised while building (a dropped last batch, a connector's width, SLD.GAMMA past
        # the run) go to the run's log as "warning:" lines, once, from rank 0
        with warnings.catch_warnings(record=True) as start_warnings:
            warnings.simplefilter("always")
            loaders = build_run_loaders(cfg, rank=dist_info.rank, world_size=dist_info.world_size,
                                        device=dist_info.device, seed=seed)
            distiller = build_distiller_for(cfg, loaders.num_classes, loaders.num_train)
            cache = attach_teacher_cache(cfg, distiller, loaders.datasets)
        if dist_info.rank:  # different augmentation streams per process, same initial weights
            seed_everything(seed + dist_info.rank)
        if dist_info.is_main and overwrite:
            clear_run(run_dir)
        logger = MetricLogger(run_dir, tensorboard=bool(cfg.LOG.TENSORBOARD), enabled=dist_info.is_main,
                              wandb=wandb_opts)
        notices = [lock.notice] if lock is not None and lock.notice else []
        for line in [*notices, *plan.notes, *config_summary(cfg)]:
            logger.info(line)
        if plan.changes:
            logger.info("--resume: config changes against the checkpoint (recorded in config.yaml): "
                        + "; ".join(plan.changes))
        ds = loaders.datasets
        logger.info(f"run folder: {run_dir}")
        logger.info(f"data: {cfg.DATASET.TYPE} from {ds.source if ds is not None else '?'}: {loaders.num_train} "
                    f"training and {loaders.num_val} validation images, {loaders.num_classes} classes")
        for note in ds.notes if ds is not None else []:
            logger.info(note)
        for message in dict.fromkeys(str(w.message) for w in start_warnings):
            logger.info(f"warning: {message}")
        if cache is not None:
            logger.info(f"teacher cache: {cfg.DISTILLER.TEACHER_CACHE} (the weak view's teacher logits are read "
                        "from it)")
        logger.info(f"device {dist_info.device}; processes {dist_info.world_size}; global batch "
                    f"{cfg.SOLVER.BATCH_SIZE}; per-process batch {per_proc}")
        n_student = sum(p.numel() for p in distiller.student.parameters())
        extra = distiller.extra_parameter_count()
        logger.info(f"{cfg.DISTILLER.TYPE}: student {cfg.DISTILLER.STUDENT} ({n_student / 1e6:.2f} M params)"
                    + (f", teacher {cfg.DISTILLER.TEACHER}" if distiller.teacher is not None else "")
                    + (f", connectors {extra / 1e6:.3f} M params" if extra else ""))
        trainer = Trainer(cfg, distiller, loaders.train, loaders.val, run_dir, dist_info,
                          train_sampler=loaders.train_sampler, resume=resume, log_interval=log_interval,
                          stop_after_epoch=stop_after_epoch, stop_flag=stop_flag, logger=logger,
                          num_classes=loaders.num_classes)
        # the checkpoint is back in place: only now is a resume accepted, and config.yaml rewritten
        if resume:
            logger.drop_epochs_from(trainer.start_epoch)  # re-run epochs are logged once
        if dist_info.is_main and (not resume or plan.changes):
            save_config(cfg, run_dir / "config.yaml")
        started = True
        result = trainer.fit()
        # every rank finishes before the group is torn down: a gloo rank that destroys it
        # while its peer is still inside the group can abort the peer at exit
        barrier()
        return result
    except BaseException:
        failed = True
        if created and not started and run_dir.is_dir():
            shutil.rmtree(run_dir, ignore_errors=True)  # a failed start leaves no half-made folder
            lock = None
            _remove_empty(new_dirs[1:])  # nor the parents made for it
        raise
    finally:
        if lock is not None:
            lock.release(raise_errors=not failed)  # never in place of the exception on its way
        cleanup_distributed()


def evaluate_checkpoint(cfg: Any, model_name: str, ckpt: str | Path, *, strict: bool = True) -> dict[str, float]:
    """Top-1/top-5/loss of model ``model_name`` with weights ``ckpt`` on ``cfg``'s validation set."""
    from sldistill import models
    from sldistill.data import build_datasets
    from sldistill.data.loaders import build_val_loader

    device = resolve_device(str(cfg.EXPERIMENT.DEVICE))
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before the loaders: pinned memory and workers use the current device
    ckpt = Path(ckpt)
    if not ckpt.is_file():
        hint = ""
        if ckpt.name == BEST and (ckpt.parent / LATEST).is_file():
            hint = (f"; the run has {LATEST} but no {BEST} yet (no epoch finished?): pass --which latest to "
                    "evaluate its latest checkpoint")
        raise FileNotFoundError(f"checkpoint not found: {ckpt}{hint}")
    seed = int(cfg.EXPERIMENT.SEED)
    ds = build_datasets(cfg, seed=seed)  # and no training loader: its batching does not concern evaluation
    val = build_val_loader(cfg, ds, device=device, seed=seed)
    model = models.create(model_name, num_classes=ds.num_classes, dataset=str(cfg.DATASET.TYPE))
    models.load_weights(model, str(ckpt), strict=strict, trust=bool(cfg.DISTILLER.TRUST_CHECKPOINT))
    model.to(device).eval()
    channels_last = bool(cfg.SOLVER.CHANNELS_LAST)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return evaluate(lambda x: model(x)[0], val, device, amp_dtype=amp_dtype(cfg.SOLVER.AMP, device),
                    channels_last=channels_last)
