"""The configuration error type."""
from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """An invalid configuration: the message names the source, the dotted key and what is valid.

    Attributes:
        source: the file (or ``<command line>`` / ``<config>``) the bad entry came from.
        key: the dotted key, or ``""`` for problems with the whole file.
    """

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source = str(source)
        self.key = key
        self.problem = problem
        where = f"{self.source}: {key}: " if key else f"{self.source}: "
        super().__init__(where + problem)
