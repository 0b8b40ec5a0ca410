"""CIFAR VGG with BatchNorm: ``vgg8``, ``vgg11``, ``vgg13``, ``vgg16``, ``vgg19``.

Five conv blocks ``block0``..``block4`` (conv-BN-ReLU repeated, the last ReLU of each block
left out so the block ends in its BN), max-pools between blocks, global average pool and a
linear ``classifier``.
"""
from __future__ import annotations

from typing import cast

import torch.nn.functional as F
from torch import Tensor, nn

from ..common import Features, ZooModel, flatten_pool, init_weights, make_features

__all__ = ["VGG", "MODELS"]

_CFGS: dict[str, list[list[int]]] = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}


def _block(cin: int, widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Conv2d(cin, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        cin = w
    return nn.Sequential(*layers[:-1])


class VGG(ZooModel):
    """VGG-BN for 32x32 (and 64x64) images.

    Features: ``feats`` = the five block outputs after ReLU; ``preact_feats`` = [feats[0],
    block1..block4 outputs before ReLU]; ``pooled_feat`` = pooled block4. As published, the
    max-pool between block3 and block4 is applied only to 64-pixel-high inputs (so 32x32
    inputs give 4x4 maps at both block3 and block4).
    """

    # registered by name in __init__ (one per entry of the config)
    block0: nn.Sequential
    block1: nn.Sequential
    block2: nn.Sequential
    block3: nn.Sequential
    block4: nn.Sequential

    def __init__(self, cfg: list[list[int]], num_classes: int = 100) -> None:
        super().__init__()
        cin = 3
        for i, widths in enumerate(cfg):
            self.add_module(f"block{i}", _block(cin, widths))
            cin = widths[-1]
        self.pool0 = nn.MaxPool2d(2, 2)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.pool3 = nn.MaxPool2d(2, 2)
        self.pool4 = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)
        self._feat_channels = [w[-1] for w in cfg]
        init_weights(self, linear_std=0.01)

    def forward(self, x: Tensor) -> tuple[Tensor, Features]:
        h = x.shape[2]
        f0 = F.relu(self.block0(x))
        p1 = self.block1(self.pool0(f0))
        f1 = F.relu(p1)
        p2 = self.block2(self.pool1(f1))
        f2 = F.relu(p2)
        p3 = self.block3(self.pool2(f2))
        f3 = F.relu(p3)
        p4 = self.block4(self.pool3(f3) if h == 64 else f3)
        f4 = F.relu(p4)
        pooled = flatten_pool(f4)
        return self.classifier(pooled), make_features([f0, f1, f2, f3, f4], [f0, p1, p2, p3, p4], pooled)

    def get_stage_channels(self) -> list[int]:
        """Output channels of block0..block4 (equal to ``feats``)."""
        return list(self._feat_channels)

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The final BN of block1..block4."""
        return [cast(nn.BatchNorm2d, block[-1]) for block in (self.block1, self.block2, self.block3, self.block4)]

    def get_feat_modules(self) -> nn.ModuleList:
        return nn.ModuleList([
            self.block0, self.pool0, self.block1, self.pool1, self.block2, self.pool2,
            self.block3, self.pool3, self.block4, self.pool4,
        ])


def _factory(name: str):
    def build(num_classes: int = 100) -> VGG:
        return VGG(_CFGS[name], num_classes)

    build.__doc__ = f"{name} with BatchNorm."
    return build


MODELS = {name: _factory(name) for name in _CFGS}
