"""mdistiller's feature distillers: FITNET, AT, NST, PKT, KDSVD, OFD, RKD, VID, SP (here),
CRD (:mod:`.crd`) and REVIEWKD (:mod:`.reviewkd`).

Each reads its published config section and calls a pure loss of
:mod:`sldistill.losses.feature`. Which features each reads is the release's: ``feats[1:]``
for AT, NST, KDSVD, VID; ``feats[-1]`` for SP; ``feats[HINT_LAYER]`` for FITNET;
``preact_feats[1:]`` for OFD; ``pooled_feat`` for PKT, RKD and CRD.
"""
from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from sldistill.distillers.base import register
from sldistill.distillers.connectors import (
    ConvBNConnector,
    ConvReg,
    VIDRegressor,
    probe_features,
    probe_input_size,
)
from sldistill.distillers.feature_base import FeatureDistiller
from sldistill.losses import feature as L

__all__ = ["AT", "NST", "SP", "KDSVD", "PKT", "RKD", "FITNET", "OFD", "VID"]


@register("AT")
class AT(FeatureDistiller):
    """Attention transfer on ``feats[1:]``; ``AT.P``."""

    section = "AT"

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Any) -> None:
        super().__init__(student, teacher, cfg)
        self.p = float(cfg.AT.P)

    def feature_loss(self, feats_s: dict, feats_t: dict, epoch: int, **extras: Any) -> Tensor:
        return L.at(feats_s["feats"][1:], feats_t["feats"][1:], self.p)


@register("NST")
class NST(FeatureDistiller):
    """Neuron selectivity transfer on ``feats[1:]``."""

    section = "NST"

    def feature_loss(self, feats_s: dict, feats_t: dict, epoch: int, **extras: Any) -> Tensor:
        return L.nst(feats_s["feats"][1:], feats_t["feats"][1:])


@register("SP")
class SP(FeatureDistiller):
    """Similarity preserving on the last stage ``feats[-1]``."""

    section = "SP"

    def feature_loss(self, feats_s: dict, feats_t: dict, epoch: int, **extras: Any) -> Tensor:
        return L.sp(feats_s["feats"][-1:], feats_t["feats"][-1:])


@register("KDSVD")
class KDSVD(FeatureDistiller):
    """SVD-based KD on ``feats[1:]``; ``KDSVD.K`` singular vectors."""

    section = "KDSVD"

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Any) -> None:
        super().__init__(student, teacher, cfg)
        self.k = int(cfg.KDSVD.K)

    def feature_loss(self, feats_s: dict, feats_t: dict, epoch: int, **extras: Any) -> Tensor:
        return L.kdsvd(feats_s["feats"][1:], feats_t["feats"][1:], self.k)


@register("PKT")
class PKT(FeatureDistiller):
    """Probabilistic knowledge transfer on ``pooled_feat``."""

    section = "PKT"

    def feature_loss(self, feats_s: dict, feats_t: dict, epoch: int, **extras: Any) -> Tensor:
        return L.pkt(feats_s["pooled_feat"], feats_t["pooled_feat"])


@register("RKD")
class RKD(FeatureDistiller):
    """Relational KD on ``pooled_feat``; ``RKD.DISTANCE_WEIGHT``, ``ANGLE_WEIGHT``, ``PDIST``."""

    section = "RKD"

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Any) -> None:
        super().__init__(student, teacher, cfg)
        self.distance_weight = float(cfg.RKD.DISTANCE_WEIGHT)
        self.angle_weight = float(cfg.RKD.ANGLE_WEIGHT)
        self.squared = bool(cfg.RKD.PDIST.SQUARED)
        self.eps = float(cfg.RKD.PDIST.EPSILON)

    def feature_loss(self, feats_s: dict, feats_t: dict, epoch: int, **extras: Any) -> Tensor:
        return L.rkd(feats_s["pooled_feat"], feats_t["pooled_feat"], self.distance_weight,
                     self.angle_weight, self.squared, self.eps)


@register("FITNET")
class FITNET(FeatureDistiller):
    """FitNets: a :class:`ConvReg` maps ``feats[HINT_LAYER]`` of the student onto the
    teacher's; MSE. Shapes come from one probe forward at ``FITNET.INPUT_SIZE``."""

    section = "FITNET"

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Any) -> None:
        super().__init__(student, teacher, cfg)
        self.hint_layer = int(cfg.FITNET.HINT_LAYER)
        size = probe_input_size(cfg, "FITNET")
        s_shapes, t_shapes = probe_features(student, size)["feats"], probe_features(teacher, size)["feats"]
        n = min(len(s_shapes), len(t_shapes))
        if not -n <= self.hint_layer < n:
            raise ValueError(f"FITNET.HINT_LAYER {self.hint_layer} out of range: the models give {n} stage features")
        self.conv_reg = ConvReg(s_shapes[self.hint_layer], t_shapes[self.hint_layer])

    def feature_loss(self, feats_s: dict, feats_t: dict, epoch: int, **extras: Any) -> Tensor:
        return L.fitnet_hint(self.conv_reg(feats_s["feats"][self.hint_layer]), feats_t["feats"][self.hint_layer])


