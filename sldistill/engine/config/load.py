"""Resolving a configuration: base defaults, then the YAML file, then overrides; one check.

:func:`load_config` imports the plugins the file, the overrides or the caller name, builds
the schema from the registries (:mod:`.schema`), starts from the defaults of the chosen base
codebase, merges the file and then the command-line overrides (each value checked once, as
it is merged: unknown keys, wrong types and bad values raise :class:`ConfigError` naming the
source, the dotted key and what is valid), applies the base's implicit behaviour and the
published ``SOLVER.TRAINER`` aliases, and checks the few rules that relate keys.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from .errors import ConfigError
from .files import resolve_config_path
from .keys import BASES
from .node import CfgNode, get_path, set_path
from .schema import check_value, defaults_from_schema, load_plugins, schema, sections, unknown_key

__all__ = ["get_defaults", "load_config", "parse_overrides", "merge_overrides", "validate_config",
           "apply_logit_stand", "format_config", "save_config", "run_dir", "run_name", "unreleased_reason",
           "read_yaml"]


def get_defaults(base: str | None = None) -> CfgNode:
    """A fresh configuration holding every key's default (of ``base``'s codebase when given)."""
    cfg = defaults_from_schema(schema())
    if base is not None:
        name = _check_base(base, "<defaults>")
        for key, value in BASES[name]["defaults"].items():
            set_path(cfg, key, check_value("<defaults>", key, value, schema()[key]))
        cfg.BASE = name
    return cfg


def _check_base(name: Any, source: str) -> str:
    if not isinstance(name, str) or name not in BASES:
        import difflib

        close = difflib.get_close_matches(str(name), list(BASES), n=3)
        raise ConfigError(source, "BASE", f"invalid value {name!r}; valid: {', '.join(BASES)}"
                          + (f"; did you mean: {', '.join(close)}?" if close else ""))
    return name


# ---------------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """Safe YAML loader that reads ``1e-4`` (no dot) as a float, as YAML 1.2 does, and refuses a
    key that appears twice in one mapping (PyYAML would silently keep the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark, f"key {key!r} appears twice (line "
                    f"{seen[key].line + 1} and line {key_node.start_mark.line + 1}); keep one", key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def read_yaml(path: Path) -> dict[str, Any]:
    """The top-level mapping of a config file; an empty file or one that is not a mapping of
    sections is a :class:`ConfigError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise FileNotFoundError(f"cannot read config file {path}: {e}") from e
    try:
        data = _yaml_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(str(path), "", f"not valid YAML: {e}") from None
    if data is None:
        raise ConfigError(str(path), "", "the file is empty (or only comments); a config file sets at least "
                          "one key, e.g. DISTILLER.TYPE (to train the defaults, omit --cfg)")
    if not isinstance(data, dict):
        raise ConfigError(str(path), "", f"expected a mapping of sections at the top level, got {type(data).__name__}")
    return data


# ---------------------------------------------------------------------------------- overrides

_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def _split_overrides(items: Sequence[str], source: str) -> list[tuple[str, str]]:
    """``KEY VALUE`` pairs and ``KEY=VALUE`` items -> ``(key, raw text)`` pairs."""
    out: list[tuple[str, str]] = []
    items = [str(i) for i in items]
    i = 0
    while i < len(items):
        item = items[i]
        if "=" in item and _KEY_RE.match(item.split("=", 1)[0].strip()):
            key, raw = (s.strip() for s in item.split("=", 1))
            i += 1
        else:
            key = item.strip()
            if not _KEY_RE.match(key):
                raise ConfigError(source, key, "expected a dotted KEY (e.g. SOLVER.LR) followed by a value, "
                                  "or KEY=VALUE")
            if i + 1 >= len(items):
                raise ConfigError(source, key, "override has no value (use 'KEY VALUE' or 'KEY=VALUE')")
            raw = items[i + 1]
            i += 2
        out.append((key, raw))
    return out


def _parse_raw(raw: str, kind: str) -> Any:
    try:
        parsed = _yaml_load(raw)
    except yaml.YAMLError:
        return raw
    if kind == "str":
        return parsed if isinstance(parsed, str) else raw  # '123', 'true' stay strings
    if kind == "list_str" and isinstance(parsed, str):
        return [s.strip() for s in parsed.split(",") if s.strip()]
    return parsed


def parse_overrides(items: Sequence[str], source: str = "<command line>") -> list[tuple[str, Any]]:
    """Parse command-line overrides into checked ``(dotted key, typed value)`` pairs.

    Accepts the published ``KEY VALUE`` pairs (``SOLVER.LR 0.1``) and ``KEY=VALUE`` items,
    mixed. Values are read as YAML scalars or lists (``[150,180]``, ``true``, ``1e-4``) and
    converted to the key's type; string keys keep the text as typed.
    """
    keys = schema()
    secs = sections(keys)
    out = []
    for key, raw in _split_overrides(items, source):
        if key not in keys:
            if key in secs:
                raise ConfigError(source, key, "is a section; override its keys, e.g. "
                                  + ", ".join(k for k in keys if k.startswith(key + "."))[:200])
            raise unknown_key(source, key, list(keys))
        spec = keys[key]
        out.append((key, check_value(source, key, _parse_raw(raw, spec.kind), spec)))
    return out


def merge_overrides(cfg: CfgNode, overrides: Sequence[str] | Sequence[tuple[str, Any]],
                    source: str = "<command line>") -> set[str]:
    """Apply overrides (raw strings or parsed pairs) to ``cfg`` in place; return the keys set."""
    keys = schema()
    if overrides and isinstance(overrides[0], str):
        pairs = parse_overrides([str(o) for o in overrides], source)
    else:
        pairs = [(str(k), v) for k, v in overrides]  # type: ignore[str-unpack]
    done: set[str] = set()
    for key, value in pairs:
        if key not in keys:
            raise unknown_key(source, key, list(keys))
        set_path(cfg, key, check_value(source, key, value, keys[key]))
        done.add(key)
    return done


def _merge(cfg: CfgNode, data: Mapping[str, Any], source: str, keys: dict, secs: frozenset[str],
           explicit: set[str], prefix: str = "") -> None:
    """Merge a nested mapping into ``cfg``, checking each key and value once."""
    for k, v in data.items():
        key = f"{prefix}{k}"
        if not isinstance(k, str):
            raise ConfigError(source, key, "keys must be strings")
        if key in secs:
            if not isinstance(v, Mapping):
                raise ConfigError(source, key, f"expected a section (mapping), got {type(v).__name__} {v!r}")
            _merge(cfg, v, source, keys, secs, explicit, key + ".")
        elif key in keys:
            if isinstance(v, Mapping):
                raise ConfigError(source, key, f"expected {keys[key].describe()}, got a mapping")
            set_path(cfg, key, check_value(source, key, v, keys[key]))
            explicit.add(key)
        else:
            raise unknown_key(source, key, list(keys))


def _plugins_named(data: Mapping[str, Any], overrides: Sequence[str]) -> list[str]:
    """The modules ``EXPERIMENT.PLUGINS`` names in a file's raw data and in raw overrides."""
    names: list[str] = []
    raw = data.get("EXPERIMENT", {}).get("PLUGINS", []) if isinstance(data.get("EXPERIMENT"), Mapping) else []
    names += [raw] if isinstance(raw, str) else [str(x) for x in raw or []]
    for key, value in _split_overrides(overrides, "<command line>"):
        if key == "EXPERIMENT.PLUGINS":
            parsed = _parse_raw(value, "list_str")
            names += [parsed] if isinstance(parsed, str) else [str(x) for x in parsed]
    return names


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (), *, base: str | None = None,
                plugins: Sequence[str] = ()) -> CfgNode:
    """Resolve a configuration: base defaults, then the YAML file, then overrides; checked.

    Args:
        path: a YAML file (published or ours; see :func:`resolve_config_path`), or ``None``
            for the defaults alone.
        overrides: command-line items, ``KEY VALUE`` pairs and/or ``KEY=VALUE``.
        base: which codebase's defaults to start from (a key of :data:`BASES`). ``None``: a
            ``BASE`` override, else the file's top-level ``BASE`` key, else ``"sld"``. The
            base used is recorded in ``cfg.BASE``, so a saved config reloads to the same values.
        plugins: modules to import first (``--plugin``), besides ``EXPERIMENT.PLUGINS``.

    Raises:
        ConfigError: unknown key / wrong type / bad value, naming the file and the key.
        FileNotFoundError: no such file.
    """
    source, data = "<defaults>", {}
    if path is not None:
        resolved = resolve_config_path(path)
        source, data = str(resolved), read_yaml(resolved)
    named = list(dict.fromkeys([*plugins, *_plugins_named(data, overrides)]))
    load_plugins(named, source)
    pairs = parse_overrides(overrides)
    chosen = base if base is not None else next((v for k, v in reversed(pairs) if k == "BASE"), None)
    if chosen is None:
        chosen = data.get("BASE", "sld")
    name = _check_base(chosen, "<command line>" if base is not None else source)

    keys = schema()
    cfg = get_defaults(name)
    explicit: set[str] = set()
    _merge(cfg, data, source, keys, sections(keys), explicit)
    explicit |= merge_overrides(cfg, pairs)
    cfg.BASE = name
    for key, value in BASES[name]["implicit"].get(cfg.DISTILLER.TYPE, {}).items():
        if key not in explicit:
            set_path(cfg, key, value)
    if named:
        cfg.EXPERIMENT.PLUGINS = list(dict.fromkeys([*cfg.EXPERIMENT.PLUGINS, *named]))
    if cfg.SOLVER.TRAINER in ("dot", "crd_dot"):  # the published DOT trainers: DOT is the optimizer
        cfg.SOLVER.TYPE = "DOT"
    _check_relations(cfg, source)
    return cfg


