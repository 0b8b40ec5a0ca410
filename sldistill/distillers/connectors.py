"""Connector and auxiliary modules of the feature distillers, and the shape probe.

Layer structure and initialisation follow mdistiller's release (so parameter counts and
state-dict names match the published description): FitNet's convolutional regressor, OFD's
conv+BN connectors, VID's 1x1 regressors, CRD's linear embeddings, ReviewKD's attention
based fusion (ABF).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["probe_features", "probe_pair", "probe_input_size", "ConvReg", "ConvBNConnector", "VIDRegressor",
           "Embed", "ABF"]


def probe_input_size(cfg: Any, input_size: Sequence[int] | None = None) -> tuple[int, int]:
    """Input size for the shape probe: 224x224 for ImageNet, else ``input_size`` when given
    (FITNET's and VID's ``INPUT_SIZE``), else 32x32 (the CIFAR family)."""
    if str(cfg.DATASET.TYPE).lower() == "imagenet":
        return (224, 224)
    if input_size is not None:
        if len(input_size) != 2:
            raise ValueError(f"the probe's INPUT_SIZE must be [H, W], got {list(input_size)!r}")
        return (int(input_size[0]), int(input_size[1]))
    return (32, 32)


def _shapes(feats: dict) -> dict[str, Any]:
    return {
        "feats": [tuple(f.shape) for f in feats.get("feats", [])],
        "preact_feats": [tuple(f.shape) for f in feats.get("preact_feats", feats.get("feats", []))],
        "pooled_feat": tuple(feats["pooled_feat"].shape) if "pooled_feat" in feats else None,
    }


def _place(model: nn.Module, x: Tensor) -> Tensor:
    """``x`` on the device, and in the floating dtype, of ``model``'s first parameter."""
    param = next(iter(model.parameters()), None)
    if param is None:
        return x
    return x.to(param.device, param.dtype if param.is_floating_point() else x.dtype)


