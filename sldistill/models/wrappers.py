"""Models from outside the zoo, wrapped to the ``(logits, features)`` contract.

- ``torchvision:NAME``: any torchvision classification model (``torchvision.models.get_model``);
- ``timm:NAME``: any timm model (timm is optional);
- ``package.module:callable``: a user's own model factory (called with ``num_classes=`` when it
  accepts it).

Features of a wrapped network are found without knowing its architecture: the outputs of the
direct children of its body (``net.features`` when that is a ``Sequential``, else ``net``)
are grouped by spatial size, and the last map of each size (larger than 1x1) is a stage
output. For torchvision ResNets this gives [stem, layer1, ..., layer4], as in the zoo.
``pooled_feat`` is the input of the last ``nn.Linear`` (the classifier). Wrapped networks
expose no pre-activations: ``preact_feats`` holds the same tensors as ``feats``.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any

import torch
from torch import Tensor, nn

from .common import Features, flatten_pool, make_features

__all__ = ["WrappedModel", "create_torchvision", "create_timm", "create_from_callable", "is_external_name"]


def is_external_name(name: str) -> bool:
    """True for ``torchvision:``, ``timm:`` and ``package.module:callable`` names."""
    return ":" in name


def _last_linear_name(net: nn.Module) -> str | None:
    last = None
    for name, m in net.named_modules():
        if isinstance(m, nn.Linear):
            last = name
    return last


class WrappedModel(nn.Module):
    """A classifier returning logits, made to return ``(logits, features)``.

    Args:
        net: the network (its parameters appear under ``wrapped.``; :func:`load_weights`
            also accepts the network's own weight files).
        source: the name it was created from (for messages).
        input_size: image side used to probe feature shapes (32 CIFAR family, 224 ImageNet).
    """

    def __init__(self, net: nn.Module, source: str, input_size: int = 224) -> None:
        super().__init__()
        self.wrapped = net
        self.source = source
        self.input_size = input_size
        body = getattr(net, "features", None)
        prefix = "wrapped.features." if isinstance(body, nn.Sequential) else "wrapped."
        body = body if isinstance(body, nn.Sequential) else net
        # modules are found by name at every forward, so that a conversion that replaces
        # them (SyncBatchNorm, fusing) leaves the feature probes on the modules that run
        self._probe_names = [prefix + n for n, m in body.named_children() if not isinstance(m, nn.Linear)]
        last = _last_linear_name(net)
        self._classifier_name = None if last is None else "wrapped." + last

    @property
    def _probe_modules(self) -> list[nn.Module]:
        return [self.get_submodule(n) for n in self._probe_names]

    @property
    def _classifier(self) -> nn.Module | None:
        return None if self._classifier_name is None else self.get_submodule(self._classifier_name)

    def _run(self, x: Tensor) -> tuple[Any, list[Tensor], list[Tensor]]:
        outs: list[tuple[int, Tensor]] = []
        pooled: list[Tensor] = []
        handles = []
        for i, m in enumerate(self._probe_modules):

            def keep(_m: nn.Module, _inp: Any, o: Any, i: int = i) -> None:
                if isinstance(o, Tensor):
                    outs.append((i, o))

            handles.append(m.register_forward_hook(keep))
        if self._classifier is not None:
            handles.append(self._classifier.register_forward_pre_hook(lambda _m, inp: pooled.append(inp[0])))
        try:
            out = self.wrapped(x)
        finally:
            for h in handles:
                h.remove()
        # the last 4-D map of each spatial size (>1x1), in order
        stage: list[tuple[int, Tensor]] = []
        for i, t in outs:
            if t.dim() != 4 or t.shape[-1] * t.shape[-2] <= 1:
                continue
            if stage and stage[-1][1].shape[-2:] == t.shape[-2:]:
                stage[-1] = (i, t)
            else:
                stage.append((i, t))
        return out, [t for _, t in stage], pooled

    def forward(self, x: Tensor) -> tuple[Tensor, Features]:
        out, feats, pooled = self._run(x)
        if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict):
            return out  # already follows the contract
        logits = out.logits if hasattr(out, "logits") else out  # e.g. torchvision's InceptionOutputs
        if pooled:
            pooled_feat = torch.flatten(pooled[-1], 1)
        elif feats:
            pooled_feat = flatten_pool(feats[-1])
        else:
            pooled_feat = logits
        return logits, make_features(feats, list(feats), pooled_feat)

    @torch.no_grad()
    def feature_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of ``feats`` for one ``input_size`` image (a probe forward in eval mode)."""
        was_training = self.training
        self.eval()
        try:
            p = next(iter(self.parameters()), None)
            x = torch.zeros(1, 3, self.input_size, self.input_size, device=p.device if p is not None else "cpu")
            _, feats, _ = self._run(x)
        finally:
            self.train(was_training)
        return [tuple(t.shape) for t in feats]

    def get_stage_channels(self) -> list[int]:
        """Channels of each ``feats`` entry (from a probe forward)."""
        return [s[1] for s in self.feature_shapes()]

    def get_feat_channels(self) -> list[int]:
        return self.get_stage_channels()

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        raise NotImplementedError(
            f"{self.source}: wrapped models expose no BatchNorm-before-ReLU layers (needed by OFD)"
        )

    def get_feat_modules(self) -> nn.ModuleList:
        """The modules before the classifier whose outputs are scanned for features."""
        return nn.ModuleList(self._probe_modules)


def _suggest(name: str, valid: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name.lower(), [v.lower() for v in valid], n=3, cutoff=0.6)
    lower = {v.lower(): v for v in valid}
    return f" Did you mean: {', '.join(lower[c] for c in close)}?" if close else ""


def create_torchvision(name: str, num_classes: int, input_size: int, weights: Any = None) -> WrappedModel:
    """``torchvision.models.get_model(name, num_classes=...)`` wrapped to the contract."""
    import torchvision

    valid = sorted(torchvision.models.list_models(module=torchvision.models))
    if name not in valid:
        raise ValueError(
            f"unknown torchvision classification model {name!r}.{_suggest(name, valid)} Valid names: {', '.join(valid)}"
        )
    kwargs: dict[str, Any] = {"weights": weights}
    if weights is None:
        kwargs["num_classes"] = num_classes
    if name in ("inception_v3", "googlenet") and weights is None:
        kwargs["aux_logits"] = False
        kwargs["init_weights"] = True
    net = torchvision.models.get_model(name, **kwargs)
    return WrappedModel(net, f"torchvision:{name}", input_size)


def create_timm(name: str, num_classes: int, input_size: int, pretrained: bool = False) -> WrappedModel:
    """``timm.create_model(name, num_classes=...)`` wrapped to the contract (needs timm)."""
    try:
        import timm
    except ImportError as e:
        raise ImportError(f"'timm:{name}' needs the optional package timm: pip install 'sldistill[timm]'") from e
    try:
        net = timm.create_model(name, pretrained=pretrained, num_classes=num_classes)
    except RuntimeError as e:  # timm: "Unknown model (...)"
        raise ValueError(f"timm cannot create {name!r}: {e}") from e
    return WrappedModel(net, f"timm:{name}", input_size)


def create_from_callable(spec: str, num_classes: int, input_size: int) -> nn.Module:
    """Import ``package.module:callable`` and call it (with ``num_classes=`` when accepted).

    A returned module that already provides ``get_stage_channels`` is returned as is
    (it follows the zoo contract); any other module is wrapped in :class:`WrappedModel`.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"model name {spec!r}: expected 'package.module:callable'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"model name {spec!r}: cannot import module {module_name!r}: {e}") from e
    fn: Any = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
    if fn is None or not callable(fn):
        raise ValueError(f"model name {spec!r}: {module_name} has no callable {attr!r}")
    try:
        params = inspect.signature(fn).parameters
        accepts = "num_classes" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    except (TypeError, ValueError):
        accepts = False
    net = fn(num_classes=num_classes) if accepts else fn()
    if not isinstance(net, nn.Module):
        raise ValueError(f"model name {spec!r}: the callable returned {type(net).__name__}, not an nn.Module")
    if hasattr(net, "get_stage_channels"):
        return net
    return WrappedModel(net, spec, input_size)
