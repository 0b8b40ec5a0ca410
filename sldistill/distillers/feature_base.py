"""Shared skeleton of the single-view feature distillers: ``loss_ce`` + ``loss_kd``.

A subclass names its config section (``AT``, ``NST``, ...) and implements
:meth:`FeatureDistiller.feature_loss` on the student's and teacher's feature dicts; the
weights ``<SECTION>.LOSS.CE_WEIGHT`` and ``<SECTION>.LOSS.FEAT_WEIGHT`` are applied here.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from sldistill.distillers.base import Distiller, LossTerms

__all__ = ["FeatureDistiller"]


class FeatureDistiller(Distiller):
    """Student CE plus one weighted feature term, on one view (as in mdistiller).

    Returns ``{"loss_ce": CE_WEIGHT * CE, "loss_kd": FEAT_WEIGHT * feature_loss}``.
    """

    section: str = ""

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Any) -> None:
        super().__init__(student, teacher, cfg)
        if teacher is None:
            raise ValueError(f"DISTILLER.TYPE {self.section} needs a teacher model, got None")
        self.ce_weight, self.feat_weight = self._loss_weights(cfg)

    def _loss_weights(self, cfg: Any) -> tuple[float, float]:
        loss = cfg[self.section].LOSS
        return float(loss.CE_WEIGHT), float(loss.FEAT_WEIGHT)

    def feature_loss(self, feats_s: dict, feats_t: dict, epoch: int, **extras: Any) -> Tensor:
        """The unweighted feature loss from the student's and teacher's feature dicts."""
        raise NotImplementedError

    def forward_train(self, views: Sequence[Tensor] | Tensor, target: Tensor, epoch: int = 1,
                      **extras: Any) -> tuple[Tensor, LossTerms]:
        """One view: student forward, teacher forward (no grad), CE + feature term."""
        if isinstance(views, Tensor):
            views = [views]
        if len(views) != 1:
            raise ValueError(f"{self.section} trains on one view, got {len(views)} (use SOLVER.TRAINER base or crd)")
        logits, feats_s = self.student(views[0])
        (_, feats_t), = self.teacher_forward(views)
        loss_ce = self.ce_weight * F.cross_entropy(logits, target)
        loss_kd = self.feat_weight * self.feature_loss(feats_s, feats_t, epoch, **extras)
        return logits, {"loss_ce": loss_ce, "loss_kd": loss_kd}
