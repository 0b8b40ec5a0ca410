"""Logit distillers: ``NONE``, ``KD``, ``DKD``, ``MLKD`` (alias ``KD_ours``) and ``SLD``.

Each reads its hyper-parameters from the config section the published YAML files use and
calls one pure loss of :mod:`sldistill.losses`:

========  =====  ==============================================================================
TYPE      views  config keys
========  =====  ==============================================================================
NONE      1      -- (cross-entropy only; no teacher needed)
KD        1      ``KD.TEMPERATURE``, ``KD.LOSS.CE_WEIGHT``, ``KD.LOSS.KD_WEIGHT``
DKD       1      ``DKD.CE_WEIGHT``, ``DKD.ALPHA``, ``DKD.BETA``, ``DKD.T``, ``DKD.WARMUP``
MLKD      2      ``KD.TEMPERATURE``, ``KD.LOSS.*``, ``MLKD.CLEAN``
SLD       2      ``KD.LOSS.CE_WEIGHT``, ``KD.LOSS.KD_WEIGHT``, ``SLD.TEMPERATURES``,
                 ``SLD.GAMMA``, ``SLD.GAMMA_FRACTION``, ``SLD.DETACH_PSEUDO_TEACHER``,
                 ``SLD.TEACHER_PROCESSOR``, ``SLD.STUDENT_PROCESSOR``
========  =====  ==============================================================================

Logit processing for KD, DKD and MLKD comes from ``DISTILLER.LOGIT_PROCESSOR``
(``none`` | ``sort`` | ``swap`` | ``zscore``; sort/swap act on the teacher, zscore on both)
and from the published ``EXPERIMENT.LOGIT_STAND``: ``True`` means ``zscore``. The rule:
``LOGIT_STAND: True`` with ``LOGIT_PROCESSOR`` ``none`` or ``zscore`` gives ``zscore``; with
``sort`` or ``swap`` it is a contradiction and raises ``ValueError``. SLD has its own
processor keys (``SLD.TEACHER_PROCESSOR`` / ``SLD.STUDENT_PROCESSOR``) and rejects
``DISTILLER.LOGIT_PROCESSOR`` / ``EXPERIMENT.LOGIT_STAND`` other than the defaults.

DKD's term is scaled by ``min(epoch / DKD.WARMUP, 1)`` as released (epochs count from 1).
``SLD.GAMMA_FRACTION > 0`` replaces ``SLD.GAMMA`` by ``round(GAMMA_FRACTION * SOLVER.EPOCHS)``
(for shortened schedules; the release keeps 150 whatever the run length).

Two-view distillers (MLKD, SLD) run the teacher once over both views concatenated and the
student per view (or fused, with ``SOLVER.FUSE_STUDENT_VIEWS``), and return the weak view's
student logits.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from sldistill import losses
from sldistill.distillers.base import Distiller, LossTerms, register
from sldistill.logits import PROCESSORS
from sldistill._cfg import cfg_get

__all__ = ["Vanilla", "KD", "DKD", "MLKD", "SLD", "resolve_logit_processor"]

def _valid_processor(name: Any, key: str) -> str:
    if not isinstance(name, str) or name.lower() not in PROCESSORS:
        raise ValueError(f"{key} must be one of {', '.join(sorted(PROCESSORS))}; got {name!r}")
    return name.lower()


def resolve_logit_processor(cfg: Any) -> str:
    """The logit processor for KD/DKD/MLKD from ``DISTILLER.LOGIT_PROCESSOR`` and
    ``EXPERIMENT.LOGIT_STAND`` (see the module docstring for the rule)."""
    name = _valid_processor(cfg_get(cfg, "DISTILLER.LOGIT_PROCESSOR", "none"), "DISTILLER.LOGIT_PROCESSOR")
    if bool(cfg_get(cfg, "EXPERIMENT.LOGIT_STAND", False)):
        if name not in ("none", "zscore"):
            raise ValueError(
                f"EXPERIMENT.LOGIT_STAND: True means DISTILLER.LOGIT_PROCESSOR 'zscore', but "
                f"DISTILLER.LOGIT_PROCESSOR is {name!r}; set one of them consistently"
            )
        name = "zscore"
    return name


def _check_views(views: Sequence[Tensor], n: int, who: str) -> None:
    if not isinstance(views, (list, tuple)) or len(views) < n:
        got = len(views) if isinstance(views, (list, tuple)) else type(views).__name__
        raise ValueError(f"{who} needs a list of {n} view(s) [weak, strong][:n]; got {got}")


@register("NONE")
class Vanilla(Distiller):
    """Student alone: ``loss_ce = CE(student(x), y)``; the teacher (may be ``None``) is unused."""

    num_views = 1

    def forward_train(self, views: Sequence[Tensor], target: Tensor, epoch: int, **extras: Any) -> tuple[Tensor, LossTerms]:
        """Return the student's logits and ``{"loss_ce"}``."""
        _check_views(views, 1, "NONE")
        logits, _ = self.student(views[0])
        return logits, {"loss_ce": F.cross_entropy(logits, target)}


