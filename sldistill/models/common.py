"""Pieces shared by the model zoo: the feature contract, weight init, residual blocks.

Every zoo model's ``forward(x)`` returns ``(logits, features)`` with
``features = {"feats": [...], "preact_feats": [...], "pooled_feat": tensor}`` and provides
``get_stage_channels()``, ``get_bn_before_relu()`` and ``get_feat_modules()`` for the
feature distillers (see :class:`ZooModel`).
"""
from __future__ import annotations

from typing import Any, ClassVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Features",
    "ZooModel",
    "make_features",
    "init_weights",
    "BasicBlock",
    "Bottleneck",
    "run_stage",
    "stage_blocks",
    "conv_bn",
    "make_res_stage",
    "flatten_pool",
]

Features = dict[str, Any]


def make_features(feats: list[Tensor], preact_feats: list[Tensor], pooled: Tensor) -> Features:
    """The features dict of the model contract."""
    return {"feats": feats, "preact_feats": preact_feats, "pooled_feat": pooled}


class ZooModel(nn.Module):
    """Base class of the zoo models: documents the contract the feature distillers rely on.

    Subclasses implement ``forward`` (returning ``(logits, features)``) and the three
    methods below.
    """

    _feat_channels: list[int]  # set by each subclass's __init__

    def get_stage_channels(self) -> list[int]:
        """Channels of the stages, as the published code reports them (see each model)."""
        raise NotImplementedError

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The BatchNorm layers producing ``preact_feats[1:]`` (what OFD reads)."""
        raise NotImplementedError(f"{type(self).__name__} has no single BatchNorm before each stage's ReLU")

    def get_feat_modules(self) -> nn.ModuleList:
        """The modules that produce the features (everything before the classifier)."""
        raise NotImplementedError

    def get_feat_channels(self) -> list[int]:
        """Channels of each entry of ``features["feats"]`` (always consistent with them)."""
        return list(self._feat_channels)


def init_weights(model: nn.Module, linear_std: float | None = None, linear_zero_bias: bool = False) -> None:
    """Kaiming-normal (fan_out, ReLU) convolutions, unit/zero norms, optional N(0, std) linears.

    Convolution biases are zeroed. ``linear_std=None`` keeps PyTorch's default linear init.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear_std is not None:
                nn.init.normal_(m.weight, 0.0, linear_std)
            if linear_std is not None or linear_zero_bias:
                nn.init.zeros_(m.bias)


def conv_bn(cin: int, cout: int, kernel: int = 1, stride: int = 1) -> nn.Sequential:
    """``Sequential(conv (no bias), BatchNorm)``: the projection shortcut of the ResNets."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout)
    )


class _Residual(nn.Module):
    """A residual block split into ``preact`` (sum before the ReLU) and ``activate``."""

    expansion: ClassVar[int] = 1
    _shortcut_name: str

    def _register_shortcut(self, shortcut: nn.Module | None, name: str) -> None:
        self._shortcut_name = name
        if shortcut is not None:
            self.add_module(name, shortcut)
        else:
            setattr(self, name, None)

    def _shortcut(self, x: Tensor) -> Tensor:
        sc = getattr(self, self._shortcut_name)
        return x if sc is None else sc(x)

    @property
    def last_bn(self) -> nn.BatchNorm2d:  # pragma: no cover - abstract
        """The BatchNorm whose output is added to the shortcut."""
        raise NotImplementedError

    def preact(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def activate(self, pre: Tensor) -> Tensor:
        return F.relu(pre)

    def forward(self, x: Tensor) -> Tensor:
        return self.activate(self.preact(x))


class BasicBlock(_Residual):
    """Two 3x3 convolutions with BatchNorm; shortcut registered as ``shortcut_name``."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, shortcut: nn.Module | None = None,
                 shortcut_name: str = "downsample") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self._register_shortcut(shortcut, shortcut_name)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        """The BatchNorm whose output is added to the shortcut."""
        return self.bn2

    def preact(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return self.bn2(self.conv2(out)) + self._shortcut(x)


class Bottleneck(_Residual):
    """1x1 -> 3x3 (strided) -> 1x1 (x4 channels), each with BatchNorm."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, shortcut: nn.Module | None = None,
                 shortcut_name: str = "downsample") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self._register_shortcut(shortcut, shortcut_name)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        """The BatchNorm whose output is added to the shortcut."""
        return self.bn3

    def preact(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        return self.bn3(self.conv3(out)) + self._shortcut(x)


def stage_blocks(stage: nn.Sequential) -> list[_Residual]:
    """The residual blocks of a stage built by :func:`make_res_stage`."""
    return cast("list[_Residual]", list(stage))


def run_stage(stage: nn.Sequential, x: Tensor) -> tuple[Tensor, Tensor]:
    """Run a stage of blocks; return its output and the last block's pre-activation."""
    blocks = stage_blocks(stage)
    for block in blocks[:-1]:
        x = block(x)
    pre = blocks[-1].preact(x)
    return blocks[-1].activate(pre), pre


def make_res_stage(block: type[BasicBlock] | type[Bottleneck], inplanes: int, planes: int, num_blocks: int, stride: int,
                   shortcut_name: str) -> tuple[nn.Sequential, int]:
    """A stage of ``num_blocks`` blocks; a projection shortcut where the shape changes."""
    out = planes * block.expansion
    shortcut = conv_bn(inplanes, out, 1, stride) if (stride != 1 or inplanes != out) else None
    layers: list[nn.Module] = [block(inplanes, planes, stride, shortcut, shortcut_name)]
    layers += [block(out, planes, 1, None, shortcut_name) for _ in range(1, num_blocks)]
    return nn.Sequential(*layers), out


def flatten_pool(x: Tensor) -> Tensor:
    """Global average pool to ``[N, C]`` (channels_last-safe; equals the published fixed-size pools)."""
    return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