def _check_relations(cfg: CfgNode, source: str) -> None:
    """The rules that relate several keys."""
    epochs = cfg.SOLVER.EPOCHS
    if cfg.SOLVER.WARMUP_EPOCHS > epochs:
        raise ConfigError(source, "SOLVER.WARMUP_EPOCHS",
                          f"warm-up of {cfg.SOLVER.WARMUP_EPOCHS} epochs exceeds SOLVER.EPOCHS {epochs}")
    if cfg.SOLVER.AMP == "fp16" and cfg.EXPERIMENT.DEVICE == "cpu":
        raise ConfigError(source, "SOLVER.AMP", "fp16 needs a CUDA device (EXPERIMENT.DEVICE is 'cpu'); "
                          "valid on CPU: none, bf16")


def validate_config(cfg: Mapping[str, Any], source: str = "<config>") -> None:
    """Check every key, type and value of a full configuration built elsewhere (every key present)."""
    load_plugins(list(cfg.get("EXPERIMENT", {}).get("PLUGINS", []) or []), source)
    keys = schema()
    secs = sections(keys)
    seen: set[str] = set()

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for k, v in node.items():
            key = f"{prefix}{k}"
            if isinstance(v, Mapping) and key in secs:
                walk(v, key + ".")
            elif key in keys and not isinstance(v, Mapping):
                check_value(source, key, v, keys[key])
                seen.add(key)
            elif key in secs:
                raise ConfigError(source, key, f"expected a section (mapping), got {v!r}")
            elif key in keys:
                raise ConfigError(source, key, f"expected {keys[key].describe()}, got a mapping")
            else:
                raise unknown_key(source, key, list(keys))

    walk(cfg, "")
    missing = [k for k in keys if k not in seen]
    if missing:
        raise ConfigError(source, missing[0], "missing key" + (f" (and {len(missing) - 1} more)"
                                                               if len(missing) > 1 else ""))
    _check_relations(CfgNode(cfg), source)


