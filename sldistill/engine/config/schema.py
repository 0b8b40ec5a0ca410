"""The configuration schema, derived from the registries, and plugin loading.

:func:`schema` is the union of the engine's keys (:data:`.keys.ENGINE_KEYS`), the data
package's (``sldistill.data.DATA_KEYS``) and those every registered distiller declares in its
``config``. Defaults, validation and ``docs/configs.md`` all come from it, so a distiller
registered by a plugin is validated and documented exactly like a built-in one.
"""
from __future__ import annotations

import difflib
import importlib
import os
import sys
import traceback
from importlib import metadata
from typing import Any, Iterable, Sequence

from sldistill.options import Key, merge_keys

from .errors import ConfigError
from .keys import ENGINE_KEYS, SECTION_ORDER
from .node import CfgNode, set_path

__all__ = ["schema", "sections", "defaults_from_schema", "load_plugins", "ENTRY_POINT_GROUPS", "check_value",
           "unknown_key", "entry_point_failures"]

#: entry-point groups whose modules are imported before any config is validated
ENTRY_POINT_GROUPS = ("sldistill.distillers", "sldistill.models", "sldistill.datasets")

_loaded: set[str] = set()
_entry_points_loaded = False
#: group -> "entry point NAME (GROUP: VALUE) failed to load: ERROR", per entry point that failed
_entry_point_failures: dict[str, list[str]] = {}


