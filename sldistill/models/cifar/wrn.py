"""Wide ResNets ``wrn_16_1``, ``wrn_16_2``, ``wrn_40_1``, ``wrn_40_2`` (pre-activation blocks).

Parameter names as in the published checkpoints: ``block{1,2,3}.layer.{i}.{bn1,conv1,bn2,conv2,
convShortcut}``, final ``bn1`` and ``fc``.
"""
from __future__ import annotations

from typing import cast

import torch.nn.functional as F
from torch import Tensor, nn

from ..common import Features, ZooModel, flatten_pool, init_weights, make_features

__all__ = ["WideResNet", "MODELS"]


class WideBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus a (projected) shortcut.

    When the width or stride changes, the shortcut is a 1x1 convolution of the activated input.
    """

    def __init__(self, cin: int, cout: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = cin == cout
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward_from_bn1(self, x: Tensor, pre: Tensor) -> Tensor:
        """The block given its input ``x`` and ``pre = bn1(x)`` (already computed by the caller)."""
        act = F.relu(pre)
        out = F.relu(self.bn2(self.conv1(act)), inplace=True)
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        return out + (x if self.convShortcut is None else self.convShortcut(act))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_from_bn1(x, self.bn1(x))


class NetworkBlock(nn.Module):
    """``layer``: a Sequential of ``n`` wide blocks (the first one may change width/stride)."""

    def __init__(self, n: int, cin: int, cout: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[WideBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1, drop_rate) for i in range(n)]
        )

    @property
    def first(self) -> WideBlock:
        """The first block (the one that may change width/stride)."""
        return cast(WideBlock, self.layer[0])

    def forward_with_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Output, and ``bn1`` of the first block applied to the input (the previous stage's
        pre-activation feature)."""
        first = self.first
        pre = first.bn1(x)
        out = first.forward_from_bn1(x, pre)
        for block in list(self.layer)[1:]:
            out = block(out)
        return out, pre

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(ZooModel):
    """WRN-depth-width for 32x32 images (depth = 6n + 4).

    Features: ``feats`` = [stem conv, block1, block2, block3] (the blocks output pre-activation
    sums); ``preact_feats`` = [stem, bn(block1), bn(block2), bn(block3)] where each BN is the
    one that the next block (or the final ``bn1``) applies before its ReLU. The published code
    recomputes these BNs a second time (updating running statistics twice in training); here
    each is computed once and reused, which gives the same values.
    """

    def __init__(self, depth: int, widen: int, num_classes: int = 100, drop_rate: float = 0.0) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4 (16, 22, 28, 40, ...), got {depth}")
        n = (depth - 4) // 6
        ch = [16, 16 * widen, 32 * widen, 64 * widen]
        self.stage_channels = ch
        self.conv1 = nn.Conv2d(3, ch[0], 3, padding=1, bias=False)
        self.block1 = NetworkBlock(n, ch[0], ch[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, ch[1], ch[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, ch[2], ch[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.fc = nn.Linear(ch[3], num_classes)
        self._feat_channels = list(ch)
        init_weights(self, linear_zero_bias=True)

    def forward(self, x: Tensor) -> tuple[Tensor, Features]:
        f0 = self.conv1(x)
        f1 = self.block1(f0)
        f2, p1 = self.block2.forward_with_preact(f1)
        f3, p2 = self.block3.forward_with_preact(f2)
        p3 = self.bn1(f3)
        pooled = flatten_pool(F.relu(p3))
        return self.fc(pooled), make_features([f0, f1, f2, f3], [f0, p1, p2, p3], pooled)

    def get_stage_channels(self) -> list[int]:
        """``[16, 16w, 32w, 64w]`` (equal to ``feats``)."""
        return list(self.stage_channels)

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The BNs producing ``preact_feats[1:]``."""
        return [self.block2.first.bn1, self.block3.first.bn1, self.bn1]

    def get_feat_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.conv1, self.block1, self.block2, self.block3])


def _factory(depth: int, widen: int):
    def build(num_classes: int = 100) -> WideResNet:
        return WideResNet(depth, widen, num_classes)

    build.__doc__ = f"WRN-{depth}-{widen}."
    return build


MODELS = {
    "wrn_16_1": _factory(16, 1),
    "wrn_16_2": _factory(16, 2),
    "wrn_40_1": _factory(40, 1),
    "wrn_40_2": _factory(40, 2),
}
