"""CIFAR ``MobileNetV2`` (width 0.5, expansion 6), as in the published zoo.

Parameter names: ``conv1`` (3x3 stride-2 conv-BN-ReLU), ``blocks.{i}.{j}.conv.{0..7}``
(inverted residuals), ``conv2`` (1x1 to 1280), ``classifier.0``.
"""
from __future__ import annotations

from typing import cast

from torch import Tensor, nn

from ..common import Features, ZooModel, flatten_pool, make_features

__all__ = ["MobileNetV2", "MODELS"]


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class InvertedResidual(nn.Module):
    """1x1 expand - 3x3 depthwise - 1x1 linear projection; identity shortcut when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.use_res_connect = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    @property
    def project_bn(self) -> nn.BatchNorm2d:
        """The BatchNorm of the linear projection (the block's last layer)."""
        return cast(nn.BatchNorm2d, self.conv[-1])

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


# (expansion, channels, repeats, first stride); expansion None = the model's expansion T
_SETTING = [
    (1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2),
    (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1),
]


class MobileNetV2(ZooModel):
    """MobileNetV2 for 32x32 images (stride-2 stem, so maps are 16, 16, 8, 4, 2 pixels).

    Features: ``feats`` = [stem, after blocks 0-1, block 2, blocks 3-4, blocks 5-6];
    ``preact_feats`` = the same tensors (the published model returns none: its block outputs
    are linear bottlenecks with no ReLU after them); ``pooled_feat`` = pooled 1280-channel map.
    """

    def __init__(self, expand: int = 6, width_mult: float = 0.5, num_classes: int = 100) -> None:
        super().__init__()
        cin = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(3, cin, 3, 2)
        self.blocks = nn.ModuleList()
        widths = []
        for t, c, n, s in _SETTING:
            cout = int(c * width_mult)
            layers = []
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, expand if t is None else t))
                cin = cout
            self.blocks.append(nn.Sequential(*layers))
            widths.append(cout)
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(cin, self.last_channel, 1, 1)
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes))
        self._feat_channels = [int(32 * width_mult), widths[1], widths[2], widths[4], widths[6]]
        self._init()

    def _init(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Features]:
        f0 = self.conv1(x)
        f1 = self.blocks[1](self.blocks[0](f0))
        f2 = self.blocks[2](f1)
        f3 = self.blocks[4](self.blocks[3](f2))
        f4 = self.blocks[6](self.blocks[5](f3))
        pooled = flatten_pool(self.conv2(f4))
        feats = [f0, f1, f2, f3, f4]
        return self.classifier(pooled), make_features(feats, list(feats), pooled)

    def get_stage_channels(self) -> list[int]:
        """Channels of ``feats`` (``[16, 12, 16, 48, 160]`` at width 0.5)."""
        return list(self._feat_channels)

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The projection BN of the last block of blocks 1, 2, 4 and 6."""
        last_units = [cast(InvertedResidual, cast(nn.Sequential, self.blocks[i])[-1]) for i in (1, 2, 4, 6)]
        return [unit.project_bn for unit in last_units]

    def get_feat_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.conv1, self.blocks])


def mobilenetv2_half(num_classes: int = 100) -> MobileNetV2:
    """The published CIFAR ``MobileNetV2``: width 0.5, expansion 6."""
    return MobileNetV2(6, 0.5, num_classes)


MODELS = {"MobileNetV2": mobilenetv2_half}
