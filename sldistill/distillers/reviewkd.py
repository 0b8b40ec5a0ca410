"""ReviewKD (Chen et al., "Distilling knowledge via knowledge review"), as in mdistiller.

The student's stage features plus its pooled feature (deepest first) pass through a chain
of :class:`ABF` fusion modules; each output is matched to the teacher's
``preact_feats[1:] + [pooled_feat]`` with the hierarchical context loss
(:func:`sldistill.losses.feature.hcl`), scaled by ``min(epoch / WARMUP_EPOCHS, 1)``.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from sldistill.distillers.base import register
from sldistill.distillers.connectors import ABF, probe_features, probe_input_size
from sldistill.distillers.feature_base import FeatureDistiller
from sldistill.losses.feature import hcl
from sldistill.options import Key

__all__ = ["REVIEWKD"]


@register("REVIEWKD")
class REVIEWKD(FeatureDistiller):
    """Keys (published): ``REVIEWKD.CE_WEIGHT``, ``REVIEWKD_WEIGHT``, ``WARMUP_EPOCHS``,
    ``SHAPES``/``OUT_SHAPES`` (spatial sizes, deepest first), ``IN_CHANNELS``/
    ``OUT_CHANNELS`` (student/teacher channels, shallowest first), ``STU_PREACT`` (read the
    student's pre-activation features). ``MAX_MID_CHANNEL`` is accepted but, as in the
    release, the fusion width is ``min(512, IN_CHANNELS[-1])``. The channel keys are checked
    against a probe forward; a mismatch raises ``ValueError`` naming the measured values.
    """

    section = "REVIEWKD"
    config = {
        "REVIEWKD.CE_WEIGHT": Key(1.0, "Weight of the student's cross-entropy term."),
        "REVIEWKD.REVIEWKD_WEIGHT": Key(1.0, "Weight of the review (hierarchical context) loss."),
        "REVIEWKD.WARMUP_EPOCHS": Key(20, "Epochs over which the review loss ramps up linearly from 0."),
        "REVIEWKD.SHAPES": Key([1, 8, 16, 32], "Spatial sizes of the student's levels, deepest first.", gt=0),
        "REVIEWKD.OUT_SHAPES": Key([1, 8, 16, 32], "Spatial sizes of the teacher's levels, deepest first.", gt=0),
        "REVIEWKD.IN_CHANNELS": Key([64, 128, 256, 256], "Channels of the student's levels, shallowest first.",
                                    gt=0),
        "REVIEWKD.OUT_CHANNELS": Key([64, 128, 256, 256], "Channels of the teacher's levels, shallowest first.",
                                     gt=0),
        "REVIEWKD.MAX_MID_CHANNEL": Key(512, "Published key, unused as in the release (the fusion width is "
                                             "min(512, IN_CHANNELS[-1])).", compat=True),
        "REVIEWKD.STU_PREACT": Key(False, "Read the student's pre-activation stage features."),
    }

    def _loss_weights(self, cfg: Any) -> tuple[float, float]:
        return float(cfg.REVIEWKD.CE_WEIGHT), float(cfg.REVIEWKD.REVIEWKD_WEIGHT)

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Any) -> None:
        super().__init__(student, teacher, cfg)
        rc = cfg.REVIEWKD
        self.shapes, self.out_shapes = [int(s) for s in rc.SHAPES], [int(s) for s in rc.OUT_SHAPES]
        in_ch, out_ch = [int(c) for c in rc.IN_CHANNELS], [int(c) for c in rc.OUT_CHANNELS]
        n = len(in_ch)
        if not (len(out_ch) == len(self.shapes) == len(self.out_shapes) == n) or n < 1:
            lengths = [len(in_ch), len(out_ch), len(self.shapes), len(self.out_shapes)]
            raise ValueError("REVIEWKD.IN_CHANNELS, OUT_CHANNELS, SHAPES and OUT_SHAPES must have the same "
                             f"non-zero length, got {', '.join(map(str, lengths))}")
        self.warmup_epochs = float(rc.WARMUP_EPOCHS)
        self.stu_preact = bool(rc.STU_PREACT)
        self._check_channels(student, teacher, cfg, in_ch, out_ch)
        mid = min(512, in_ch[-1])
        abfs = [ABF(c, mid, out_ch[i], fuse=i < n - 1) for i, c in enumerate(in_ch)]
        self.abfs = nn.ModuleList(abfs[::-1])  # deepest first

    def _student_levels(self, feats: dict) -> list[Tensor]:
        stages = feats["preact_feats"] if self.stu_preact else feats["feats"]
        return list(stages) + [feats["pooled_feat"][..., None, None]]

    def _check_channels(self, student: nn.Module, teacher: nn.Module, cfg: Any, in_ch: list[int],
                        out_ch: list[int]) -> None:
        size = probe_input_size(cfg)
        ps, pt = probe_features(student, size), probe_features(teacher, size)
        s_list = ps["preact_feats"] if self.stu_preact else ps["feats"]
        s_ch = [s[1] for s in s_list] + [ps["pooled_feat"][1]]
        t_ch = [s[1] for s in pt["preact_feats"][1:]] + [pt["pooled_feat"][1]]
        n = len(in_ch)
        if s_ch[-n:] != in_ch or t_ch != out_ch:
            raise ValueError(
                f"REVIEWKD channels do not match the models: IN_CHANNELS {in_ch} vs student {s_ch[-n:]}, "
                f"OUT_CHANNELS {out_ch} vs teacher {t_ch}; "
                "set REVIEWKD.IN_CHANNELS/OUT_CHANNELS (and SHAPES/OUT_SHAPES)"
            )

    def fuse(self, feats_s: dict) -> list[Tensor]:
        """The ABF chain: student levels (deepest first) -> outputs, shallowest first."""
        x = self._student_levels(feats_s)[::-1]
        out, residual = self.abfs[0](x[0], out_shape=self.out_shapes[0])
        results = [out]
        for feat, abf, shape, out_shape in zip(x[1:], self.abfs[1:], self.shapes[1:], self.out_shapes[1:]):
            out, residual = abf(feat, residual, shape, out_shape)
            results.insert(0, out)
        return results

    def feature_loss(self, feats_s: dict, feats_t: dict, epoch: int, **extras: Any) -> Tensor:
        teacher = list(feats_t["preact_feats"][1:]) + [feats_t["pooled_feat"][..., None, None]]
        warm = min(epoch / self.warmup_epochs, 1.0) if self.warmup_epochs > 0 else 1.0
        return warm * hcl(self.fuse(feats_s), teacher)
