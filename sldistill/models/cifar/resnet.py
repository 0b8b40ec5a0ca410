"""CIFAR ResNets of the published zoo: ``resnet8`` ... ``resnet110``, ``resnet8x4``, ``resnet32x4``.

Three stages of basic blocks on 32x32 inputs (depth = 6n + 2), projection shortcuts named
``downsample``, classifier ``fc``: the parameter names of the published checkpoints.
"""
from __future__ import annotations

from torch import Tensor, nn

from ..common import (
    BasicBlock,
    Features,
    ZooModel,
    flatten_pool,
    init_weights,
    make_features,
    make_res_stage,
    run_stage,
    stage_blocks,
)

__all__ = ["CifarResNet", "MODELS"]


class CifarResNet(ZooModel):
    """ResNet for 32x32 images.

    Args:
        depth: 6n + 2 (8, 14, 20, 32, 44, 56, 110).
        filters: channels of the stem and of the three stages, e.g. ``[16, 16, 32, 64]``.
        num_classes: classifier outputs.

    Features: ``feats`` = [stem, stage1, stage2, stage3] (after ReLU); ``preact_feats`` = the
    same with each stage's last residual sum before its ReLU (the stem entry is post-ReLU, as
    published); ``pooled_feat`` = globally pooled stage3.
    """

    def __init__(self, depth: int, filters: list[int], num_classes: int = 100) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (8, 14, 20, ...), got {depth}")
        n = (depth - 2) // 6
        self.stage_channels = list(filters)
        self.conv1 = nn.Conv2d(3, filters[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(filters[0])
        self.relu = nn.ReLU(inplace=True)
        c = filters[0]
        self.layer1, c = make_res_stage(BasicBlock, c, filters[1], n, 1, "downsample")
        self.layer2, c = make_res_stage(BasicBlock, c, filters[2], n, 2, "downsample")
        self.layer3, c = make_res_stage(BasicBlock, c, filters[3], n, 2, "downsample")
        self.fc = nn.Linear(c, num_classes)
        self._feat_channels = list(filters)
        init_weights(self)

    def forward(self, x: Tensor) -> tuple[Tensor, Features]:
        f0 = self.relu(self.bn1(self.conv1(x)))
        f1, p1 = run_stage(self.layer1, f0)
        f2, p2 = run_stage(self.layer2, f1)
        f3, p3 = run_stage(self.layer3, f2)
        pooled = flatten_pool(f3)
        return self.fc(pooled), make_features([f0, f1, f2, f3], [f0, p1, p2, p3], pooled)

    def get_stage_channels(self) -> list[int]:
        """``[stem, stage1, stage2, stage3]`` channels (equal to ``feats``)."""
        return list(self.stage_channels)

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """Last BatchNorm of each stage's last block (stage1..3)."""
        return [stage_blocks(layer)[-1].last_bn for layer in (self.layer1, self.layer2, self.layer3)]

    def get_feat_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.conv1, self.bn1, self.relu, self.layer1, self.layer2, self.layer3])


def _factory(depth: int, filters: list[int]):
    def build(num_classes: int = 100) -> CifarResNet:
        return CifarResNet(depth, filters, num_classes)

    build.__doc__ = f"CIFAR ResNet, depth {depth}, channels {filters}."
    return build


MODELS = {
    "resnet8": _factory(8, [16, 16, 32, 64]),
    "resnet14": _factory(14, [16, 16, 32, 64]),
    "resnet20": _factory(20, [16, 16, 32, 64]),
    "resnet32": _factory(32, [16, 16, 32, 64]),
    "resnet44": _factory(44, [16, 16, 32, 64]),
    "resnet56": _factory(56, [16, 16, 32, 64]),
    "resnet110": _factory(110, [16, 16, 32, 64]),
    "resnet8x4": _factory(8, [32, 64, 128, 256]),
    "resnet32x4": _factory(32, [32, 64, 128, 256]),
}