@torch.no_grad()
def probe_features(model: nn.Module, input_size: Sequence[int], train_mode: bool = False,
                   image: Tensor | None = None) -> dict[str, Any]:
    """Run ``model`` once (no grad, batch 1) and return the feature shapes:
    ``{"feats": [...], "preact_feats": [...], "pooled_feat": shape}``.

    By default the forward runs in eval mode on a zero image of ``input_size``, so no
    batch-norm statistic moves. ``train_mode=True`` runs it in train mode on ``image`` (a
    random image when ``None``), which updates the model's BatchNorm running statistics as a
    training step would. Either way the model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    if image is None:
        image = torch.randn(1, 3, *input_size) if train_mode else torch.zeros(1, 3, *input_size)
    model.train(train_mode)
    try:
        _, feats = model(_place(model, image))
    finally:
        model.train(was_training)
    return _shapes(feats)


def probe_pair(student: nn.Module, teacher: nn.Module, input_size: Sequence[int],
               train_mode: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """Feature shapes of the student and the teacher (see :func:`probe_features`).

    ``train_mode=True`` is the FitNet/VID releases' probe: both models, in train mode, see the
    same ``torch.randn`` image (drawn on the CPU from the global generator), so both models'
    BatchNorm running statistics move once, as they do when the released constructors run.
    """
    image = torch.randn(1, 3, *input_size) if train_mode else None
    return (probe_features(student, input_size, train_mode, image),
            probe_features(teacher, input_size, train_mode, image))


class ConvReg(nn.Module):
    """FitNet regressor from a student map ``[N, Cs, Hs, Ws]`` to a teacher map ``[N, Ct, Ht, Wt]``:
    stride-2 3x3 conv (Hs = 2Ht), stride-2 4x4 transposed conv (2Hs = Ht) or a valid conv of
    kernel ``1 + Hs - Ht`` (Hs >= Ht); then BN and (optionally) ReLU."""

    def __init__(self, s_shape: Sequence[int], t_shape: Sequence[int], use_relu: bool = True) -> None:
        super().__init__()
        _, s_c, s_h, s_w = s_shape
        _, t_c, t_h, t_w = t_shape
        if s_h == 2 * t_h:
            self.conv: nn.Module = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif 2 * s_h == t_h:
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        elif s_h >= t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
        else:
            raise ValueError(
                f"FitNet regressor: student hint {s_h}x{s_w} cannot map to teacher hint {t_h}x{t_w} "
                "(valid: equal, half or double the teacher's height, or larger)"
            )
        self.bn = nn.BatchNorm2d(t_c)
        self.use_relu = use_relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))
        return F.relu(x) if self.use_relu else x


class ConvBNConnector(nn.Sequential):
    """OFD connector: conv (no bias, 'same' padding, He-normal by fan-out) then BN."""

    def __init__(self, s_channels: int, t_channels: int, kernel_size: int = 1) -> None:
        conv = nn.Conv2d(s_channels, t_channels, kernel_size, stride=1, padding=(kernel_size - 1) // 2, bias=False)
        nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / (kernel_size * kernel_size * t_channels)))
        bn = nn.BatchNorm2d(t_channels)
        super().__init__(conv, bn)


class VIDRegressor(nn.Module):
    """VID: three 1x1 convs (ReLU between) predicting the teacher's map, plus the per-channel
    ``log_scale`` of the predicted variance. As released, ``log_scale`` stays at its initial
    value (it is not handed to the optimiser), so it is a buffer here: saved, not learned."""

    log_scale: Tensor

    def __init__(self, s_channels: int, t_channels: int, init_pred_var: float = 5.0, eps: float = 1e-5) -> None:
        super().__init__()
        self.regressor = nn.Sequential(
            nn.Conv2d(s_channels, t_channels, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(t_channels, t_channels, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(t_channels, t_channels, 1, bias=False),
        )
        init = math.log(math.exp(init_pred_var - eps) - 1.0)
        self.register_buffer("log_scale", torch.full((t_channels,), init))

    def forward(self, x: Tensor) -> Tensor:
        return self.regressor(x)


class Embed(nn.Module):
    """CRD embedding: flatten, linear to ``dim_out``, L2-normalise."""

    def __init__(self, dim_in: int, dim_out: int = 128) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        x = self.linear(x.reshape(x.shape[0], -1))
        return x / x.pow(2).sum(dim=1, keepdim=True).sqrt()


class ABF(nn.Module):
    """ReviewKD attention-based fusion: 1x1 conv+BN to ``mid_channel``; when ``fuse``, blend
    with the (nearest-upsampled) residual from the deeper level through two sigmoid
    attention maps; resize to ``out_shape``; 3x3 conv+BN to ``out_channel``.
    Returns ``(output, residual for the next level)``."""

    def __init__(self, in_channel: int, mid_channel: int, out_channel: int, fuse: bool) -> None:
        super().__init__()
        conv1 = nn.Conv2d(in_channel, mid_channel, 1, bias=False)
        conv2 = nn.Conv2d(mid_channel, out_channel, 3, stride=1, padding=1, bias=False)
        self.conv1 = nn.Sequential(conv1, nn.BatchNorm2d(mid_channel))
        self.conv2 = nn.Sequential(conv2, nn.BatchNorm2d(out_channel))
        self.att_conv = (
            nn.Sequential(nn.Conv2d(mid_channel * 2, 2, kernel_size=1), nn.Sigmoid()) if fuse else None
        )
        nn.init.kaiming_uniform_(conv1.weight, a=1)
        nn.init.kaiming_uniform_(conv2.weight, a=1)

    def forward(self, x: Tensor, residual: Tensor | None = None, shape: int | None = None,
                out_shape: int | None = None) -> tuple[Tensor, Tensor]:
        x = self.conv1(x)
        if self.att_conv is not None:
            if residual is None or shape is None:
                raise ValueError("a fusing ABF needs the residual of the deeper level and its shape")
            residual = F.interpolate(residual, (shape, shape), mode="nearest")
            att = self.att_conv(torch.cat([x, residual], dim=1))
            x = x * att[:, 0:1] + residual * att[:, 1:2]
        if out_shape is not None and x.shape[-1] != out_shape:
            x = F.interpolate(x, (out_shape, out_shape), mode="nearest")
        return self.conv2(x), x