def unreleased_reason(cfg: Mapping[str, Any]) -> str | None:
    """Why a valid configuration cannot be trained (a published name no release implements), or ``None``."""
    from sldistill.distillers.base import Unreleased, get_distiller_class, unreleased_message

    name = str(get_path(cfg, "DISTILLER.TYPE"))
    if issubclass(get_distiller_class(name), Unreleased):
        return unreleased_message(name)
    if get_path(cfg, "SOLVER.TRAINER") == "aug":
        return ("SOLVER.TRAINER 'aug' (the DKD_aug trainer of the MLKD release) is implemented by no release; "
                "the views come from the distiller, so remove the key or use 'base'")
    return None


def apply_logit_stand(cfg: CfgNode, base_temp: float = 2.0, kd_weight: float = 9.0) -> CfgNode:
    """The logit-standardization release's ``--logit-stand --base-temp T --kd-weight W`` recipe.

    For ``DISTILLER.TYPE`` KD, DKD or MLKD (the release ignores other types, ``KD_ours``
    included): ``EXPERIMENT.LOGIT_STAND`` true, and KD/MLKD: ``KD.TEMPERATURE = T``,
    ``KD.LOSS.KD_WEIGHT = W``; DKD: ``DKD.ALPHA *= W``, ``DKD.BETA *= W``, ``DKD.T = T``.
    Modifies and returns ``cfg``.
    """
    dtype = cfg.DISTILLER.TYPE
    if dtype not in ("KD", "DKD", "MLKD"):
        return cfg
    cfg.EXPERIMENT.LOGIT_STAND = True
    if dtype in ("KD", "MLKD"):
        cfg.KD.TEMPERATURE = float(base_temp)
        cfg.KD.LOSS.KD_WEIGHT = float(kd_weight)
    else:
        cfg.DKD.ALPHA = float(cfg.DKD.ALPHA * kd_weight)
        cfg.DKD.BETA = float(cfg.DKD.BETA * kd_weight)
        cfg.DKD.T = float(base_temp)
    return cfg


