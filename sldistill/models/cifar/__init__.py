"""The CIFAR zoo (32x32 inputs) under the published names.

Every module of this package that defines ``MODELS = {name: factory(num_classes)}`` is found
and merged here, so a new architecture is one new module (and its line in docs/models.md).
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Callable

from torch import nn

__all__ = ["MODELS"]


def _discover() -> dict[str, Callable[[int], nn.Module]]:
    found: dict[str, Callable[[int], nn.Module]] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for name, factory in getattr(module, "MODELS", {}).items():
            if name in found:
                raise ValueError(f"CIFAR model {name!r} is defined twice (second time in {module.__name__})")
            found[name] = factory
    return found


#: published name -> ``factory(num_classes) -> nn.Module``
MODELS: dict[str, Callable[[int], nn.Module]] = _discover()