@register("OFD")
class OFD(FeatureDistiller):
    """Overhaul of feature distillation: conv+BN connectors from the student's
    ``preact_feats[1:]`` to the teacher's (aligned from the deepest stage), margin-based
    partial L2 against the teacher's pre-ReLU maps, deeper stages weighted more (1/2^k).
    Margins come from the teacher's ``get_bn_before_relu()`` (recomputed from its current BN
    parameters at every step, so a teacher loaded after construction is honoured).

    The release also switches the teacher to train mode; here it stays in eval mode (the
    toolkit's contract)."""

    section = "OFD"

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Any) -> None:
        super().__init__(student, teacher, cfg)
        if not hasattr(teacher, "get_bn_before_relu"):
            raise ValueError("OFD needs a teacher with get_bn_before_relu() (the zoo models provide it)")
        size = probe_input_size(cfg)
        s_ch = [s[1] for s in probe_features(student, size)["preact_feats"][1:]]
        t_ch = [s[1] for s in probe_features(teacher, size)["preact_feats"][1:]]
        self.num_stages = n = min(len(s_ch), len(t_ch))
        kernel = int(cfg.OFD.CONNECTOR.KERNEL_SIZE)
        self.connectors = nn.ModuleList(ConvBNConnector(s, t, kernel) for s, t in zip(s_ch[-n:], t_ch[-n:]))

    def margins(self) -> list[Tensor]:
        """Per-stage channel margins ``[1, C, 1, 1]`` from the teacher's pre-ReLU BN layers."""
        bns = list(self.teacher.get_bn_before_relu())[-self.num_stages:]
        if len(bns) != self.num_stages:
            raise ValueError(f"OFD: teacher gives {len(bns)} BN layers before ReLU, needs {self.num_stages}")
        return [L.ofd_margins(bn.weight, bn.bias) for bn in bns]

    def feature_loss(self, feats_s: dict, feats_t: dict, epoch: int, **extras: Any) -> Tensor:
        n = self.num_stages
        f_s, f_t = feats_s["preact_feats"][1:][-n:], feats_t["preact_feats"][1:][-n:]
        total = f_s[0].new_zeros(())
        for i, (conn, s, t, margin) in enumerate(zip(self.connectors, f_s, f_t, self.margins())):
            s = conn(s)
            t = F.adaptive_avg_pool2d(t, s.shape[-2:])
            total = total + L.ofd_margin_loss(s, t, margin) / 2 ** (n - i - 1)
        return total


@register("VID")
class VID(FeatureDistiller):
    """Variational information distillation on ``feats[1:]``: a :class:`VIDRegressor` per
    stage (channels from a probe forward at ``VID.INPUT_SIZE``); ``VID.EPS``, ``INIT_PRED_VAR``."""

    section = "VID"

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Any) -> None:
        super().__init__(student, teacher, cfg)
        self.eps = float(cfg.VID.EPS)
        size = probe_input_size(cfg, "VID")
        s_ch = [s[1] for s in probe_features(student, size)["feats"][1:]]
        t_ch = [s[1] for s in probe_features(teacher, size)["feats"][1:]]
        self.regressors = nn.ModuleList(
            VIDRegressor(s, t, float(cfg.VID.INIT_PRED_VAR), self.eps) for s, t in zip(s_ch, t_ch)
        )

    def feature_loss(self, feats_s: dict, feats_t: dict, epoch: int, **extras: Any) -> Tensor:
        total = feats_s["feats"][0].new_zeros(())
        for reg, s, t in zip(self.regressors, feats_s["feats"][1:], feats_t["feats"][1:]):
            s, t = L.match_spatial(s, t)
            total = total + L.vid_nll(reg(s), t, reg.log_scale, self.eps)
        return total


# registration of the two larger distillers
from sldistill.distillers import crd as _crd  # noqa: E402,F401
from sldistill.distillers import reviewkd as _reviewkd  # noqa: E402,F401

CRD = _crd.CRD
REVIEWKD = _reviewkd.REVIEWKD
__all__ += ["CRD", "REVIEWKD"]
