"""The ImageNet zoo (224x224 inputs) under the published names."""
from __future__ import annotations

from typing import Callable

from torch import nn

from . import mobilenetv1, resnet
from .resnet import TORCHVISION_WEIGHTS

__all__ = ["MODELS", "ALIASES", "TORCHVISION_WEIGHTS"]

#: published name -> ``factory(num_classes) -> nn.Module``
MODELS: dict[str, Callable[[int], nn.Module]] = {**resnet.MODELS, **mobilenetv1.MODELS}

#: names the published ImageNet configs use for a different network
ALIASES: dict[str, str] = {"MobileNetV2": "MobileNetV1"}
