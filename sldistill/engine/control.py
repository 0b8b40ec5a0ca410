"""What the trainer reports and obeys: stop signals, results, errors, precision, small helpers."""
from __future__ import annotations

import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

__all__ = ["NonFiniteLossError", "StopFlag", "STOP", "install_signal_handlers", "amp_dtype", "connector_state",
           "TrainResult", "unwrap", "grow_terms", "short_name"]


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or infinite; ``epoch``, ``iteration`` (1-based) and ``term`` say where."""

    def __init__(self, epoch: int, iteration: int, term: str, value: float) -> None:
        self.epoch, self.iteration, self.term, self.value = epoch, iteration, term, value
        super().__init__(f"non-finite loss: term {term!r} = {value} at epoch {epoch}, iteration {iteration}; "
                         "stopped, the checkpoints on disk are from the last completed epoch")


class StopFlag:
    """Set by SIGINT/SIGTERM; the trainer checks it between iterations."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def set(self, signum: int) -> None:
        """Record a stop request."""
        self.signum = signum

    def clear(self) -> None:
        """Forget any stop request."""
        self.signum = None

    def __bool__(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        """``SIGTERM`` / ``SIGINT`` / ``''``."""
        return signal.Signals(self.signum).name if self.signum is not None else ""


STOP = StopFlag()


def install_signal_handlers(flag: StopFlag = STOP) -> Callable[[], None]:
    """Route SIGINT and SIGTERM to ``flag`` (a second SIGINT raises KeyboardInterrupt).

    Returns a function restoring the previous handlers. Only works in the main thread; in
    other threads it installs nothing.
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and flag.signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag.set(signum)

    for s in previous:
        signal.signal(s, handler)

    def restore() -> None:
        for s, h in previous.items():
            signal.signal(s, h)

    return restore


def amp_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """``SOLVER.AMP`` -> autocast dtype (``None`` for ``none``). fp16 needs CUDA."""
    n = str(name or "none").lower()
    if n in ("none", "fp32", "false", ""):
        return None
    if n == "bf16":
        return torch.bfloat16
    if n == "fp16":
        if device.type != "cuda":
            raise ValueError(f"SOLVER.AMP 'fp16' needs a CUDA device (running on {device}); use 'bf16' or 'none' "
                             "on CPU")
        return torch.float16
    raise ValueError(f"SOLVER.AMP {name!r} is not valid; valid: none, bf16, fp16")


def connector_state(distiller: nn.Module) -> dict[str, Tensor]:
    """The distiller's state dict minus ``student.`` and ``teacher.`` entries (connectors)."""
    return {k: v for k, v in distiller.state_dict().items() if not k.startswith(("student.", "teacher."))}


@dataclass
class TrainResult:
    """What a run ended with. ``status``: ``finished``, ``interrupted`` or ``stopped``
    (``stop_after_epoch`` reached). Accuracies are top-1 percentages."""

    status: str
    best_acc: float
    best_epoch: int
    last_acc: float
    last_epoch: int
    teacher_acc: float | None = None
    run_dir: Path | None = None
    history: list[dict] = field(default_factory=list)
    signal_name: str = ""


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def short_name(name: str) -> str:
    return name[5:] if name.startswith("loss_") else name


def grow_terms(names: list[str], sums: Tensor, first_bad: Tensor, new: list[str]) -> tuple[list[str], Tensor, Tensor]:
    """Extend the running per-term sums when the set of term names changes (e.g. a term that
    switches on at a later epoch); existing entries keep their position."""
    out_names = list(names)
    for n in new:
        if n not in out_names:
            out_names.append(n)
    if len(out_names) == len(names) and set(new) == set(names):
        return names, sums, first_bad
    extra = len(out_names) - len(names)
    sums = torch.cat([sums, sums.new_zeros(extra)])
    first_bad = torch.cat([first_bad, first_bad.new_full((extra,), -1)])
    if set(new) != set(out_names):
        missing = [n for n in out_names if n not in new]
        raise ValueError(f"the distiller's loss terms changed within an epoch (missing {missing}); "
                         "terms may only be added, at epoch boundaries")
    return out_names, sums, first_bad
