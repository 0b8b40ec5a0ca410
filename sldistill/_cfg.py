"""Reading optional keys from a configuration object (shared by models, data and distillers).

The layers below the engine receive the config as a nested mapping (a ``CfgNode``) or any
object with attribute access; they never import :mod:`sldistill.engine`.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["cfg_get", "cfg_value"]

_MISSING = object()


def cfg_get(cfg: Any, dotted: str, default: Any = None) -> Any:
    """``cfg.A.B.C`` for ``dotted="A.B.C"``, or ``default`` when any level is missing."""
    node = cfg
    for key in dotted.split("."):
        node = node.get(key, _MISSING) if isinstance(node, Mapping) else getattr(node, key, _MISSING)
        if node is _MISSING:
            return default
    return node


def cfg_value(cfg: Any, dotted: str) -> Any:
    """``cfg.A.B.C`` for ``dotted="A.B.C"`` of a full (validated) config; a missing key is a
    ``KeyError`` naming it (the default lives in the key's declaration, not here)."""
    value = cfg_get(cfg, dotted, _MISSING)
    if value is _MISSING:
        raise KeyError(f"config has no key {dotted} (build configs with sldistill.engine.config.load_config or "
                       "get_defaults, which hold every declared key)")
    return value
