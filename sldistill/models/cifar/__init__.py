"""The CIFAR zoo (32x32 inputs) under the published names."""
from __future__ import annotations

from typing import Callable

from torch import nn

from . import mobilenetv2, resnet, resnetv2, shufflenet, vgg, wrn

__all__ = ["MODELS"]

#: published name -> ``factory(num_classes) -> nn.Module``
MODELS: dict[str, Callable[[int], nn.Module]] = {
    **resnet.MODELS,
    **resnetv2.MODELS,
    **wrn.MODELS,
    **vgg.MODELS,
    **mobilenetv2.MODELS,
    **shufflenet.MODELS,
}
