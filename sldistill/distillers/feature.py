"""mdistiller's feature distillers: FITNET, AT, NST, PKT, KDSVD, OFD, RKD, VID, SP (here),
CRD (:mod:`.crd`) and REVIEWKD (:mod:`.reviewkd`).

Each reads its published config section and calls a pure loss of
:mod:`sldistill.losses.feature`. Which features each reads is the release's: ``feats[1:]``
for AT, NST, KDSVD, VID; ``feats[-1]`` for SP; ``feats[HINT_LAYER]`` for FITNET;
``preact_feats[1:]`` for OFD; ``pooled_feat`` for PKT, RKD and CRD.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from sldistill.distillers.base import register
from sldistill.distillers.connectors import (
    ConvBNConnector,
    ConvReg,
    VIDRegressor,
    probe_features,
    probe_input_size,
    probe_pair,
)
from sldistill.distillers.feature_base import FeatureDistiller, input_size_key, loss_weights, probe_mode_key
from sldistill.losses import feature as L
from sldistill.options import Key

__all__ = ["AT", "NST", "SP", "KDSVD", "PKT", "RKD", "FITNET", "OFD", "VID"]


@register("AT")
class AT(FeatureDistiller):
    """Attention transfer on ``feats[1:]``; ``AT.P``."""

    section = "AT"
    config = {"AT.P": Key(2, "Exponent p of the spatial attention maps (channel mean of f^p)."),
              **loss_weights("AT", 1000.0)}

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Any) -> None:
        super().__init__(student, teacher, cfg)
        self.p = float(cfg.AT.P)

    def feature_loss(self, feats_s: dict, feats_t: dict, epoch: int, **extras: Any) -> Tensor:
        return L.at(feats_s["feats"][1:], feats_t["feats"][1:], self.p)


@register("NST")
class NST(FeatureDistiller):
    """Neuron selectivity transfer on ``feats[1:]``."""

    section = "NST"
    config = loss_weights("NST", 50.0)

    def feature_loss(self, feats_s: dict, feats_t: dict, epoch: int, **extras: Any) -> Tensor:
        return L.nst(feats_s["feats"][1:], feats_t["feats"][1:])


@register("SP")
class SP(FeatureDistiller):
    """Similarity preserving on the last stage ``feats[-1]``."""

    section = "SP"
    config = loss_weights("SP", 3000.0)

    def feature_loss(self, feats_s: dict, feats_t: dict, epoch: int, **extras: Any) -> Tensor:
        return L.sp(feats_s["feats"][-1:], feats_t["feats"][-1:])


@register("KDSVD")
class KDSVD(FeatureDistiller):
    """SVD-based KD on ``feats[1:]``; ``KDSVD.K`` singular vectors."""

    section = "KDSVD"
    config = {"KDSVD.K": Key(1, "Number of leading singular vectors compared per stage."),
              **loss_weights("KDSVD", 1.0)}

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Any) -> None:
        super().__init__(student, teacher, cfg)
        self.k = int(cfg.KDSVD.K)

    def feature_loss(self, feats_s: dict, feats_t: dict, epoch: int, **extras: Any) -> Tensor:
        return L.kdsvd(feats_s["feats"][1:], feats_t["feats"][1:], self.k)


@register("PKT")
class PKT(FeatureDistiller):
    """Probabilistic knowledge transfer on ``pooled_feat``."""

    section = "PKT"
    config = loss_weights("PKT", 30000.0)

    def feature_loss(self, feats_s: dict, feats_t: dict, epoch: int, **extras: Any) -> Tensor:
        return L.pkt(feats_s["pooled_feat"], feats_t["pooled_feat"])


@register("RKD")
class RKD(FeatureDistiller):
    """Relational KD on ``pooled_feat``; ``RKD.DISTANCE_WEIGHT``, ``ANGLE_WEIGHT``, ``PDIST``."""

    section = "RKD"
    config = {
        "RKD.DISTANCE_WEIGHT": Key(25.0, "Weight of the distance-wise relation term.", kind="float"),
        "RKD.ANGLE_WEIGHT": Key(50.0, "Weight of the angle-wise relation term.", kind="float"),
        "RKD.PDIST.EPSILON": Key(1e-12, "Lower clamp of the pairwise distances."),
        "RKD.PDIST.SQUARED": Key(False, "Compare squared pairwise distances."),
        **loss_weights("RKD", 1.0),
    }

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
    teacher's; MSE. Shapes come from one probe forward at ``FITNET.INPUT_SIZE`` (in train
    mode on a random image, moving BN statistics as released, when ``PROBE_TRAIN_MODE``)."""

    section = "FITNET"
    config = {
        "FITNET.HINT_LAYER": Key(2, "Index into feats of the stage used as the hint (negative counts from the end)."),
        "FITNET.INPUT_SIZE": input_size_key("the hint regressor"),
        "FITNET.PROBE_TRAIN_MODE": probe_mode_key("FitNet"),
        **loss_weights("FITNET", 100.0),
    }

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Any) -> None:
        super().__init__(student, teacher, cfg)
        self.hint_layer = int(cfg.FITNET.HINT_LAYER)
        size = probe_input_size(cfg, cfg.FITNET.INPUT_SIZE)
        s_probe, t_probe = probe_pair(student, teacher, size, bool(cfg.FITNET.PROBE_TRAIN_MODE))
        s_shapes, t_shapes = s_probe["feats"], t_probe["feats"]
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

    As released, :meth:`train` puts the teacher in train mode too (``OFD.TEACHER_EVAL``
    false, the default): its frozen BN layers normalise with batch statistics and update
    their running statistics. ``OFD.TEACHER_EVAL: true`` keeps the teacher in eval mode."""

    section = "OFD"
    config = {
        "OFD.CONNECTOR.KERNEL_SIZE": Key(1, "Kernel size of the conv+BN connectors."),
        "OFD.TEACHER_EVAL": Key(False, "False (released): the teacher is in train mode while the distiller "
                                       "trains (frozen weights; its BN uses batch statistics and updates its "
                                       "running statistics); True: the teacher stays in eval mode."),
        **loss_weights("OFD", 0.001),
    }

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Any) -> None:
        super().__init__(student, teacher, cfg)
        self.teacher_eval = bool(cfg.OFD.TEACHER_EVAL)
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
        teacher: Any = self.teacher
        bns = list(teacher.get_bn_before_relu())[-self.num_stages:]
        if len(bns) != self.num_stages:
            raise ValueError(f"OFD: teacher gives {len(bns)} BN layers before ReLU, needs {self.num_stages}")
        return [L.ofd_margins(bn.weight, bn.bias) for bn in bns]

    def feature_loss(self, feats_s: dict, feats_t: dict, epoch: int, **extras: Any) -> Tensor:
        n = self.num_stages
        f_s, f_t = feats_s["preact_feats"][1:][-n:], feats_t["preact_feats"][1:][-n:]
        total = f_s[0].new_zeros(())
        for i, (conn, s, t, margin) in enumerate(zip(self.connectors, f_s, f_t, self.margins())):
            s = conn(s)
            t = L.adaptive_pool(t, tuple(s.shape[-2:]))
            total = total + L.ofd_margin_loss(s, t, margin) / 2 ** (n - i - 1)
        return total


@register("VID")
class VID(FeatureDistiller):
    """Variational information distillation on ``feats[1:]``: a :class:`VIDRegressor` per
    stage (channels from a probe forward at ``VID.INPUT_SIZE``; ``VID.PROBE_TRAIN_MODE`` as
    for FITNET); ``VID.EPS``, ``INIT_PRED_VAR``."""

    section = "VID"
    config = {
        "VID.EPS": Key(1e-5, "Lower bound added to the predicted variance."),
        "VID.INIT_PRED_VAR": Key(5.0, "Initial predicted variance (it stays fixed, as released)."),
        "VID.INPUT_SIZE": input_size_key("the regressors"),
        "VID.PROBE_TRAIN_MODE": probe_mode_key("VID"),
        **loss_weights("VID", 1.0),
    }

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Any) -> None:
        super().__init__(student, teacher, cfg)
        self.eps = float(cfg.VID.EPS)
        size = probe_input_size(cfg, cfg.VID.INPUT_SIZE)
        s_probe, t_probe = probe_pair(student, teacher, size, bool(cfg.VID.PROBE_TRAIN_MODE))
        s_ch = [s[1] for s in s_probe["feats"][1:]]
        t_ch = [s[1] for s in t_probe["feats"][1:]]
        self.regressors = nn.ModuleList(
            VIDRegressor(s, t, float(cfg.VID.INIT_PRED_VAR), self.eps) for s, t in zip(s_ch, t_ch)
        )

    def feature_loss(self, feats_s: dict, feats_t: dict, epoch: int, **extras: Any) -> Tensor:
        total = feats_s["feats"][0].new_zeros(())
        for reg, s, t in zip(self.regressors, feats_s["feats"][1:], feats_t["feats"][1:]):
            s, t = L.match_spatial(s, t)
            total = total + L.vid_nll(reg(s), t, reg.get_buffer("log_scale"), self.eps)
        return total


# registration of the two larger distillers
from sldistill.distillers import crd as _crd  # noqa: E402,F401
from sldistill.distillers import reviewkd as _reviewkd  # noqa: E402,F401

CRD = _crd.CRD
REVIEWKD = _reviewkd.REVIEWKD
__all__ += ["CRD", "REVIEWKD"]
