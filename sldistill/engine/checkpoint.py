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
A failed write (a full disk, ...) raises ``OSError`` naming the file and the cause, and leaves
the old file and no temporary file behind. The file gets a new file's usual permissions
(``0666`` less the umask).
"""
from __future__ import annotations

import contextlib
import errno
import os
import random
import secrets
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
    """``torch.save`` ``obj`` to ``path`` atomically (temp file, fsync, rename).

    Raises ``OSError`` (``filename`` is ``path``) when the file cannot be written; the previous
    file at ``path``, if any, is then unchanged."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        # created as open() creates files (0666 less the umask), not private like mkstemp's
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if _is_write_failure(exc):
            raise _write_error(path, exc) from exc
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


# torch's zip writer reports a failed write (a full disk) as a RuntimeError with one of these in
# its message; other RuntimeErrors (an object that cannot be pickled) are passed on as they are
_TORCH_WRITE_FAILURES = ("inline_container", "PytorchStreamWriter", "file write failed", "No space left on device",
                         "Disk quota exceeded")


def _is_write_failure(exc: BaseException) -> bool:
    return isinstance(exc, OSError) or (isinstance(exc, RuntimeError)
                                        and any(m in str(exc) for m in _TORCH_WRITE_FAILURES))


def _write_error(path: Path, exc: BaseException) -> OSError:
    """An ``OSError`` naming ``path`` and why writing it failed (what the CLI reports in one line)."""
    cause = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
    if isinstance(exc, OSError) and exc.errno:
        code = exc.errno
    else:
        code = errno.ENOSPC if "No space left on device" in cause else errno.EIO
    return OSError(code, f"cannot write the checkpoint: {cause} (the previous {path.name}, if any, is unchanged)",
                   str(path))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a run checkpoint onto ``map_location`` (the CPU by default).

    Run checkpoints hold only tensors and plain Python values, so they load with
    ``torch.load(path, weights_only=True)`` (no code is unpickled); this does exactly that.
    Raises ``FileNotFoundError`` naming the path when it does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    obj = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(obj, dict):
        raise ValueError(f"{path} does not hold a checkpoint dict (got {type(obj).__name__})")
    return obj


def capture_rng_state() -> dict:
    """This process's generator states (Python, NumPy, torch CPU and every CUDA device), as
    tensors and plain values only, so that a checkpoint holding them loads with
    ``weights_only=True``. CUDA states are CPU byte tensors, as ``torch.cuda`` returns them."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": [version, torch.tensor(internal, dtype=torch.int64), gauss],
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [t.cpu() for t in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict | None) -> None:
    """Restore generators from :func:`capture_rng_state` output (missing parts are skipped).

    Every tensor is brought to the CPU first (``torch.cuda.set_rng_state`` wants CPU byte
    tensors), so states loaded with any ``map_location`` are accepted."""
    if not state:
        return
    if "python" in state:
        version, internal, gauss = state["python"]
        internal = tuple(int(x) for x in (internal.tolist() if hasattr(internal, "tolist") else internal))
        random.setstate((int(version), internal, gauss))
    if "numpy" in state:
        st = state["numpy"]
        if isinstance(st, dict):
            key = st["key"].cpu().numpy() if hasattr(st["key"], "cpu") else np.asarray(st["key"])
            np.random.set_state({"bit_generator": "MT19937", "state": {"key": key.astype(np.uint32),
                                 "pos": int(st["pos"])}, "has_gauss": int(st["has_gauss"]),
                                 "gauss": float(st["gauss"])})
        else:  # the legacy tuple of older checkpoints
            np.random.set_state(st)
    if "torch" in state:
        torch.set_rng_state(_cpu_bytes(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = [_cpu_bytes(t) for t in state["cuda"]]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def _cpu_bytes(t: Any) -> torch.Tensor:
    t = t if isinstance(t, torch.Tensor) else torch.as_tensor(t)
    return t.detach().to("cpu", torch.uint8)


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
