"""What a run checkpoint holds, and putting it back (the trainer's save and resume).

A checkpoint is a dict of tensors and plain values (it loads with ``weights_only=True``):
``"model"`` (the student's state dict, so it loads wherever a published checkpoint does),
``"distiller"`` (connector modules' state), ``"optimizer"``, ``"scheduler"``, ``"scaler"``,
``"epoch"`` (the last completed epoch), ``"best_acc"``, ``"best_epoch"``, ``"teacher_acc"``,
``"cfg"`` (the resolved config), ``"world_size"`` and ``"rng"``: every rank's generator
states, rank 0's first (each rank continues its own streams after a resume). A checkpoint
written on a stop signal in the middle of an epoch also has ``"interrupted": True``,
``"iteration"`` (batches done), ``"epoch_rng"`` (every rank's states at the epoch start) and
``"meter"`` (every rank's running sums of the epoch's training metrics, see
:meth:`~sldistill.engine.control.EpochMeter.state_dict`), so the resumed epoch reports the
training metrics of an uninterrupted one.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sldistill.engine.checkpoint import capture_rng_state, find_resume_checkpoint, load_checkpoint
from sldistill.engine.control import connector_state
from sldistill.engine.distributed import gather_objects

if TYPE_CHECKING:
    from sldistill.engine.trainer import Trainer

__all__ = ["build_state", "load_resume", "rank_state"]


def build_state(tr: "Trainer", epoch: int, *, interrupted_at: int | None = None,
                epoch_rng: dict | None = None, meter: dict | None = None) -> dict:
    """The checkpoint of trainer ``tr`` after ``epoch``; collective (every rank calls it)."""
    rngs = gather_objects(capture_rng_state())
    state = {
        "model": tr.distiller.student.state_dict(),
        "distiller": connector_state(tr.distiller),
        "optimizer": tr.optimizer.state_dict(),
        "scheduler": tr.scheduler.state_dict(),
        "scaler": tr.scaler.state_dict(),
        "epoch": epoch,
        "best_acc": tr.best_acc,
        "best_epoch": tr.best_epoch,
        "teacher_acc": tr.teacher_acc,
        "rng": rngs,
        "world_size": tr.dist.world_size,
        "cfg": tr.cfg.to_dict() if hasattr(tr.cfg, "to_dict") else dict(tr.cfg),
    }
    if interrupted_at is not None:
        state["interrupted"] = True
        state["iteration"] = interrupted_at
        state["epoch_rng"] = gather_objects(epoch_rng)
        if meter is not None:
            state["meter"] = gather_objects(meter)
    return state


def rank_state(states: Any, rank: int, world_size: int, saved_world: int) -> dict | None:
    """This rank's entry of a per-rank list of states (``None`` when the process count
    changed: the streams then start afresh from the seed and rank). Older checkpoints held
    one dict for all ranks."""
    if isinstance(states, dict) or states is None:
        return states
    if saved_world != world_size or rank >= len(states):
        return None
    return states[rank]


def load_resume(tr: "Trainer") -> dict:
    """Put ``run_dir/latest.pth`` back into trainer ``tr``; returns the checkpoint. Loaded on
    the CPU: ``load_state_dict`` copies into the modules' devices, and generator states must
    be CPU tensors anyway."""
    path = find_resume_checkpoint(tr.run_dir)
    ckpt = load_checkpoint(path, map_location="cpu")
    tr.distiller.student.load_state_dict(ckpt["model"])
    if ckpt.get("distiller"):
        result = tr.distiller.load_state_dict(ckpt["distiller"], strict=False)
        if result.unexpected_keys:
            raise ValueError(f"{path}: connector state has keys this distiller lacks: {result.unexpected_keys[:5]}")
    tr.optimizer.load_state_dict(ckpt["optimizer"])
    tr.scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt.get("scaler"):
        tr.scaler.load_state_dict(ckpt["scaler"])
    tr.best_acc = float(ckpt.get("best_acc", -1.0))
    tr.best_epoch = int(ckpt.get("best_epoch", 0))
    tr.teacher_acc = ckpt.get("teacher_acc")
    tr.start_epoch = int(ckpt["epoch"]) + 1
    saved_world = int(ckpt.get("world_size", 1))
    if saved_world != tr.dist.world_size:
        tr.logger.info(f"note: {path} was written by {saved_world} process(es), this run has "
                       f"{tr.dist.world_size}: the random streams restart from the seed")
    if ckpt.get("interrupted"):
        tr.skip_iters = int(ckpt.get("iteration", 0))
        tr._epoch_rng = rank_state(ckpt.get("epoch_rng"), tr.dist.rank, tr.dist.world_size, saved_world)
        # older checkpoints, or another process count: the epoch's metrics average the iterations after the resume
        tr._resume_meter = rank_state(ckpt.get("meter"), tr.dist.rank, tr.dist.world_size, saved_world)
    tr._resume_rng = rank_state(ckpt.get("rng"), tr.dist.rank, tr.dist.world_size, saved_world)
    where = f"epoch {tr.start_epoch}" + (f", iteration {tr.skip_iters + 1}" if tr.skip_iters else "")
    best = f"{tr.best_acc:.2f}" if tr.best_acc >= 0 else "none yet"  # -1: no epoch finished yet
    tr.logger.info(f"resumed from {path}: continuing at {where} (best top-1 so far {best})")
    return ckpt