def _raised_at(exc: BaseException) -> str:
    """``" (raised at FILE:LINE)"``: where an import failed (the last traceback frame outside the
    import machinery; a syntax error's own place), or ``""`` when there is none."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f" (raised at {exc.filename}:{exc.lineno})"
    machinery = os.path.dirname(importlib.__file__)
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith("<") and not f.filename.startswith(machinery)]
    return f" (raised at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def _import_error(name: str, exc: BaseException) -> str:
    """What went wrong importing module ``name``: the module's own error and where it was raised;
    the PYTHONPATH hint only when the module itself (or its package) is not found."""
    text = exc.msg if isinstance(exc, SyntaxError) else str(exc)
    if isinstance(exc, ModuleNotFoundError) and exc.name and (name == exc.name or name.startswith(exc.name + ".")):
        return f"{type(exc).__name__}: {text} (is it on PYTHONPATH, or installed?)"
    return f"{type(exc).__name__}: {text}{_raised_at(exc)}"


def entry_point_failures(group: str) -> list[str]:
    """The entry points of ``group`` that failed to load (skipped with a warning), each as
    ``entry point 'NAME' (GROUP: VALUE) failed to load: ERROR``; for unknown-name errors to mention."""
    return list(_entry_point_failures.get(group, []))


def _load_entry_points() -> list[str]:
    """Import every entry point of :data:`ENTRY_POINT_GROUPS`; one that fails is skipped with a
    one-line warning on stderr (naming it and the error) and recorded for :func:`entry_point_failures`."""
    done = []
    _entry_point_failures.clear()
    for group in ENTRY_POINT_GROUPS:
        for ep in metadata.entry_points(group=group):
            try:
                ep.load()
            except Exception as exc:  # noqa: BLE001 - a broken installed package must not stop every command
                module = ep.value.split(":")[0].strip()
                what = f"entry point {ep.name!r} ({group}: {ep.value}) failed to load: {_import_error(module, exc)}"
                _entry_point_failures.setdefault(group, []).append(what)
                print(f"sldistill: warning: {what}; skipped", file=sys.stderr)
                continue
            done.append(ep.value)
    return done


def load_plugins(modules: Iterable[str] = (), source: str = "<plugins>") -> list[str]:
    """Import user modules (``--plugin``, ``EXPERIMENT.PLUGINS``) and, once, every module of the
    :data:`ENTRY_POINT_GROUPS`, so that what they register is known before validation.

    Returns the module names imported by this call. A module that cannot be imported raises
    :class:`ConfigError` naming where the name came from (``source``: a command-line option such as
    ``--plugin``, else the file whose ``EXPERIMENT.PLUGINS`` names it), the module's own error and
    the file and line that raised it. An entry point that cannot be imported is only a warning.
    """
    global _entry_points_loaded
    done = []
    if not _entry_points_loaded:
        _entry_points_loaded = True
        done += _load_entry_points()
    for name in modules:
        name = str(name).strip()
        if not name or name in _loaded:
            continue
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001
            problem = f"cannot import plugin module {name!r}: {_import_error(name, exc)}"
            if source.startswith("--"):
                raise ConfigError(f"{source} {name}", "", problem) from exc
            raise ConfigError(source, "EXPERIMENT.PLUGINS", problem) from exc
        _loaded.add(name)
        done.append(name)
    return done


def schema() -> dict[str, Key]:
    """Every configuration key, ordered by section (engine sections first, then the methods')."""
    import sldistill.distillers  # noqa: F401 - registers the built-in distillers
    from sldistill.data import DATA_KEYS
    from sldistill.distillers.base import _owners

    load_plugins()
    merged = merge_keys(("engine", ENGINE_KEYS), ("data", DATA_KEYS),
                        *((f"distiller {n}", cls.config) for n, cls in _owners()))
    rank = {s: i for i, s in enumerate(SECTION_ORDER)}
    order = {k: i for i, k in enumerate(merged)}

    def sort_key(k: str) -> tuple:
        top = k.split(".")[0]
        return (rank.get(top, len(rank)), "" if top in rank else top, order[k])

    return {k: merged[k] for k in sorted(merged, key=sort_key)}


def sections(keys: Iterable[str]) -> frozenset[str]:
    """Every dotted prefix of ``keys`` that is a section (``SOLVER``, ``SOLVER.DOT``, ...)."""
    return frozenset(".".join(k.split(".")[:i]) for k in keys for i in range(1, k.count(".") + 1))


def defaults_from_schema(keys: dict[str, Key]) -> CfgNode:
    """A fresh configuration holding every key's default."""
    import copy

    cfg = CfgNode()
    for name, key in keys.items():
        set_path(cfg, name, copy.deepcopy(key.coerce(key.default)))
    return cfg


def check_value(source: str, name: str, value: Any, key: Key) -> Any:
    """``value`` coerced to ``key``'s kind and checked; a :class:`ConfigError` otherwise."""
    try:
        out = key.coerce(value)
    except TypeError as exc:
        raise ConfigError(source, name, str(exc)) from None
    problem = key.problem(out)
    if problem:
        if key.choices is not None:
            lower = {str(c).lower(): str(c) for c in key.choices}
            close = difflib.get_close_matches(str(value).lower(), list(lower), n=3, cutoff=0.6)
            if close:
                problem += f"; did you mean: {', '.join(lower[c] for c in close)}?"
        raise ConfigError(source, name, problem)
    return out


def unknown_key(source: str, name: str, keys: Sequence[str]) -> ConfigError:
    """The error for a key no schema entry has, with the closest valid keys."""
    secs = sections(keys)
    parent = name.rsplit(".", 1)[0] if "." in name else ""
    hits = difflib.get_close_matches(name.lower(), [k.lower() for k in [*keys, *sorted(secs)]], n=3, cutoff=0.6)
    lower = {k.lower(): k for k in [*keys, *sorted(secs)]}
    names = [lower[h] for h in hits]
    if not names and parent in secs:  # same section, similar leaf name, else the section's keys
        siblings = [k for k in keys if k.startswith(parent + ".")]
        leaf = name.rsplit(".", 1)[1].lower()
        close = difflib.get_close_matches(leaf, [s[len(parent) + 1:].lower() for s in siblings], n=3, cutoff=0.6)
        names = [s for s in siblings if s[len(parent) + 1:].lower() in close] or siblings[:8]
    msg = "unknown key"
    if names:
        msg += f"; closest valid keys: {', '.join(names)}"
    return ConfigError(source, name, msg)
