"""Model names -> networks: ``create(name, num_classes, dataset)``.

``dataset="imagenet"`` selects the ImageNet family; every other dataset type (``cifar100``,
``fashion_mnist``, ``tiny_imagenet``, ``folder``, ...) selects the CIFAR family. The two
families share some names (``ResNet18``, ``ResNet50``, ``MobileNetV2``), which is why the
dataset decides.
"""
from __future__ import annotations

import difflib
import logging

from torch import nn

from . import cifar, imagenet
from .wrappers import create_from_callable, create_timm, create_torchvision, is_external_name

__all__ = ["create", "family_of", "available_models", "resolve_name", "register_model"]

log = logging.getLogger("sldistill.models")


def register_model(name: str, family: str = "cifar"):
    """Decorator: register ``factory(num_classes) -> nn.Module`` as zoo model ``name`` of
    ``family`` (``"cifar"``: 32x32 inputs, every dataset but ImageNet; ``"imagenet"``).

    The model's ``forward(x)`` must return ``(logits, features)`` (see docs/architecture.md);
    ``tests/test_models.py`` checks that contract for every registered name.

    Raises:
        ValueError: ``family`` is not ``cifar`` / ``imagenet``, or ``name`` is taken.
    """
    if family not in ("cifar", "imagenet"):
        raise ValueError(f"register_model: family must be 'cifar' or 'imagenet', got {family!r}")
    table = cifar.MODELS if family == "cifar" else imagenet.MODELS

    def deco(factory):
        if name in table:
            raise ValueError(f"model name {name!r} is already registered in the {family} zoo")
        table[name] = factory
        return factory

    return deco


def family_of(dataset: str) -> str:
    """``"imagenet"`` for the ImageNet dataset type, ``"cifar"`` for every other one."""
    return "imagenet" if str(dataset).lower() == "imagenet" else "cifar"


def available_models(dataset: str = "cifar100") -> list[str]:
    """The zoo names of the family that ``dataset`` selects (aliases included)."""
    if family_of(dataset) == "imagenet":
        return sorted([*imagenet.MODELS, *imagenet.ALIASES])
    return sorted(cifar.MODELS)


def resolve_name(name: str, dataset: str = "cifar100", notice: bool = True) -> str:
    """The zoo name that ``name`` means in ``dataset``'s family (``MobileNetV2`` on ImageNet
    is ``MobileNetV1``, as in the published runs; a one-line notice says so).

    Raises:
        ValueError: unknown name; the message lists the valid names and close matches.
    """
    family = family_of(dataset)
    table = imagenet.MODELS if family == "imagenet" else cifar.MODELS
    if family == "imagenet" and name in imagenet.ALIASES:
        target = imagenet.ALIASES[name]
        if notice:
            log.warning("ImageNet model %r is %r, as in the published ImageNet configs", name, target)
        return target
    if name in table:
        return name
    valid = available_models(dataset)
    lower = {v.lower(): v for v in valid}
    close = difflib.get_close_matches(name.lower(), list(lower), n=3, cutoff=0.6)
    hint = f" Did you mean: {', '.join(lower[c] for c in close)}?" if close else ""
    other = "cifar100" if family == "imagenet" else "imagenet"
    elsewhere = f" ({name!r} exists in the {family_of(other)} family: dataset={other!r}.)" if name in (
        cifar.MODELS if family == "imagenet" else imagenet.MODELS) else ""
    raise ValueError(
        f"unknown {family} model {name!r}.{hint}{elsewhere} Valid {family} names: {', '.join(valid)}; "
        "or 'torchvision:NAME', 'timm:NAME', 'package.module:callable'"
    )


def create(name: str, num_classes: int = 100, dataset: str = "cifar100") -> nn.Module:
    """Build a model whose ``forward(x)`` returns ``(logits, features)``.

    Args:
        name: a published zoo name (``resnet32x4``, ``wrn_40_2``, ``ResNet50``, ...),
            ``torchvision:NAME``, ``timm:NAME`` or ``package.module:callable``.
        num_classes: classifier outputs.
        dataset: the dataset type; ``"imagenet"`` selects the ImageNet family, anything
            else the CIFAR family.

    Returns:
        the model, randomly initialised (use :func:`sldistill.models.load_weights`).

    Raises:
        ValueError: unknown name (with the valid names and close matches) or bad ``num_classes``.
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    input_size = 224 if family_of(dataset) == "imagenet" else 32
    if is_external_name(name):
        kind, _, rest = name.partition(":")
        if kind == "torchvision":
            return create_torchvision(rest, num_classes, input_size)
        if kind == "timm":
            return create_timm(rest, num_classes, input_size)
        return create_from_callable(name, num_classes, input_size)
    family = family_of(dataset)
    resolved = resolve_name(name, dataset)
    table = imagenet.MODELS if family == "imagenet" else cifar.MODELS
    return table[resolved](num_classes)
