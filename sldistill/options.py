"""Declared configuration keys: one :class:`Key` per leaf, next to the code that reads it.

A distiller, a dataset reader or the engine declares the keys it reads as a mapping
``{"SECTION.NAME": Key(default, "one-line description", ...)}``. The configuration schema,
its defaults, its validation and ``docs/configs.md`` are all derived from these
declarations (see :mod:`sldistill.engine.config.schema`); nothing else lists them.

This module imports nothing of the package, so every layer may use it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

__all__ = ["Key", "Keys", "KINDS", "merge_keys"]

#: value kinds a key can have, and how they are described in messages and docs
KINDS = {
    "bool": "bool",
    "int": "int",
    "float": "float",
    "str": "str",
    "list_int": "list of ints",
    "list_float": "list of numbers",
    "list_str": "list of strings",
}


def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, str) for v in value):
            return "list_str"
        return "list_float" if any(isinstance(v, float) for v in value) else "list_int"
    raise TypeError(f"no key kind for default {value!r}")


@dataclass(frozen=True)
class Key:
    """One configuration key: its default, a one-line description and its constraints.

    Args:
        default: the value when neither the file nor the command line sets it (the released
            value for published keys).
        help: one sentence for ``docs/configs.md`` and ``--help`` output.
        kind: one of :data:`KINDS`. When omitted it is inferred from the literal of
            ``default``: ``True`` -> ``bool``, ``4`` -> ``int`` (so ``2.5`` is then refused),
            ``4.0`` -> ``float`` (an int is accepted), ``"x"`` -> ``str``, a list of strings ->
            ``list_str``, a list holding a float -> ``list_float``, any other list (also ``[]``)
            -> ``list_int``. Give it when the literal says something else: ``Key(4, ...,
            kind="float")``, ``Key([], ..., kind="list_str")``.
        choices: the valid values, or ``None``.
        ge, gt, le: numeric bounds (for lists: every element).
        check: an extra ``value -> problem or None`` test (the problem names what is valid).
        increasing: lists only: the values must not decrease.
        nonempty: lists only: at least one element.
        compat: accepted for compatibility with published files but not acted on (the
            trainer lists such keys once at start).

    The default must pass the key's own kind and constraints (:meth:`default_problem`;
    ``register`` refuses a distiller whose default does not).
    """

    default: Any
    help: str
    kind: str = ""
    choices: Sequence[Any] | None = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    check: Callable[[Any], str | None] | None = None
    increasing: bool = False
    nonempty: bool = False
    compat: bool = False

    def __post_init__(self) -> None:
        if not self.kind:
            object.__setattr__(self, "kind", _kind_of(self.default))
        if self.kind not in KINDS:
            raise ValueError(f"Key kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(self.choices))
        if isinstance(self.default, tuple):
            object.__setattr__(self, "default", list(self.default))

    # ---------------------------------------------------------------- description
    def describe(self) -> str:
        """The type in words, e.g. ``'float (an int is accepted)'``."""
        extra = {"float": " (an int is accepted)", "bool": " (true/false)"}.get(self.kind, "")
        return KINDS[self.kind] + extra

    def constraint(self) -> str:
        """The valid values in words ('' when any value of the type is valid)."""
        if self.choices is not None:
            return "one of " + ", ".join(str(c) for c in self.choices)
        parts = []
        if self.ge is not None:
            parts.append(f">= {_num(self.ge)}")
        if self.gt is not None:
            parts.append(f"> {_num(self.gt)}")
        if self.le is not None:
            parts.append(f"<= {_num(self.le)}")
        text = " and ".join(parts)
        if self.kind.startswith("list_") and text:
            text = "each " + text
        if self.nonempty:
            text = ("non-empty" + (", " + text if text else "")).strip()
        if self.increasing:
            text = (text + ", " if text else "") + "increasing"
        return text

    # ---------------------------------------------------------------- checking
    def coerce(self, value: Any) -> Any:
        """``value`` converted to this key's kind (an int for a float key, a tuple for a list).

        Raises:
            TypeError: the value has the wrong type (the message names the expected one).
        """
        kind = self.kind

        def bad() -> TypeError:
            return TypeError(f"expected {self.describe()}, got {type(value).__name__} {value!r}")

        if kind == "bool":
            if isinstance(value, bool):
                return value
            raise bad()
        if kind == "int":
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            raise bad()
        if kind == "float":
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            raise bad()
        if kind == "str":
            if isinstance(value, str):
                return value
            raise bad()
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise bad()
        out: list[Any] = []
        for item in value:
            if kind == "list_str":
                if not isinstance(item, str):
                    raise bad()
                out.append(item)
            elif isinstance(item, bool) or not isinstance(item, (int, float)):
                raise bad()
            elif kind == "list_int":
                if not isinstance(item, int):
                    raise bad()
                out.append(item)
            else:
                out.append(float(item))
        return out

    def default_problem(self) -> str | None:
        """Why the default breaks this key's own kind or constraints, or ``None``."""
        try:
            return self.problem(self.coerce(self.default))
        except TypeError as exc:
            return str(exc)

    def problem(self, value: Any) -> str | None:
        """Why an already coerced ``value`` is not valid, or ``None``."""
        if self.choices is not None:
            if value not in self.choices:
                return f"invalid value {value!r}; valid: {', '.join(str(c) for c in self.choices)}"
            return None
        items = value if isinstance(value, list) else [value]
        if self.kind in ("int", "float", "list_int", "list_float"):
            for v in items:
                if isinstance(v, float) and not math.isfinite(v):
                    return f"must be a finite number, got {value!r}"
                if (self.ge is not None and v < self.ge) or (self.gt is not None and v <= self.gt) or \
                        (self.le is not None and v > self.le):
                    return f"must be {self.constraint()}, got {value!r}"
        if self.nonempty and isinstance(value, list) and not value:
            return f"must be a non-empty {KINDS[self.kind]}, got {value!r}"
        if self.increasing and isinstance(value, list) and any(b < a for a, b in zip(value, value[1:])):
            return f"must be in increasing order, got {value!r}"
        if self.check is not None:
            return self.check(value)
        return None


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


#: a declaration: dotted key -> :class:`Key`
Keys = Mapping[str, Key]


def merge_keys(*groups: tuple[str, Keys]) -> dict[str, Key]:
    """Union of several ``(owner, keys)`` declarations.

    A key declared by two owners must be declared identically (same default and kind); two
    different declarations raise ``ValueError`` naming both owners. A key cannot also be a
    section (``KD.T`` and ``KD.T.X``): that raises ``ValueError`` naming both keys.
    """
    out: dict[str, Key] = {}
    owner_of: dict[str, str] = {}
    for owner, keys in groups:
        for name, key in keys.items():
            if name in out and (out[name].default != key.default or out[name].kind != key.kind):
                raise ValueError(f"config key {name} is declared differently by {owner_of[name]} "
                                 f"({out[name].default!r}, {out[name].kind}) and {owner} "
                                 f"({key.default!r}, {key.kind})")
            out.setdefault(name, key)
            owner_of.setdefault(name, owner)
    for name in out:
        parts = name.split(".")
        for i in range(1, len(parts)):
            above = ".".join(parts[:i])
            if above in out:
                raise ValueError(f"config key {above} (declared by {owner_of[above]}) is a value, so {name} "
                                 f"(declared by {owner_of[name]}) cannot be a key in a section below it; "
                                 "rename one of them")
    return out
