"""CIFAR ``ShuffleV1`` (groups 3) and ``ShuffleV2`` (1x) of the published zoo.

Both start with a 1x1 conv (24 channels, stride 1) and have three strided stages.
"""
from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..common import Features, ZooModel, flatten_pool, make_features

__all__ = ["ShuffleNetV1", "ShuffleNetV2", "channel_shuffle", "MODELS"]


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave the channels of ``groups`` equal groups ([g, C/g] -> [C/g, g])."""
    if groups == 1:
        return x
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


# ---------------------------------------------------------------- ShuffleNet V1
class ShuffleV1Unit(nn.Module):
    """Grouped 1x1 - shuffle - depthwise 3x3 - grouped 1x1; strided units concatenate an
    average-pooled shortcut, others add the identity."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        mid = cout // 4
        self.g1 = 1 if cin == 24 else groups
        self.conv1 = nn.Conv2d(cin, mid, 1, groups=self.g1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.pool = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else None

    def preact(self, x: Tensor) -> Tensor:
        out = channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.g1)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.cat([out, self.pool(x)], 1) if self.pool is not None else out + x

    def activate(self, pre: Tensor) -> Tensor:
        return F.relu(pre)

    def forward(self, x: Tensor) -> Tensor:
        return self.activate(self.preact(x))


class _ShuffleBase(ZooModel):
    # set by the subclasses' __init__
    conv1: nn.Conv2d
    bn1: nn.BatchNorm2d
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential

    def _stages(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        f0 = F.relu(self.bn1(self.conv1(x)))
        feats, pres = [f0], [f0]
        out = f0
        for layer in (self.layer1, self.layer2, self.layer3):
            blocks = list(layer)
            for block in blocks[:-1]:
                out = block(out)
            last = cast("ShuffleV1Unit | ShuffleV2Unit", blocks[-1])
            pre = last.preact(out)
            out = last.activate(pre)
            feats.append(out)
            pres.append(pre)
        return feats, pres

    def get_stage_channels(self) -> list[int]:
        """Channels of ``feats``: stem and three stages."""
        return list(self._feat_channels)

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        raise NotImplementedError(
            f"{type(self).__name__}: its stage outputs are concatenations/sums, not a single BatchNorm "
            "before a ReLU, so it cannot be an OFD teacher (as in the published code)"
        )

    def get_feat_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.conv1, self.bn1, self.layer1, self.layer2, self.layer3])


class ShuffleNetV1(_ShuffleBase):
    """ShuffleNet V1 for 32x32 images.

    Features: ``feats`` = [stem, stage1..3]; ``preact_feats`` = [stem, each stage's last unit
    before its ReLU]; ``pooled_feat`` = pooled stage3.
    """

    def __init__(self, out_planes: list[int], num_blocks: list[int], groups: int, num_classes: int = 100) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        cin = 24
        for s, (cout, n) in enumerate(zip(out_planes, num_blocks), start=1):
            units = []
            for i in range(n):
                # a strided unit concatenates its input, so its branch makes cout - cin channels
                units.append(ShuffleV1Unit(cin, cout - cin if i == 0 else cout, 2 if i == 0 else 1, groups))
                cin = cout
            self.add_module(f"layer{s}", nn.Sequential(*units))
        self.linear = nn.Linear(cin, num_classes)
        self._feat_channels = [24, *out_planes]

    def forward(self, x: Tensor) -> tuple[Tensor, Features]:
        feats, pres = self._stages(x)
        pooled = flatten_pool(feats[-1])
        return self.linear(pooled), make_features(feats, pres, pooled)


# ---------------------------------------------------------------- ShuffleNet V2
class ShuffleV2Unit(nn.Module):
    """Split channels in half; transform the second half (1x1-dw3x3-1x1); concat; shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        c = channels // 2
        self.conv1 = nn.Conv2d(c, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def preact(self, x: Tensor) -> Tensor:
        """``cat([x1, bn3(...)])`` before the ReLU and before the shuffle (as published)."""
        c = x.shape[1] // 2
        x1, x2 = x[:, :c], x[:, c:]
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn3(self.conv3(self.bn2(self.conv2(out))))
        return torch.cat([x1, out], 1)

    def activate(self, pre: Tensor) -> Tensor:
        # x1 is the non-negative output of the previous unit, so ReLU on the concatenation
        # equals concatenating x1 with ReLU of the branch.
        return channel_shuffle(F.relu(pre), 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.activate(self.preact(x))


class ShuffleV2Down(nn.Module):
    """Stride-2 unit: both branches downsample (dw3x3-1x1 and 1x1-dw3x3-1x1); concat; shuffle."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = cout // 2
        self.conv1 = nn.Conv2d(cin, cin, 3, stride=2, padding=1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv2 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(_ShuffleBase):
    """ShuffleNet V2 for 32x32 images.

    Features: ``feats`` = [stem, stage1..3]; ``preact_feats`` = [stem, each stage's last unit
    as ``cat([x1, branch])`` before ReLU and channel shuffle, as published]; ``pooled_feat`` =
    pooled output of the final 1x1 conv (1024 channels).
    """

    def __init__(self, out_channels: list[int], num_blocks: list[int], num_classes: int = 100) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        cin = 24
        for s in range(3):
            cout = out_channels[s]
            units: list[nn.Module] = [ShuffleV2Down(cin, cout)]
            units += [ShuffleV2Unit(cout) for _ in range(num_blocks[s])]
            self.add_module(f"layer{s + 1}", nn.Sequential(*units))
            cin = cout
        self.conv2 = nn.Conv2d(cin, out_channels[3], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.linear = nn.Linear(out_channels[3], num_classes)
        self._feat_channels = [24, *out_channels[:3]]

    def forward(self, x: Tensor) -> tuple[Tensor, Features]:
        feats, pres = self._stages(x)
        pooled = flatten_pool(F.relu(self.bn2(self.conv2(feats[-1]))))
        return self.linear(pooled), make_features(feats, pres, pooled)


def shufflev1(num_classes: int = 100) -> ShuffleNetV1:
    """ShuffleNet V1, groups 3, stages 240-480-960 with 4-8-4 units."""
    return ShuffleNetV1([240, 480, 960], [4, 8, 4], 3, num_classes)


def shufflev2(num_classes: int = 100) -> ShuffleNetV2:
    """ShuffleNet V2 1x: stages 116-232-464 with 3-7-3 units after each down unit, 1024 head."""
    return ShuffleNetV2([116, 232, 464, 1024], [3, 7, 3], num_classes)


MODELS = {"ShuffleV1": shufflev1, "ShuffleV2": shufflev2}
