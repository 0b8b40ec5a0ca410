"""Run checkpoints: atomic writes, RNG state capture/restore, file names in a run folder.

A run folder holds (all written by rank 0 only):

- ``latest.pth``: the state after the most recent finished epoch (or the interrupt point,
  see below); ``--resume`` reads it;
- ``best.pth``: the state at the epoch with the best validation top-1 (ties: the later one);
- ``epoch_N.pth``: every ``LOG.SAVE_CHECKPOINT_FREQ`` epochs.

Each is a dict: ``"model"`` (the student's state dict, loadable wherever a published
checkpoint is), ``"distiller"`` (connector modules' state), ``"optimizer"``, ``"scheduler"``,
``"scaler"``, ``"epoch"`` (the last completed epoch), ``"best_acc"``, ``"best_epoch"``,
``"rng"`` and ``"cfg"`` (a plain dict). A checkpoint written on SIGINT/SIGTERM in the middle
of an epoch also has ``"interrupted": True`` and holds the state of the last completed epoch
boundary's *weights updated so far*; see the trainer for how resuming treats it.

Writes are atomic: the object is written to a temporary file in the same folder, flushed and
``fsync``-ed, then renamed over the target, so a crash leaves either the old or the new file.
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "atomic_save",
    "load_checkpoint",
    "capture_rng_state",
    "restore_rng_state",
    "LATEST",
    "BEST",
    "epoch_name",
    "find_resume_checkpoint",
]

LATEST = "latest.pth"
BEST = "best.pth"


def epoch_name(epoch: int) -> str:
    """File name of the periodic checkpoint written after ``epoch``."""
    return f"epoch_{int(epoch)}.pth"


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` ``obj`` to ``path`` atomically (temp file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(str(path.parent), os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a run checkpoint (or any ``torch.save``-d dict) onto ``map_location``.

    Raises ``FileNotFoundError`` naming the path when it does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    obj = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(obj, dict):
        raise ValueError(f"{path} does not hold a checkpoint dict (got {type(obj).__name__})")
    return obj


def capture_rng_state() -> dict:
    """The state of Python's, NumPy's and torch's (CPU and every CUDA device) generators."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict | None) -> None:
    """Restore generators from :func:`capture_rng_state` output (missing parts are skipped)."""
    if not state:
        return
    if "python" in state:
        random.setstate(state["python"])
    if "numpy" in state:
        np.random.set_state(state["numpy"])
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu() if hasattr(state["torch"], "cpu") else state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def find_resume_checkpoint(run_dir: str | os.PathLike) -> Path:
    """The checkpoint ``--resume`` continues from: ``run_dir/latest.pth``.

    Raises ``FileNotFoundError`` naming the folder and what it holds when there is none.
    """
    run_dir = Path(run_dir)
    latest = run_dir / LATEST
    if latest.is_file():
        return latest
    have = sorted(p.name for p in run_dir.glob("*.pth")) if run_dir.is_dir() else []
    found = f" (found: {', '.join(have)})" if have else " (folder empty or missing)"
    raise FileNotFoundError(f"--resume: no {LATEST} in {run_dir}{found}")
