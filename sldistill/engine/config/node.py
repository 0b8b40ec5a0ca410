"""The configuration object: a nested ``dict`` with attribute access."""
from __future__ import annotations

import copy
from typing import Any, Iterator, Mapping

__all__ = ["CfgNode", "get_path", "set_path"]


class CfgNode(dict):
    """A nested ``dict`` whose keys can also be read and written as attributes.

    ``cfg.KD.TEMPERATURE`` and ``cfg["KD"]["TEMPERATURE"]`` are the same value. Nested
    mappings are converted to :class:`CfgNode` on construction.
    """

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        for key, value in (data or {}).items():
            self[key] = CfgNode(value) if isinstance(value, Mapping) else value

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}; keys here: {sorted(self)}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = CfgNode(value) if isinstance(value, Mapping) and not isinstance(value, CfgNode) else value

    def __deepcopy__(self, memo: dict) -> "CfgNode":
        return CfgNode({k: copy.deepcopy(v, memo) for k, v in self.items()})

    def walk(self, prefix: str = "") -> Iterator[tuple[str, Any]]:
        """Yield ``(dotted.key, value)`` for every leaf."""
        for key, value in self.items():
            name = f"{prefix}{key}"
            if isinstance(value, CfgNode):
                yield from value.walk(name + ".")
            else:
                yield name, value

    def to_dict(self) -> dict:
        """A plain nested ``dict`` copy (for YAML/JSON dumps)."""
        return {k: v.to_dict() if isinstance(v, CfgNode) else copy.deepcopy(v) for k, v in self.items()}


def set_path(cfg: dict, dotted: str, value: Any) -> None:
    """``cfg[A][B][C] = value`` for ``dotted = "A.B.C"``, creating sections as needed."""
    node = cfg
    parts = dotted.split(".")
    for p in parts[:-1]:
        if p not in node:
            node[p] = CfgNode()
        node = node[p]
    node[parts[-1]] = value


def get_path(cfg: Mapping[str, Any], dotted: str) -> Any:
    """``cfg[A][B][C]`` for ``dotted = "A.B.C"`` (``KeyError`` when absent)."""
    node: Any = cfg
    for p in dotted.split("."):
        node = node[p]
    return node
