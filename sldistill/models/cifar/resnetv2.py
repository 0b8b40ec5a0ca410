"""CIFAR ``ResNet18`` / ``ResNet50``: four stages on 32x32 inputs (3x3 stem, no max-pool).

Shortcuts are named ``shortcut`` and the classifier ``linear``, as in the published
checkpoints.
"""
from __future__ import annotations

from torch import Tensor, nn

from ..common import (
    BasicBlock,
    Bottleneck,
    Features,
    ZooModel,
    flatten_pool,
    init_weights,
    make_features,
    make_res_stage,
    run_stage,
    stage_blocks,
)

__all__ = ["CifarResNetV2", "MODELS"]


class CifarResNetV2(ZooModel):
    """Four-stage ResNet (64-128-256-512 planes) for 32x32 images.

    Features: ``feats`` = [stem, stage1..stage4]; ``preact_feats`` with each stage's last
    residual sum before ReLU; ``pooled_feat`` = pooled stage4.
    ``get_stage_channels()`` returns ``[256, 512, 1024, 2048]`` for both depths, as the
    published code does (for ResNet18 these are not the widths of ``feats``; use
    :meth:`get_feat_channels` for those).
    """

    def __init__(
        self, block: type[BasicBlock] | type[Bottleneck], num_blocks: list[int], num_classes: int = 100
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        c = 64
        self.layer1, c1 = make_res_stage(block, c, 64, num_blocks[0], 1, "shortcut")
        self.layer2, c2 = make_res_stage(block, c1, 128, num_blocks[1], 2, "shortcut")
        self.layer3, c3 = make_res_stage(block, c2, 256, num_blocks[2], 2, "shortcut")
        self.layer4, c4 = make_res_stage(block, c3, 512, num_blocks[3], 2, "shortcut")
        self.linear = nn.Linear(c4, num_classes)
        self._feat_channels = [64, c1, c2, c3, c4]
        init_weights(self)

    def forward(self, x: Tensor) -> tuple[Tensor, Features]:
        f0 = self.bn1(self.conv1(x)).relu()
        f1, p1 = run_stage(self.layer1, f0)
        f2, p2 = run_stage(self.layer2, f1)
        f3, p3 = run_stage(self.layer3, f2)
        f4, p4 = run_stage(self.layer4, f3)
        pooled = flatten_pool(f4)
        return self.linear(pooled), make_features([f0, f1, f2, f3, f4], [f0, p1, p2, p3, p4], pooled)

    def get_stage_channels(self) -> list[int]:
        """``[256, 512, 1024, 2048]`` (the published value, whatever the depth)."""
        return [256, 512, 1024, 2048]

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """Last BatchNorm of each stage's last block (stage1..4)."""
        return [stage_blocks(layer)[-1].last_bn for layer in (self.layer1, self.layer2, self.layer3, self.layer4)]

    def get_feat_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.conv1, self.bn1, self.layer1, self.layer2, self.layer3, self.layer4])


def resnet18(num_classes: int = 100) -> CifarResNetV2:
    """CIFAR ResNet18 (basic blocks 2-2-2-2)."""
    return CifarResNetV2(BasicBlock, [2, 2, 2, 2], num_classes)


def resnet50(num_classes: int = 100) -> CifarResNetV2:
    """CIFAR ResNet50 (bottlenecks 3-4-6-3)."""
    return CifarResNetV2(Bottleneck, [3, 4, 6, 3], num_classes)


MODELS = {"ResNet18": resnet18, "ResNet50": resnet50}
