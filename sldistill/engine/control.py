"""What the trainer reports and obeys: stop signals, results, errors, precision, small helpers."""
from __future__ import annotations

import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

__all__ = ["NonFiniteLossError", "StopFlag", "STOP", "install_signal_handlers", "amp_dtype", "connector_state",
           "TrainResult", "unwrap", "EpochMeter", "short_name", "teacher_warnings"]


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or infinite; ``epoch``, ``iteration`` (1-based) and ``term`` say where."""

    def __init__(self, epoch: int, iteration: int, term: str, value: float) -> None:
        self.epoch, self.iteration, self.term, self.value = epoch, iteration, term, value
        super().__init__(f"non-finite loss: term {term!r} became NaN or infinite at epoch {epoch}, iteration "
                         f"{iteration}; stopped, the checkpoints on disk are from the last completed epoch")


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


class EpochMeter:
    """Running sums of one epoch's loss terms, total, top-1 hits and images, kept on the device
    (no host synchronisation per step), and the first iteration where each term was not finite.

    Terms may appear during an epoch only at its start (a term that switches on at a later
    epoch); a term that disappears within an epoch is an error."""

    def __init__(self, device: torch.device) -> None:
        self.names: list[str] = []
        self.sums = torch.zeros(0, dtype=torch.float64, device=device)
        self.first_bad = torch.zeros(0, dtype=torch.long, device=device)
        self.stats = torch.zeros(3, dtype=torch.float64, device=device)  # total, correct@1, n
        self.steps = 0  # iterations summed

    def add(self, iteration: int, terms: dict[str, Tensor], total: Tensor, correct: Tensor, n: int) -> None:
        if list(terms) != self.names:
            self._grow(list(terms))
        vec = torch.stack([terms[k].detach().double() for k in self.names])
        bad = ~torch.isfinite(vec)
        self.first_bad = torch.where(bad & (self.first_bad < 0), torch.full_like(self.first_bad, iteration),
                                     self.first_bad)
        self.sums += vec
        self.stats[0] += total.detach().double()
        self.stats[1] += correct
        self.stats[2] += n
        self.steps += 1

    def _grow(self, new: list[str]) -> None:
        names = list(self.names) + [k for k in new if k not in self.names]
        if set(new) != set(names):
            missing = [k for k in names if k not in new]
            raise ValueError(f"the distiller's loss terms changed within an epoch (missing {missing}); "
                             "terms may only be added, at epoch boundaries")
        extra = len(names) - len(self.names)
        self.sums = torch.cat([self.sums, self.sums.new_zeros(extra)])
        self.first_bad = torch.cat([self.first_bad, self.first_bad.new_full((extra,), -1)])
        self.names = names

    def check_finite(self, epoch: int, reduce_min: Callable[[Tensor], Tensor] | None = None) -> None:
        """Raise :class:`NonFiniteLossError` for the earliest non-finite term. ``reduce_min``
        (under DDP: a MIN all-reduce) makes every rank see the earliest over all ranks, so all
        stop together with the same message; every rank must call this at the same points."""
        big = torch.iinfo(torch.long).max
        fb = torch.where(self.first_bad < 0, torch.full_like(self.first_bad, big), self.first_bad)
        if reduce_min is not None:
            fb = reduce_min(fb.clone())
        hits = [(it, k) for it, k in zip(fb.tolist(), self.names) if it != big]
        if hits:
            it, name = min(hits)
            raise NonFiniteLossError(epoch, it, name, float("nan"))

    def averages(self) -> list[float]:
        """Each term's mean over the iterations summed."""
        return (self.sums / max(1, self.steps)).tolist()

    def state_dict(self) -> dict[str, Any]:
        """The sums so far, as CPU tensors and plain values (a mid-epoch checkpoint holds them,
        so the resumed epoch reports the same averages as an uninterrupted one)."""
        return {"names": list(self.names), "sums": self.sums.to("cpu", copy=True),
                "stats": self.stats.to("cpu", copy=True), "first_bad": self.first_bad.to("cpu", copy=True),
                "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` output."""
        device = self.stats.device
        self.names = list(state["names"])
        self.sums = state["sums"].to(device, torch.float64)
        self.stats = state["stats"].to(device, torch.float64)
        self.first_bad = state["first_bad"].to(device, torch.long)
        self.steps = int(state["steps"])


def teacher_warnings(cfg: Any, acc: float | None, num_classes: int | None) -> list[str]:
    """Warnings about a teacher whose top-1 suggests a wrong checkpoint or data: near chance
    (below twice the chance rate), or more than 2 points below its published top-1."""
    if acc is None:
        return []
    name = str(cfg.DISTILLER.TEACHER)
    out = []
    if num_classes and acc < 2 * 100.0 / num_classes:
        out.append(f"warning: teacher {name} is near chance on this validation set (top-1 {acc:.2f}, chance "
                   f"{100.0 / num_classes:.2f}): a wrong checkpoint, class order or normalisation?")
    from sldistill.models import CIFAR_TEACHERS

    published = CIFAR_TEACHERS.get(name)
    if published is not None and str(cfg.DATASET.TYPE) == "cifar100" and not str(cfg.DISTILLER.TEACHER_CKPT) \
            and int(cfg.DATASET.TRAIN_SUBSET) == 0 and acc < published.top1 - 2.0:
        out.append(f"warning: teacher {name} reaches top-1 {acc:.2f}, more than 2 points below its published "
                   f"{published.top1:.2f}: check the checkpoint file and the data")
    return out