class _Dumper(yaml.SafeDumper):
    """Block style for sections, flow style (``[1, 2]``) for lists."""


_Dumper.add_representer(list, lambda d, data: d.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True))
_Dumper.add_representer(CfgNode, lambda d, data: d.represent_dict(dict(data)))


def format_config(cfg: Mapping[str, Any]) -> str:
    """Readable YAML of a configuration (sections in order, lists inline); loads back equal."""
    data = cfg.to_dict() if isinstance(cfg, CfgNode) else copy.deepcopy(dict(cfg))
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)


def save_config(cfg: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``cfg`` as YAML (creating folders); :func:`load_config` of the file gives it back."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# resolved sldistill configuration\n" + format_config(cfg), encoding="utf-8")
    return out


#: what a default run name tells apart: runs that differ here never share a folder
IDENTITY_KEYS = ("DISTILLER.TYPE", "DISTILLER.TEACHER", "DISTILLER.STUDENT", "DATASET.TYPE", "DATASET.ROOT",
                 "DATASET.TRAIN_SUBSET", "EXPERIMENT.SEED")


def run_name(cfg: Mapping[str, Any]) -> str:
    """``EXPERIMENT.NAME``, or else ``EXPERIMENT.TAG`` plus a short hash of the method, the
    models, the data and the seed (:data:`IDENTITY_KEYS`): a file's TAG names the published
    experiment, and the hash keeps your own data, models or seeds out of its folder."""
    import hashlib

    exp = cfg["EXPERIMENT"]
    if exp["NAME"]:
        return str(exp["NAME"])
    ident = "|".join(f"{k}={get_path(cfg, k)!r}" for k in IDENTITY_KEYS)
    return f"{exp['TAG']}-{hashlib.sha1(ident.encode()).hexdigest()[:6]}"


def run_dir(cfg: Mapping[str, Any]) -> Path:
    """The run's output folder: ``LOG.PREFIX / EXPERIMENT.PROJECT /`` :func:`run_name`."""
    return Path(cfg["LOG"]["PREFIX"]) / cfg["EXPERIMENT"]["PROJECT"] / run_name(cfg)
