"""ImageNet ``MobileNetV1`` as published (parameter names ``model.{i}.{j}``, classifier ``fc``)."""
from __future__ import annotations

from typing import cast

import torch.nn.functional as F
from torch import Tensor, nn

from ..common import Features, ZooModel, flatten_pool, make_features

__all__ = ["MobileNetV1", "MODELS"]


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _conv_dw(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
        nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


_DW = [(32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2)] + \
    [(512, 512, 1)] * 5 + [(512, 1024, 2), (1024, 1024, 1)]

# index of the last layer of each feature stage in ``model``
_STAGE_ENDS = (3, 5, 11, 13)


class MobileNetV1(ZooModel):
    """MobileNetV1 (depthwise-separable convolutions) for 224x224 images.

    Features: ``feats`` = ReLU of the four stage ends (128@56, 256@28, 512@14, 1024@7 at
    224 input); ``preact_feats`` = the same before their final ReLU; ``pooled_feat`` = the
    pooled 1024-channel map. (The published ImageNet configs call this student
    ``MobileNetV2``.)
    """

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(3, 32, 2), *(_conv_dw(a, b, s) for a, b, s in _DW)]
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.model = nn.Sequential(*layers)
        self.fc = nn.Linear(1024, num_classes)
        self._feat_channels = [128, 256, 512, 1024]

    def forward(self, x: Tensor) -> tuple[Tensor, Features]:
        pres, feats = [], []
        start = 0
        out = x
        for end in _STAGE_ENDS:
            for i in range(start, end):
                out = self.model[i](out)
            for m in list(cast(nn.Sequential, self.model[end]))[:-1]:  # the stage's last unit, without its final ReLU
                out = m(out)
            pre = out
            out = F.relu(pre)
            pres.append(pre)
            feats.append(out)
            start = end + 1
        pooled = flatten_pool(out)
        return self.fc(pooled), make_features(feats, pres, pooled)

    def get_stage_channels(self) -> list[int]:
        """``[128, 256, 512, 1024]`` (equal to ``feats``)."""
        return list(self._feat_channels)

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The final BatchNorm of each stage end (producing ``preact_feats``)."""
        return [cast(nn.BatchNorm2d, cast(nn.Sequential, self.model[i])[-2]) for i in _STAGE_ENDS]

    def get_feat_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.model])


def mobilenetv1(num_classes: int = 1000) -> MobileNetV1:
    """MobileNetV1, width 1.0."""
    return MobileNetV1(num_classes)


MODELS = {"MobileNetV1": mobilenetv1}