@register("KD")
class KD(Distiller):
    """Vanilla KD: ``CE_WEIGHT * CE + KD_WEIGHT * T^2 * KL`` (:func:`sldistill.losses.kd`)."""

    num_views = 1

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Any) -> None:
        super().__init__(student, teacher, cfg)
        self.temperature = float(cfg_get(cfg, "KD.TEMPERATURE", 4.0))
        self.ce_weight = float(cfg_get(cfg, "KD.LOSS.CE_WEIGHT", 0.1))
        self.kd_weight = float(cfg_get(cfg, "KD.LOSS.KD_WEIGHT", 0.9))
        self.processor = resolve_logit_processor(cfg)

    def forward_train(self, views: Sequence[Tensor], target: Tensor, epoch: int, **extras: Any) -> tuple[Tensor, LossTerms]:
        """Return the student's logits and ``{"loss_ce", "loss_kd"}``."""
        _check_views(views, 1, "KD")
        logits, _ = self.student(views[0])
        (teacher_logits, _), = self.teacher_forward(views[:1], features=False)
        loss_kd = losses.kd(logits, teacher_logits, self.temperature, target=target, processor=self.processor)
        return logits, {
            "loss_ce": self.ce_weight * F.cross_entropy(logits, target),
            "loss_kd": self.kd_weight * loss_kd,
        }


@register("DKD")
class DKD(Distiller):
    """Decoupled KD: ``CE_WEIGHT * CE + min(epoch / WARMUP, 1) * (ALPHA * TCKD + BETA * NCKD)``."""

    num_views = 1

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Any) -> None:
        super().__init__(student, teacher, cfg)
        self.ce_weight = float(cfg_get(cfg, "DKD.CE_WEIGHT", 1.0))
        self.alpha = float(cfg_get(cfg, "DKD.ALPHA", 1.0))
        self.beta = float(cfg_get(cfg, "DKD.BETA", 8.0))
        self.temperature = float(cfg_get(cfg, "DKD.T", 4.0))
        self.warmup = float(cfg_get(cfg, "DKD.WARMUP", 20))
        self.processor = resolve_logit_processor(cfg)

    def forward_train(self, views: Sequence[Tensor], target: Tensor, epoch: int, **extras: Any) -> tuple[Tensor, LossTerms]:
        """Return the student's logits and ``{"loss_ce", "loss_kd"}`` (warm-up applied)."""
        _check_views(views, 1, "DKD")
        logits, _ = self.student(views[0])
        (teacher_logits, _), = self.teacher_forward(views[:1], features=False)
        factor = min(epoch / self.warmup, 1.0) if self.warmup > 0 else 1.0
        loss_dkd = losses.dkd(
            logits, teacher_logits, target, self.alpha, self.beta, self.temperature, processor=self.processor
        )
        return logits, {
            "loss_ce": self.ce_weight * F.cross_entropy(logits, target),
            "loss_kd": factor * loss_dkd,
        }


