"""Logit distillers: ``NONE``, ``KD``, ``DKD``, ``MLKD`` (alias ``KD_ours``) and ``SLD``.

Each declares the config keys it reads (``config``) and calls one pure loss of
:mod:`sldistill.losses`. KD, DKD and MLKD take their logit processing from
``DISTILLER.LOGIT_PROCESSOR`` and the published ``EXPERIMENT.LOGIT_STAND`` (see
:func:`resolve_logit_processor`); SLD has its own processor keys. The two-view distillers
(MLKD, SLD) run the teacher once over both views concatenated and return the weak view's
student logits.
"""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from sldistill import losses
from sldistill.distillers.base import Distiller, Key, LossTerms, Unreleased, register
from sldistill.logits import PROCESSORS

__all__ = ["Vanilla", "KD", "DKD", "MLKD", "SLD", "resolve_logit_processor", "KD_KEYS"]

_PROCESSORS = tuple(sorted(PROCESSORS))

#: keys shared by KD, MLKD and SLD (the published KD section)
KD_KEYS = {
    "KD.TEMPERATURE": Key(4.0, "KD temperature `T` (also MLKD's first temperature; SLD ignores it, as released).",
                          kind="float", gt=0),
    "KD.LOSS.CE_WEIGHT": Key(0.1, "Weight of cross-entropy in KD, MLKD and SLD.", ge=0),
    "KD.LOSS.KD_WEIGHT": Key(0.9, "Weight of the KL terms in KD, MLKD and SLD.", ge=0),
}
#: the processor keys KD, DKD and MLKD read
PROCESSOR_KEYS = {
    "DISTILLER.LOGIT_PROCESSOR": Key("none", "Logit processing for KD/DKD/MLKD: `sort` or `swap` act on the "
                                     "teacher, `zscore` on teacher and student.", choices=_PROCESSORS),
}


def resolve_logit_processor(cfg: Any) -> str:
    """The logit processor of KD/DKD/MLKD: ``DISTILLER.LOGIT_PROCESSOR``, where the published
    ``EXPERIMENT.LOGIT_STAND: true`` means ``zscore`` (a contradiction with ``sort``/``swap``
    raises ``ValueError``)."""
    name = str(cfg.DISTILLER.LOGIT_PROCESSOR)
    if name not in PROCESSORS:
        raise ValueError(f"DISTILLER.LOGIT_PROCESSOR must be one of {', '.join(_PROCESSORS)}; got {name!r}")
    if bool(cfg.EXPERIMENT.LOGIT_STAND):
        if name not in ("none", "zscore"):
            raise ValueError(f"EXPERIMENT.LOGIT_STAND: True means DISTILLER.LOGIT_PROCESSOR 'zscore', but "
                             f"DISTILLER.LOGIT_PROCESSOR is {name!r}; set one of them consistently")
        name = "zscore"
    return name


def _check_views(views: Sequence[Tensor], n: int, who: str) -> None:
    if not isinstance(views, (list, tuple)) or len(views) < n:
        got = len(views) if isinstance(views, (list, tuple)) else type(views).__name__
        raise ValueError(f"{who} needs a list of {n} view(s) [weak, strong][:n]; got {got}")


@register("NONE")
class Vanilla(Distiller):
    """Student alone: ``loss_ce = CE(student(x), y)``; no teacher."""

    needs_teacher = False

    def forward_train(self, views: Sequence[Tensor], target: Tensor, epoch: int,
                      **extras: Any) -> tuple[Tensor, LossTerms]:
        _check_views(views, 1, "NONE")
        logits, _ = self.student(views[0])
        return logits, {"loss_ce": F.cross_entropy(logits, target)}


@register("KD")
class KD(Distiller):
    """Vanilla KD: ``CE_WEIGHT * CE + KD_WEIGHT * T^2 * KL`` (:func:`sldistill.losses.kd`)."""

    config = {**KD_KEYS, **PROCESSOR_KEYS}

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Any) -> None:
        super().__init__(student, teacher, cfg)
        self.temperature = float(cfg.KD.TEMPERATURE)
        self.ce_weight = float(cfg.KD.LOSS.CE_WEIGHT)
        self.kd_weight = float(cfg.KD.LOSS.KD_WEIGHT)
        self.processor = resolve_logit_processor(cfg)

    def forward_train(self, views: Sequence[Tensor], target: Tensor, epoch: int,
                      **extras: Any) -> tuple[Tensor, LossTerms]:
        _check_views(views, 1, "KD")
        logits, _ = self.student(views[0])
        (teacher_logits, _), = self.teacher_forward(views[:1], features=False)
        loss_kd = losses.kd(logits, teacher_logits, self.temperature, target=target, processor=self.processor)
        return logits, {"loss_ce": self.ce_weight * F.cross_entropy(logits, target),
                        "loss_kd": self.kd_weight * loss_kd}


