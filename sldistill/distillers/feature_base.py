"""Shared skeleton of the single-view feature distillers: ``loss_ce`` + ``loss_kd``.

A subclass names its config section (``AT``, ``NST``, ...), declares its keys (the two loss
weights come from :func:`loss_weights`) and implements :meth:`FeatureDistiller.feature_loss`
on the student's and teacher's feature dicts; the weights ``<SECTION>.LOSS.CE_WEIGHT`` and
``<SECTION>.LOSS.FEAT_WEIGHT`` are applied here.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from sldistill.distillers.base import Distiller, LossTerms
from sldistill.options import Key

__all__ = ["FeatureDistiller", "loss_weights", "input_size_key", "probe_mode_key"]


def loss_weights(section: str, feat_weight: float, ce_weight: float = 1.0) -> dict[str, Key]:
    """The ``<section>.LOSS.CE_WEIGHT`` / ``FEAT_WEIGHT`` declarations with these defaults."""
    return {
        f"{section}.LOSS.CE_WEIGHT": Key(float(ce_weight), "Weight of the student's cross-entropy term.",
                                         kind="float"),
        f"{section}.LOSS.FEAT_WEIGHT": Key(float(feat_weight), "Weight of the feature-distillation term.",
                                           kind="float"),
    }


def _height_width(v: list) -> str | None:
    return None if len(v) == 2 else f"must be [H, W] (two values), got {v!r}"


def input_size_key(what: str) -> Key:
    """``INPUT_SIZE`` of FITNET/VID: the probe image's [H, W] (ImageNet always probes 224x224)."""
    return Key([32, 32], f"[H, W] of the probe image whose feature shapes size {what} "
                         "(ImageNet runs always probe at 224x224).", gt=0, check=_height_width)


def probe_mode_key(method: str) -> Key:
    """``PROBE_TRAIN_MODE`` of FITNET/VID (see :func:`sldistill.distillers.connectors.probe_pair`)."""
    return Key(False, f"False: the constructor's shape probe runs in eval mode on a zero image (no "
                      f"statistics move); True: in train mode on a random image, as the released "
                      f"{method} does, which reproduces its side effect of moving the student's and "
                      "teacher's BatchNorm running statistics once.")


class FeatureDistiller(Distiller):
    """Student CE plus one weighted feature term, on one view (as in mdistiller).

    Returns ``{"loss_ce": CE_WEIGHT * CE, "loss_kd": FEAT_WEIGHT * feature_loss}``.
    """

    uses_teacher_features = True

    section: str = ""
    num_views = 1

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
            raise ValueError(f"{self.section} trains on one view, got {len(views)} "
                             "(the loaders build as many views as the distiller's num_views)")
        logits, feats_s = self.student(views[0])
        (_, feats_t), = self.teacher_forward(views)
        loss_ce = self.ce_weight * F.cross_entropy(logits, target)
        loss_kd = self.feat_weight * self.feature_loss(feats_s, feats_t, epoch, **extras)
        return logits, {"loss_ce": loss_ce, "loss_kd": loss_kd}