@register("MLKD", "KD_ours")
class MLKD(Distiller):
    """Multi-level logit distillation on weak/strong views (:func:`sldistill.losses.mlkd`).

    ``MLKD.CLEAN: False`` (default) is the released computation; ``True`` the corrected one.
    """

    num_views = 2

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Any) -> None:
        super().__init__(student, teacher, cfg)
        self.temperature = float(cfg_get(cfg, "KD.TEMPERATURE", 4.0))
        self.ce_weight = float(cfg_get(cfg, "KD.LOSS.CE_WEIGHT", 0.1))
        self.kd_weight = float(cfg_get(cfg, "KD.LOSS.KD_WEIGHT", 0.9))
        self.clean = bool(cfg_get(cfg, "MLKD.CLEAN", False))
        self.processor = resolve_logit_processor(cfg)
        self.fuse = bool(cfg_get(cfg, "SOLVER.FUSE_STUDENT_VIEWS", False))

    def forward_train(self, views: Sequence[Tensor], target: Tensor, epoch: int, **extras: Any) -> tuple[Tensor, LossTerms]:
        """Return the weak view's student logits and ``{"loss_ce", "loss_kd", "loss_cc", "loss_bc"}``."""
        _check_views(views, 2, "MLKD")
        (t_weak, _), (t_strong, _) = self.teacher_forward(views[:2], features=False)
        (s_weak, _), (s_strong, _) = self.student_forward(views[:2], fuse=self.fuse)
        terms = losses.mlkd(
            s_weak, s_strong, t_weak, t_strong, target,
            temperature=self.temperature, ce_weight=self.ce_weight, kd_weight=self.kd_weight,
            processor=self.processor, clean=self.clean,
        )
        return s_weak, terms


@register("SLD")
class SLD(Distiller):
    """Swapped Logit Distillation on weak/strong views (:func:`sldistill.losses.sld`)."""

    num_views = 2

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Any) -> None:
        super().__init__(student, teacher, cfg)
        self.ce_weight = float(cfg_get(cfg, "KD.LOSS.CE_WEIGHT", 0.1))
        self.kd_weight = float(cfg_get(cfg, "KD.LOSS.KD_WEIGHT", 0.9))
        temps = cfg_get(cfg, "SLD.TEMPERATURES", [1, 2, 3, 4, 5, 6])
        if isinstance(temps, (int, float)):
            temps = [temps]
        self.temperatures = tuple(float(t) for t in temps)
        if not self.temperatures or any(t <= 0 for t in self.temperatures):
            raise ValueError(f"SLD.TEMPERATURES must be a non-empty list of positive numbers; got {temps!r}")
        fraction = float(cfg_get(cfg, "SLD.GAMMA_FRACTION", 0.0))
        if fraction > 0:
            self.gamma = float(round(fraction * float(cfg_get(cfg, "SOLVER.EPOCHS", 240))))
        else:
            self.gamma = float(cfg_get(cfg, "SLD.GAMMA", 150))
        self.detach_pseudo_teacher = bool(cfg_get(cfg, "SLD.DETACH_PSEUDO_TEACHER", False))
        self.teacher_processor = _valid_processor(cfg_get(cfg, "SLD.TEACHER_PROCESSOR", "swap"), "SLD.TEACHER_PROCESSOR")
        self.student_processor = _valid_processor(cfg_get(cfg, "SLD.STUDENT_PROCESSOR", "swap"), "SLD.STUDENT_PROCESSOR")
        shared = cfg_get(cfg, "DISTILLER.LOGIT_PROCESSOR", "none")
        if shared != "none" or bool(cfg_get(cfg, "EXPERIMENT.LOGIT_STAND", False)):
            raise ValueError(
                "SLD takes its logit processing from SLD.TEACHER_PROCESSOR and SLD.STUDENT_PROCESSOR; "
                f"DISTILLER.LOGIT_PROCESSOR must be 'none' (got {shared!r}) and EXPERIMENT.LOGIT_STAND False "
                f"(got {cfg_get(cfg, 'EXPERIMENT.LOGIT_STAND', False)!r})"
            )
        self.fuse = bool(cfg_get(cfg, "SOLVER.FUSE_STUDENT_VIEWS", False))

    def forward_train(self, views: Sequence[Tensor], target: Tensor, epoch: int, **extras: Any) -> tuple[Tensor, LossTerms]:
        """Return the weak view's student logits and ``{"loss_ce", "loss_kd", "loss_pseudo"}``."""
        _check_views(views, 2, "SLD")
        (t_weak, _), (t_strong, _) = self.teacher_forward(views[:2], features=False)
        (s_weak, _), (s_strong, _) = self.student_forward(views[:2], fuse=self.fuse)
        terms = losses.sld(
            s_weak, s_strong, t_weak, t_strong, target, epoch,
            ce_weight=self.ce_weight, kd_weight=self.kd_weight, temperatures=self.temperatures,
            gamma=self.gamma, detach_pseudo_teacher=self.detach_pseudo_teacher,
            teacher_processor=self.teacher_processor, student_processor=self.student_processor,
        )
        return s_weak, terms
