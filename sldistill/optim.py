"""Optimizers and learning-rate schedules built from the ``SOLVER`` section of a config.

- :func:`build_optimizer`: ``SOLVER.TYPE`` ``SGD`` (``LR``, ``MOMENTUM``, ``WEIGHT_DECAY``,
  ``NESTEROV``); with ``SOLVER.TYPE`` ``DOT`` the distillation-oriented
  trainer :class:`DOT` instead.
- :func:`build_scheduler`: a per-iteration schedule, :class:`LRSchedule`. ``SOLVER.SCHEDULER``
  ``step`` is the published rule: the rate is ``LR * LR_DECAY_RATE ** k`` where ``k`` counts
  the stages in ``LR_DECAY_STAGES`` that the current epoch (counted from 1) is *greater*
  than, so with stages ``[150, 180, 210]`` epoch 151 is the first one at the decayed rate.
  ``cosine`` anneals from ``LR`` to 0 over the run. ``SOLVER.WARMUP_EPOCHS`` adds a linear
  warm-up over that many epochs (per iteration) in front of either.

DOT (Zhao et al., "DOT: A Distillation-Oriented Trainer", ICCV 2023) keeps two momentum
buffers per parameter: one for the gradient of the task (cross-entropy) loss, with momentum
``MOMENTUM - DELTA``, and one for the gradient of the distillation loss, with momentum
``MOMENTUM + DELTA``. Parameters that only one of the two losses reaches use plain
``MOMENTUM`` for it. Weight decay joins the task gradient (or the distillation gradient for
parameters the task loss does not reach). The trainer calls :meth:`DOT.step_terms` in place
of ``backward`` + ``step``.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import Tensor, nn

__all__ = [
    "build_optimizer",
    "build_scheduler",
    "LRSchedule",
    "DOT",
    "split_terms",
    "SUPPORTED_OPTIMIZERS",
    "SUPPORTED_SCHEDULERS",
]

SUPPORTED_OPTIMIZERS = ("SGD", "DOT")
SUPPORTED_SCHEDULERS = ("step", "cosine")
def _solver_get(solver: Any, key: str, default: Any) -> Any:
    try:
        return solver[key]
    except (KeyError, TypeError):
        return default


def build_optimizer(cfg: Any, params: Iterable[nn.Parameter] | Iterable[dict]) -> torch.optim.Optimizer:
    """The optimizer named by ``cfg.SOLVER.TYPE`` over ``params``.

    ``SGD`` (published) or ``DOT`` (momenta ``MOMENTUM -/+ SOLVER.DOT.DELTA``; the published
    ``SOLVER.TRAINER`` ``dot`` / ``crd_dot`` set it when the config is loaded). Any other
    ``SOLVER.TYPE`` raises ``ValueError``.
    """
    s = cfg.SOLVER
    opt_type = str(s.TYPE).upper()
    if opt_type not in SUPPORTED_OPTIMIZERS:
        raise ValueError(f"SOLVER.TYPE {opt_type!r} is not supported; valid: {', '.join(SUPPORTED_OPTIMIZERS)}")
    lr = float(s.LR)
    momentum = float(s.MOMENTUM)
    wd = float(s.WEIGHT_DECAY)
    nesterov = bool(_solver_get(s, "NESTEROV", False))
    if opt_type == "DOT":
        if nesterov:
            raise ValueError("SOLVER.NESTEROV is not available with SOLVER.TYPE DOT; set SOLVER.NESTEROV false")
        delta = float(_solver_get(_solver_get(s, "DOT", {}), "DELTA", 0.075))
        return DOT(params, lr=lr, momentum=momentum, delta=delta, weight_decay=wd)
    if nesterov and momentum <= 0:
        raise ValueError(f"SOLVER.NESTEROV needs SOLVER.MOMENTUM > 0 (got {momentum})")
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=wd, nesterov=nesterov)


class LRSchedule:
    """A per-iteration learning-rate schedule (step decay or cosine, optional linear warm-up).

    The rate for the ``t``-th optimizer step (``t`` from 0; epoch ``t // steps_per_epoch + 1``)
    is ``base_lr * factor(t)``. The constructor sets the rate of step 0; call :meth:`step`
    after every optimizer step. Its state (the step counter) goes into run checkpoints.

    Args:
        optimizer: the optimizer whose param groups receive the rate.
        steps_per_epoch: optimizer steps per epoch (the train loader's length).
        epochs: total epochs of the run.
        kind: ``"step"`` or ``"cosine"``.
        decay_stages: epochs after which the step schedule decays (published semantics:
            epoch > stage).
        decay_rate: multiplier per passed stage.
        warmup_epochs: length of the linear warm-up, in epochs (may be fractional); 0 = none.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int,
                 kind: str = "step", decay_stages: Iterable[int] = (), decay_rate: float = 0.1,
                 warmup_epochs: float = 0.0) -> None:
        if kind not in SUPPORTED_SCHEDULERS:
            raise ValueError(f"SOLVER.SCHEDULER {kind!r} is not supported; valid: {', '.join(SUPPORTED_SCHEDULERS)}")
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1 (got {steps_per_epoch}); is the train loader empty?")
        if warmup_epochs < 0:
            raise ValueError(f"SOLVER.WARMUP_EPOCHS must be >= 0 (got {warmup_epochs})")
        self.optimizer = optimizer
        self.steps_per_epoch = int(steps_per_epoch)
        self.epochs = int(epochs)
        self.kind = kind
        self.decay_stages = sorted(int(x) for x in decay_stages)
        self.decay_rate = float(decay_rate)
        self.warmup_steps = int(round(float(warmup_epochs) * self.steps_per_epoch))
        self.total_steps = max(1, self.epochs * self.steps_per_epoch)
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        self.last_step = 0
        self._apply()

    def factor(self, t: int) -> float:
        """The multiplier of the base rate at optimizer step ``t`` (0-based)."""
        epoch = t // self.steps_per_epoch + 1
        if self.kind == "step":
            f = self.decay_rate ** sum(1 for s in self.decay_stages if epoch > s)
        else:
            span = max(1, self.total_steps - self.warmup_steps)
            progress = min(1.0, max(0.0, (t - self.warmup_steps) / span))
            f = 0.5 * (1.0 + math.cos(math.pi * progress))
        if t < self.warmup_steps:
            f *= (t + 1) / self.warmup_steps
        return f

    def _apply(self) -> None:
        f = self.factor(self.last_step)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * f

    def step(self) -> None:
        """Advance one optimizer step and set the rate for the next one."""
        self.last_step += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        """The rates currently set in the optimizer's param groups."""
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        """Checkpointable state."""
        return {"last_step": self.last_step, "kind": self.kind, "steps_per_epoch": self.steps_per_epoch,
                "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict` and set the rate accordingly."""
        self.last_step = int(state["last_step"])
        if "base_lrs" in state:
            self.base_lrs = list(state["base_lrs"])
        self._apply()


def build_scheduler(cfg: Any, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> LRSchedule:
    """The :class:`LRSchedule` described by ``cfg.SOLVER`` (``SCHEDULER``, ``LR_DECAY_STAGES``,
    ``LR_DECAY_RATE``, ``WARMUP_EPOCHS``, ``EPOCHS``)."""
    s = cfg.SOLVER
    kind = str(_solver_get(s, "SCHEDULER", "step")).lower()
    return LRSchedule(optimizer, steps_per_epoch, int(s.EPOCHS), kind=kind,
                      decay_stages=list(_solver_get(s, "LR_DECAY_STAGES", []) or []),
                      decay_rate=float(_solver_get(s, "LR_DECAY_RATE", 0.1)),
                      warmup_epochs=float(_solver_get(s, "WARMUP_EPOCHS", 0) or 0))


def split_terms(terms: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Split loss terms into (task, distillation) sums for DOT.

    Task terms are those named ``loss_ce`` or ``loss_ce_*`` (cross-entropy on the labels);
    every other term is a distillation term. Raises ``ValueError`` if either side is empty.
    """
    ce = [v for k, v in terms.items() if k == "loss_ce" or k.startswith("loss_ce_")]
    kd = [v for k, v in terms.items() if not (k == "loss_ce" or k.startswith("loss_ce_"))]
    if not ce or not kd:
        raise ValueError("the DOT trainer needs a cross-entropy term ('loss_ce') and at least one "
                         f"distillation term; this distiller returns {sorted(terms)}")
    return torch.stack([t.float() for t in ce]).sum(), torch.stack([t.float() for t in kd]).sum()


class DOT(torch.optim.Optimizer):
    """Distillation-oriented trainer: SGD with separate momenta for task and KD gradients.

    Args:
        params: parameters or param groups.
        lr: learning rate.
        momentum: the base momentum ``m``; the task buffer uses ``m - delta``, the
            distillation buffer ``m + delta``, a parameter reached by one loss only uses ``m``.
        delta: the momentum offset (published default 0.075).
        weight_decay: L2 penalty, added to the task gradient (or to the distillation gradient
            of parameters the task loss does not reach).

    Use :meth:`step_terms` (it runs both backward passes); :meth:`step` alone treats the
    current gradients as task gradients with no distillation gradient.
    """

    def __init__(self, params: Iterable[Any], lr: float, momentum: float = 0.9, delta: float = 0.075,
                 weight_decay: float = 0.0) -> None:
        if lr < 0:
            raise ValueError(f"invalid learning rate {lr}; must be >= 0")
        if momentum - delta < 0:
            raise ValueError(f"invalid DOT momenta: MOMENTUM {momentum} - DELTA {delta} < 0")
        if weight_decay < 0:
            raise ValueError(f"invalid weight_decay {weight_decay}; must be >= 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, delta=delta, weight_decay=weight_decay))
        self._kd_grads: dict[nn.Parameter, Tensor] | None = None

    @torch.no_grad()
    def _capture_kd(self) -> None:
        self._kd_grads = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._kd_grads[p] = p.grad.detach().clone()

    def step_terms(self, task_loss: Tensor, kd_loss: Tensor,
                   grad_sync: Callable[[Iterable[nn.Parameter]], None] | None = None) -> None:
        """Backward both losses and update the parameters.

        Args:
            task_loss: the cross-entropy (task) loss, a scalar.
            kd_loss: the distillation loss, a scalar (same graph; its backward retains it).
            grad_sync: called with the parameters after each backward pass (e.g. a DDP
                gradient all-reduce when the forward ran under ``no_sync``).
        """
        params = [p for g in self.param_groups for p in g["params"]]
        self.zero_grad(set_to_none=True)
        kd_loss.backward(retain_graph=True)
        if grad_sync is not None:
            grad_sync(params)
        self._capture_kd()
        self.zero_grad(set_to_none=True)
        task_loss.backward()
        if grad_sync is not None:
            grad_sync(params)
        self.step()

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        """Apply one update from the current (task) gradients and the captured KD gradients."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        kd_grads = self._kd_grads or {}
        for group in self.param_groups:
            lr, m, d, wd = group["lr"], group["momentum"], group["delta"], group["weight_decay"]
            for p in group["params"]:
                g_task = p.grad
                g_kd = kd_grads.get(p)
                if g_task is None and g_kd is None:
                    continue
                state = self.state[p]
                update = None
                if g_task is not None:
                    g = g_task.add(p, alpha=wd) if wd else g_task
                    mom = m - d if g_kd is not None else m
                    buf = state.get("task_buffer")
                    if buf is None:
                        buf = state["task_buffer"] = g.detach().clone()
                    else:
                        buf.mul_(mom).add_(g)
                    update = buf.clone()
                if g_kd is not None:
                    if g_task is None:
                        g = g_kd.add(p, alpha=wd) if wd else g_kd
                        mom = m
                    else:
                        g, mom = g_kd, m + d
                    buf = state.get("kd_buffer")
                    if buf is None:
                        buf = state["kd_buffer"] = g.detach().clone()
                    else:
                        buf.mul_(mom).add_(g)
                    update = buf.clone() if update is None else update.add_(buf)
                p.add_(update, alpha=-lr)
        self._kd_grads = None
        return loss