@register("DKD")
class DKD(Distiller):
    """Decoupled KD: ``CE_WEIGHT * CE + min(epoch / WARMUP, 1) * (ALPHA * TCKD + BETA * NCKD)``."""

    config = {
        "DKD.CE_WEIGHT": Key(1.0, "Weight of the cross-entropy term in DKD.", ge=0),
        "DKD.ALPHA": Key(1.0, "Weight of the target-class term (TCKD).", ge=0),
        "DKD.BETA": Key(8.0, "Weight of the non-target-class term (NCKD).", ge=0),
        "DKD.T": Key(4.0, "DKD temperature.", gt=0),
        "DKD.WARMUP": Key(20, "Epochs over which the DKD term ramps up linearly (`min(epoch / WARMUP, 1)`).", gt=0),
        **PROCESSOR_KEYS,
    }

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Any) -> None:
        super().__init__(student, teacher, cfg)
        self.ce_weight = float(cfg.DKD.CE_WEIGHT)
        self.alpha, self.beta = float(cfg.DKD.ALPHA), float(cfg.DKD.BETA)
        self.temperature = float(cfg.DKD.T)
        self.warmup = float(cfg.DKD.WARMUP)
        self.processor = resolve_logit_processor(cfg)

    def forward_train(self, views: Sequence[Tensor], target: Tensor, epoch: int,
                      **extras: Any) -> tuple[Tensor, LossTerms]:
        _check_views(views, 1, "DKD")
        logits, _ = self.student(views[0])
        (teacher_logits, _), = self.teacher_forward(views[:1], features=False)
        factor = min(epoch / self.warmup, 1.0) if self.warmup > 0 else 1.0
        loss_dkd = losses.dkd(logits, teacher_logits, target, self.alpha, self.beta, self.temperature,
                              processor=self.processor)
        return logits, {"loss_ce": self.ce_weight * F.cross_entropy(logits, target), "loss_kd": factor * loss_dkd}


_FUSE = {"SOLVER.FUSE_STUDENT_VIEWS": Key(False, "Two-view methods: one student forward over both views instead "
                                          "of two (faster; batch-norm statistics then mix the views, unlike the "
                                          "release).")}


@register("MLKD")
class MLKD(Distiller):
    """Multi-level logit distillation on weak/strong views (:func:`sldistill.losses.mlkd`)."""

    num_views = 2
    aliases = ("KD_ours",)
    config = {
        **KD_KEYS, **PROCESSOR_KEYS, **_FUSE,
        "MLKD.CLEAN": Key(False, "False: the released MLKD computation (scalar masks, two strong-view terms reading "
                          "weak logits); True: per-sample masks, each view's own logits."),
    }

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Any) -> None:
        super().__init__(student, teacher, cfg)
        self.temperature = float(cfg.KD.TEMPERATURE)
        self.ce_weight = float(cfg.KD.LOSS.CE_WEIGHT)
        self.kd_weight = float(cfg.KD.LOSS.KD_WEIGHT)
        self.clean = bool(cfg.MLKD.CLEAN)
        self.processor = resolve_logit_processor(cfg)
        self.fuse = bool(cfg.SOLVER.FUSE_STUDENT_VIEWS)

    def forward_train(self, views: Sequence[Tensor], target: Tensor, epoch: int,
                      **extras: Any) -> tuple[Tensor, LossTerms]:
        _check_views(views, 2, "MLKD")
        (t_weak, _), (t_strong, _) = self.teacher_forward(views[:2], features=False)
        (s_weak, _), (s_strong, _) = self.student_forward(views[:2], fuse=self.fuse)
        terms = losses.mlkd(s_weak, s_strong, t_weak, t_strong, target, temperature=self.temperature,
                            ce_weight=self.ce_weight, kd_weight=self.kd_weight, processor=self.processor,
                            clean=self.clean)
        return s_weak, terms


