"""ImageNet ResNets (``ResNet18/34/50/101``) with torchvision's parameter names.

torchvision's weight files load into these unchanged and give the same logits; the forward
also returns the features of the model contract.
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

__all__ = ["ImageNetResNet", "MODELS", "TORCHVISION_WEIGHTS"]


class ImageNetResNet(ZooModel):
    """ResNet (v1.5: stride on the 3x3 conv of bottlenecks) for 224x224 images.

    Features: ``feats`` = [stem after ReLU (before max-pool), stage1..4]; ``preact_feats``
    with each stage's last residual sum before ReLU; ``pooled_feat`` = pooled stage4.
    ``get_stage_channels()`` returns ``[256, 512, 1024, 2048]`` for every depth, as the
    published code does; :meth:`get_feat_channels` gives the widths of ``feats``.
    """

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: list[int], num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1, c1 = make_res_stage(block, 64, 64, layers[0], 1, "downsample")
        self.layer2, c2 = make_res_stage(block, c1, 128, layers[1], 2, "downsample")
        self.layer3, c3 = make_res_stage(block, c2, 256, layers[2], 2, "downsample")
        self.layer4, c4 = make_res_stage(block, c3, 512, layers[3], 2, "downsample")
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c4, num_classes)
        self._feat_channels = [64, c1, c2, c3, c4]
        init_weights(self)

    def forward(self, x: Tensor) -> tuple[Tensor, Features]:
        f0 = self.relu(self.bn1(self.conv1(x)))
        f1, p1 = run_stage(self.layer1, self.maxpool(f0))
        f2, p2 = run_stage(self.layer2, f1)
        f3, p3 = run_stage(self.layer3, f2)
        f4, p4 = run_stage(self.layer4, f3)
        pooled = flatten_pool(f4)
        return self.fc(pooled), make_features([f0, f1, f2, f3, f4], [f0, p1, p2, p3, p4], pooled)

    def get_stage_channels(self) -> list[int]:
        """``[256, 512, 1024, 2048]`` (the published value, whatever the depth)."""
        return [256, 512, 1024, 2048]

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """Last BatchNorm of each stage's last block (stage1..4)."""
        return [stage_blocks(layer)[-1].last_bn for layer in (self.layer1, self.layer2, self.layer3, self.layer4)]

    def get_feat_modules(self) -> nn.ModuleList:
        return nn.ModuleList([
            self.conv1, self.bn1, self.relu, self.maxpool, self.layer1, self.layer2, self.layer3, self.layer4,
        ])


_SPECS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], list[int]]] = {
    "ResNet18": (BasicBlock, [2, 2, 2, 2]),
    "ResNet34": (BasicBlock, [3, 4, 6, 3]),
    "ResNet50": (Bottleneck, [3, 4, 6, 3]),
    "ResNet101": (Bottleneck, [3, 4, 23, 3]),
}

#: zoo name -> torchvision weights enum member used for pretrained ImageNet teachers (the
#: original ImageNet-1k weights, as the published runs used)
TORCHVISION_WEIGHTS = {
    "ResNet18": "ResNet18_Weights.IMAGENET1K_V1",
    "ResNet34": "ResNet34_Weights.IMAGENET1K_V1",
    "ResNet50": "ResNet50_Weights.IMAGENET1K_V1",
    "ResNet101": "ResNet101_Weights.IMAGENET1K_V1",
}


def _factory(name: str):
    block, layers = _SPECS[name]

    def build(num_classes: int = 1000) -> ImageNetResNet:
        return ImageNetResNet(block, layers, num_classes)

    build.__doc__ = f"ImageNet {name} (torchvision parameter names)."
    return build


MODELS = {name: _factory(name) for name in _SPECS}