@register("SLD")
class SLD(Distiller):
    """Swapped Logit Distillation on weak/strong views (:func:`sldistill.losses.sld`).

    ``SLD.GAMMA_FRACTION > 0`` replaces ``SLD.GAMMA`` by ``round(GAMMA_FRACTION * SOLVER.EPOCHS)``
    (for shortened schedules; the release keeps 150 whatever the run length)."""

    num_views = 2
    config = {
        **KD_KEYS, **PROCESSOR_KEYS, **_FUSE,
        "SLD.TEMPERATURES": Key([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "Temperatures summed in every SLD KL term "
                                "(released: 1..6).", kind="list_float", gt=0, nonempty=True),
        "SLD.GAMMA": Key(150, "The pseudo-teacher term is on when `epoch > GAMMA` (released: 150 whatever the "
                         "run length).", ge=0),
        "SLD.GAMMA_FRACTION": Key(0.0, "If > 0, `GAMMA = round(GAMMA_FRACTION * SOLVER.EPOCHS)` (0.625 = 150/240 "
                                  "scales the released schedule to any length).", ge=0, le=1),
        "SLD.DETACH_PSEUDO_TEACHER": Key(False, "Detach the swapped student logits used as pseudo-teacher "
                                         "(released: not detached)."),
        "SLD.TEACHER_PROCESSOR": Key("swap", "Processor of the teacher's logits (`swap` released; `sort` for SLD "
                                     "with the sorting mechanism).", choices=_PROCESSORS),
        "SLD.STUDENT_PROCESSOR": Key("swap", "Processor of the student's logits for the pseudo-teacher (`swap` "
                                     "released; `none` switches the term off).", choices=_PROCESSORS),
    }

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Any) -> None:
        super().__init__(student, teacher, cfg)
        self.ce_weight = float(cfg.KD.LOSS.CE_WEIGHT)
        self.kd_weight = float(cfg.KD.LOSS.KD_WEIGHT)
        self.temperatures = tuple(float(t) for t in cfg.SLD.TEMPERATURES)
        fraction = float(cfg.SLD.GAMMA_FRACTION)
        self.gamma = float(round(fraction * int(cfg.SOLVER.EPOCHS))) if fraction > 0 else float(cfg.SLD.GAMMA)
        self.detach_pseudo_teacher = bool(cfg.SLD.DETACH_PSEUDO_TEACHER)
        self.teacher_processor = str(cfg.SLD.TEACHER_PROCESSOR)
        self.student_processor = str(cfg.SLD.STUDENT_PROCESSOR)
        if cfg.DISTILLER.LOGIT_PROCESSOR != "none" or bool(cfg.EXPERIMENT.LOGIT_STAND):
            raise ValueError(
                "SLD takes its logit processing from SLD.TEACHER_PROCESSOR and SLD.STUDENT_PROCESSOR; "
                f"DISTILLER.LOGIT_PROCESSOR must be 'none' (got {cfg.DISTILLER.LOGIT_PROCESSOR!r}) and "
                f"EXPERIMENT.LOGIT_STAND False (got {cfg.EXPERIMENT.LOGIT_STAND!r})")
        self.fuse = bool(cfg.SOLVER.FUSE_STUDENT_VIEWS)
        epochs = int(cfg.SOLVER.EPOCHS)
        if self.gamma >= epochs and self.student_processor != "none":
            source = f"round(SLD.GAMMA_FRACTION {fraction:g} * SOLVER.EPOCHS)" if fraction > 0 else "SLD.GAMMA"
            warnings.warn(f"{source} = {self.gamma:g} >= SOLVER.EPOCHS {epochs}: the pseudo-teacher term "
                          "(on when epoch > GAMMA) never switches on in this run; lower SLD.GAMMA or set "
                          "SLD.GAMMA_FRACTION (0.625 scales the released 150 of 240 epochs)", stacklevel=2)

    def forward_train(self, views: Sequence[Tensor], target: Tensor, epoch: int,
                      **extras: Any) -> tuple[Tensor, LossTerms]:
        _check_views(views, 2, "SLD")
        (t_weak, _), (t_strong, _) = self.teacher_forward(views[:2], features=False)
        (s_weak, _), (s_strong, _) = self.student_forward(views[:2], fuse=self.fuse)
        terms = losses.sld(s_weak, s_strong, t_weak, t_strong, target, epoch, ce_weight=self.ce_weight,
                           kd_weight=self.kd_weight, temperatures=self.temperatures, gamma=self.gamma,
                           detach_pseudo_teacher=self.detach_pseudo_teacher,
                           teacher_processor=self.teacher_processor, student_processor=self.student_processor)
        return s_weak, terms


@register("DKD_aug")
class DKDAug(Unreleased):
    """``DKD_aug``: in published MLKD files, implemented by no release (refused when built)."""


@register("DOT")
class DOTDistiller(Unreleased):
    """``DOT`` as a ``DISTILLER.TYPE``: in published files, implemented by no release (DOT is an
    optimizer here: ``SOLVER.TYPE DOT``)."""
