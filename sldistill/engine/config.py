"""Experiment configuration: defaults, typed schema, YAML loading, overrides, validation.

The key names are those of the published YAML files (mdistiller / SLD / MLKD / SortKD /
logit-standardization); their defaults are the SLD/mdistiller ones. Keys that the published
code hard-codes or lacks are added with the released behaviour as their default.

Resolution order (:func:`load_config`): the defaults of a *base* codebase (``BASES``; ``sld``
unless the ``base`` argument, a ``BASE`` override or the file's top-level ``BASE`` key names
another), then the YAML file, then command-line overrides (``KEY VALUE`` pairs as in the
published tools, or ``KEY=VALUE``), then the base's implicit behaviour (SortKD sorts the
teacher's logits of KD/DKD). The result is validated against :data:`SCHEMA`: unknown keys,
wrong types and bad values raise :class:`ConfigError` naming the file, the dotted key and the
closest valid keys or values.

Distiller/trainer names that appear in published files but that no release implements
(``DKD_aug``, ``DOT``; see :data:`UNRELEASED_DISTILLERS`) pass validation so that every
published file loads; :func:`unreleased_reason` gives the message the trainer refuses them with.

The shipped experiment files live in ``configs/`` at the repository root (the parent of the
``sldistill`` package directory, i.e. an editable install / source checkout), or wherever
``$SLDISTILL_CONFIGS`` points; see :func:`configs_root`.
"""
from __future__ import annotations

import copy
import difflib
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import yaml

__all__ = [
    "CfgNode",
    "DEFAULTS",
    "get_defaults",
    "BASES",
    "ConfigError",
    "Spec",
    "SCHEMA",
    "PUBLISHED_DISTILLERS",
    "UNRELEASED_DISTILLERS",
    "load_config",
    "parse_overrides",
    "merge_overrides",
    "validate_config",
    "format_config",
    "save_config",
    "run_dir",
    "configs_root",
    "list_configs",
    "format_config_list",
    "resolve_config_path",
    "apply_logit_stand",
    "unreleased_reason",
]


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


# The defaults. Published keys first (values as in SLD's / mdistiller's defaults), then the
# keys this toolkit adds (each commented with its meaning; released behaviour by default).
DEFAULTS: dict[str, Any] = {
    # added: which published codebase's defaults this config started from (see BASES)
    "BASE": "sld",
    "EXPERIMENT": {
        "PROJECT": "distill",
        "NAME": "",
        "TAG": "default",
        "LOGIT_STAND": False,  # published (logit-standardization): z-score student and teacher logits
        # added:
        "SEED": 0,  # seeds python, numpy and torch (+ loader workers)
        "DETERMINISTIC": False,  # torch.use_deterministic_algorithms + cudnn.deterministic
        "DEVICE": "auto",  # auto | cpu | cuda | cuda:N
    },
    "DATASET": {
        "TYPE": "cifar100",  # cifar100 | imagenet | tiny_imagenet | fashion_mnist | folder
        "NUM_WORKERS": 2,
        "TEST": {"BATCH_SIZE": 64},
        # added:
        "ROOT": "",  # '' -> $SLDISTILL_DATA or ./data
        "DOWNLOAD": True,  # download where the dataset allows it and the machine has internet
        "TRAIN_SUBSET": 0,  # >0: seeded class-balanced subset of that many training images
        "SUBSET_SEED": -1,  # seed of the TRAIN_SUBSET draw; -1: EXPERIMENT.SEED (>=0 fixes it across seeds)
        "PIN_MEMORY": True,  # only takes effect on CUDA
        "IMAGE_SIZE": 0,  # `folder` datasets: training/test image side (0: 32, the CIFAR family's size)
        "DROP_LAST": False,  # drop the last short training batch (published: kept)
    },
    "DISTILLER": {
        "TYPE": "NONE",
        "TEACHER": "ResNet50",
        "STUDENT": "resnet32",
        # added:
        "LOGIT_PROCESSOR": "none",  # none | sort | swap | zscore (logit methods; zscore acts on both)
        "TEACHER_ROOT": "./download_ckpts",  # or $SLDISTILL_TEACHER_ROOT
        "TEACHER_CKPT": "",  # a teacher checkpoint file, overriding the published-teacher table
        "STUDENT_CKPT": "",  # optional initial student weights
    },
    "SOLVER": {
        "TRAINER": "base",  # base | ours (two views) | crd | dot | aug | crd_dot
        "BATCH_SIZE": 64,  # global batch (split over DDP processes)
        "EPOCHS": 240,
        "LR": 0.05,
        "LR_DECAY_STAGES": [150, 180, 210],
        "LR_DECAY_RATE": 0.1,
        "WEIGHT_DECAY": 0.0001,
        "MOMENTUM": 0.9,
        "TYPE": "SGD",
        "DOT": {"DELTA": 0.075},
        # added:
        "SCHEDULER": "step",  # step (published) | cosine
        "WARMUP_EPOCHS": 0,  # linear warm-up length in epochs (0 = none, as published)
        "NESTEROV": False,
        "AMP": "none",  # none | bf16 | fp16 (fp16 on CUDA only, with a grad scaler)
        "CHANNELS_LAST": True,
        "SYNC_BN": False,  # CUDA + DDP only
        "FUSE_STUDENT_VIEWS": False,  # one student forward over both views (changes BN statistics)
        "FOLD_TEACHER_BN": True,  # teacher forward through a copy with BN folded into the convs
        "TEACHER_CHUNK": -1,  # rows per teacher forward: -1 auto (32 for fp32 on CPU, else all), 0 all
    },
    "LOG": {
        "PREFIX": "./output",
        "SAVE_CHECKPOINT_FREQ": 40,
        "TENSORBOARD_FREQ": 500,
        "WANDB": False,
        # added:
        "TENSORBOARD": True,
        "PROGRESS": True,  # progress bars
    },
    "KD": {"TEMPERATURE": 4, "LOSS": {"CE_WEIGHT": 0.1, "KD_WEIGHT": 0.9}},
    "DKD": {"CE_WEIGHT": 1.0, "ALPHA": 1.0, "BETA": 8.0, "T": 4.0, "WARMUP": 20},
    "MLKD": {
        # added: False = the released computation (masks act as a scalar, two strong-view terms
        # read the weak logits); True = per-sample masks and each view's own logits.
        "CLEAN": False,
    },
    "SLD": {
        # added: the release hard-codes these; our defaults are the released values.
        "TEMPERATURES": [1, 2, 3, 4, 5, 6],
        "GAMMA": 150,  # the pseudo-teacher (swapped student) term is on when epoch > GAMMA
        "GAMMA_FRACTION": 0.0,  # >0: GAMMA = round(GAMMA_FRACTION * SOLVER.EPOCHS) (scaled schedules)
        "DETACH_PSEUDO_TEACHER": False,  # released: gradient flows through the pseudo-teacher
        "TEACHER_PROCESSOR": "swap",  # swap | sort | none | zscore
        "STUDENT_PROCESSOR": "swap",  # swap | sort | none | zscore
    },
    "AT": {"P": 2, "LOSS": {"CE_WEIGHT": 1.0, "FEAT_WEIGHT": 1000.0}},
    "CRD": {
        "MODE": "exact",
        "FEAT": {"DIM": 128, "STUDENT_DIM": 256, "TEACHER_DIM": 256},
        "LOSS": {"CE_WEIGHT": 1.0, "FEAT_WEIGHT": 0.8},
        "NCE": {"K": 16384, "MOMENTUM": 0.5, "TEMPERATURE": 0.07},
    },
    "FITNET": {"HINT_LAYER": 2, "INPUT_SIZE": [32, 32], "LOSS": {"CE_WEIGHT": 1.0, "FEAT_WEIGHT": 100.0}},
    "KDSVD": {"K": 1, "LOSS": {"CE_WEIGHT": 1.0, "FEAT_WEIGHT": 1.0}},
    "NST": {"LOSS": {"CE_WEIGHT": 1.0, "FEAT_WEIGHT": 50.0}},
    "OFD": {"CONNECTOR": {"KERNEL_SIZE": 1}, "LOSS": {"CE_WEIGHT": 1.0, "FEAT_WEIGHT": 0.001}},
    "PKT": {"LOSS": {"CE_WEIGHT": 1.0, "FEAT_WEIGHT": 30000.0}},
    "REVIEWKD": {
        "CE_WEIGHT": 1.0,
        "REVIEWKD_WEIGHT": 1.0,
        "WARMUP_EPOCHS": 20,
        "SHAPES": [1, 8, 16, 32],
        "OUT_SHAPES": [1, 8, 16, 32],
        "IN_CHANNELS": [64, 128, 256, 256],
        "OUT_CHANNELS": [64, 128, 256, 256],
        "MAX_MID_CHANNEL": 512,
        "STU_PREACT": False,
    },
    "RKD": {
        "DISTANCE_WEIGHT": 25,
        "ANGLE_WEIGHT": 50,
        "LOSS": {"CE_WEIGHT": 1.0, "FEAT_WEIGHT": 1.0},
        "PDIST": {"EPSILON": 1e-12, "SQUARED": False},
    },
    "SP": {"LOSS": {"CE_WEIGHT": 1.0, "FEAT_WEIGHT": 3000.0}},
    "VID": {"LOSS": {"CE_WEIGHT": 1.0, "FEAT_WEIGHT": 1.0}, "EPS": 1e-5, "INIT_PRED_VAR": 5.0, "INPUT_SIZE": [32, 32]},
}


# --------------------------------------------------------------------------------------------
# Bases: the defaults of each published codebase, as differences from ours (the SLD release's).
# Facts from each release's defaults.yaml; SortKD additionally sorts the teacher's logits in its
# KD and DKD distillers (no key in its files), which the "implicit" entry reproduces.
# --------------------------------------------------------------------------------------------

#: base name -> {"defaults": {dotted key: value}, "implicit": {DISTILLER.TYPE: {key: value}},
#: "about": one line}. "implicit" values are set after the file and the overrides, only for keys
#: neither of them set.
BASES: dict[str, dict[str, Any]] = {
    "sld": {"about": "Swapped-Logit-Distillation release (our defaults)", "defaults": {}, "implicit": {}},
    "mlkd": {"about": "Multi-Level-Logit-Distillation release (same defaults as SLD)", "defaults": {}, "implicit": {}},
    "mdistiller": {"about": "mdistiller", "defaults": {"LOG.WANDB": True}, "implicit": {}},
    "sortkd": {
        "about": "SortKD release: KD and DKD sort the teacher's logits",
        "defaults": {"LOG.WANDB": True},
        "implicit": {"KD": {"DISTILLER.LOGIT_PROCESSOR": "sort"}, "DKD": {"DISTILLER.LOGIT_PROCESSOR": "sort"}},
    },
    "logit-standardization": {
        "about": "logit-standardization-KD release: KD.TEMPERATURE 2, KD.LOSS.KD_WEIGHT 9",
        "defaults": {"KD.TEMPERATURE": 2, "KD.LOSS.KD_WEIGHT": 9},
        "implicit": {},
    },
}


def get_defaults(base: str | None = None) -> CfgNode:
    """A fresh, mutable copy of the default configuration.

    Args:
        base: a key of :data:`BASES`; ``None`` or ``"sld"`` gives our (the SLD release's)
            defaults, another name that codebase's (e.g. ``"logit-standardization"``:
            ``KD.TEMPERATURE`` 2 and ``KD.LOSS.KD_WEIGHT`` 9).
    """
    cfg = CfgNode(copy.deepcopy(DEFAULTS))
    if base is None:
        return cfg
    name = _check_base(base, "<defaults>")
    for key, value in BASES[name]["defaults"].items():
        _set(cfg, key, copy.deepcopy(value))
    cfg.BASE = name
    return cfg


# --------------------------------------------------------------------------------------------
# Errors and helpers
# --------------------------------------------------------------------------------------------


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


def _close(word: str, options: Iterable[str], n: int = 3, cutoff: float = 0.6) -> list[str]:
    """Close matches of ``word`` among ``options`` (case-insensitive, difflib ratio)."""
    opts = list(options)
    lower: dict[str, str] = {}
    for o in opts:
        lower.setdefault(o.lower(), o)
    hits = difflib.get_close_matches(word.lower(), list(lower), n=n, cutoff=cutoff)
    return [lower[h] for h in hits]


def _suggest(word: str, options: Iterable[str]) -> str:
    hits = _close(word, options)
    return f"; did you mean: {', '.join(hits)}?" if hits else ""


def _set(cfg: CfgNode, dotted: str, value: Any) -> None:
    node = cfg
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node[p]
    node[parts[-1]] = value


def _get(cfg: Mapping[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for p in dotted.split("."):
        node = node[p]
    return node


# --------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------

DATASET_TYPES = ("cifar100", "imagenet", "tiny_imagenet", "fashion_mnist", "folder")
TRAINERS = ("base", "ours", "crd", "dot", "aug", "crd_dot")
OPTIMIZERS = ("SGD",)  # what sldistill.optim.build_optimizer implements
AMP_MODES = ("none", "bf16", "fp16")
SCHEDULERS = ("step", "cosine")
PROCESSORS = ("none", "sort", "swap", "zscore")
CRD_MODES = ("exact", "relax")

#: every ``DISTILLER.TYPE`` found in the published files (``KD_ours`` is MLKD's name for MLKD).
PUBLISHED_DISTILLERS = (
    "NONE", "KD", "DKD", "MLKD", "KD_ours", "SLD", "AT", "OFD", "RKD", "FITNET", "KDSVD",
    "CRD", "NST", "PKT", "SP", "VID", "REVIEWKD", "DKD_aug", "DOT",
)
#: names that published files use but no release implements: they load (so every published
#: file validates) and the trainer refuses them with :func:`unreleased_reason`'s message.
UNRELEASED_DISTILLERS = frozenset({"DKD_aug", "DOT"})
#: distillers that train on a weak and a strong view (need ``SOLVER.TRAINER: ours``).
TWO_VIEW_DISTILLERS = frozenset({"SLD", "MLKD", "KD_ours"})

_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class Spec:
    """The type and constraints of one leaf key.

    Args:
        kind: ``bool``, ``int``, ``float`` (accepts ints, stored as float), ``str``,
            ``list_int`` or ``list_float``.
        choices: the valid values (strings), or ``None``.
        check: ``value -> problem or None`` for ranges; the problem names what is valid.
    """

    __slots__ = ("kind", "choices", "check")

    def __init__(self, kind: str, choices: Sequence[str] | None = None,
                 check: Callable[[Any], str | None] | None = None) -> None:
        self.kind = kind
        self.choices = tuple(choices) if choices is not None else None
        self.check = check

    def describe(self) -> str:
        """Human-readable type, e.g. ``'float (an int is accepted)'``."""
        return {
            "bool": "bool (true/false)",
            "int": "int",
            "float": "float (an int is accepted)",
            "str": "str",
            "list_int": "list of ints, e.g. [150, 180, 210]",
            "list_float": "list of numbers, e.g. [1, 2, 3]",
        }[self.kind]

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"Spec({self.kind!r}, choices={self.choices!r})"


def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, list):
        return "list_float" if any(isinstance(v, float) for v in value) else "list_int"
    raise TypeError(f"no schema kind for default {value!r}")


def _ge(lo: float) -> Callable[[Any], str | None]:
    return lambda v: None if v >= lo else f"must be >= {lo}, got {v!r}"


def _gt(lo: float) -> Callable[[Any], str | None]:
    return lambda v: None if v > lo else f"must be > {lo}, got {v!r}"


def _within(lo: float, hi: float) -> Callable[[Any], str | None]:
    return lambda v: None if lo <= v <= hi else f"must be in [{lo}, {hi}], got {v!r}"


def _device(v: str) -> str | None:
    return None if _DEVICE_RE.match(v) else f"got {v!r}; valid: auto, cpu, cuda, cuda:N, mps"


def _stages(v: list) -> str | None:
    if any(s <= 0 for s in v) or any(b < a for a, b in zip(v, v[1:])):
        return f"must be positive epochs in increasing order, got {v!r}"
    return None


def _temps(v: list) -> str | None:
    if not v or any(t <= 0 for t in v):
        return f"must be a non-empty list of positive temperatures, got {v!r}"
    return None


def _positive_list(v: list) -> str | None:
    return None if all(x > 0 for x in v) else f"must hold positive values, got {v!r}"


#: kinds that differ from what the default value's Python type suggests
_KIND_EXCEPTIONS = {
    "KD.TEMPERATURE": "float",  # published 4 / 1 / LS 2 (ints) and --base-temp floats
    "KD.LOSS.KD_WEIGHT": "float",  # LS default 9
    "KD.LOSS.CE_WEIGHT": "float",
    "RKD.DISTANCE_WEIGHT": "float",
    "RKD.ANGLE_WEIGHT": "float",
    "SLD.TEMPERATURES": "list_float",
    "SOLVER.WARMUP_EPOCHS": "float",  # fractional warm-up allowed
}

_CHOICES: dict[str, Sequence[str]] = {
    "BASE": tuple(BASES),
    "DATASET.TYPE": DATASET_TYPES,
    "SOLVER.TRAINER": TRAINERS,
    "SOLVER.TYPE": OPTIMIZERS,
    "SOLVER.AMP": AMP_MODES,
    "SOLVER.SCHEDULER": SCHEDULERS,
    "DISTILLER.LOGIT_PROCESSOR": PROCESSORS,
    "SLD.TEACHER_PROCESSOR": PROCESSORS,
    "SLD.STUDENT_PROCESSOR": PROCESSORS,
    "CRD.MODE": CRD_MODES,
}

_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "EXPERIMENT.SEED": _ge(0),
    "EXPERIMENT.DEVICE": _device,
    "DATASET.NUM_WORKERS": _ge(0),
    "DATASET.TEST.BATCH_SIZE": _gt(0),
    "DATASET.TRAIN_SUBSET": _ge(0),
    "DATASET.IMAGE_SIZE": _ge(0),
    "DATASET.SUBSET_SEED": _ge(-1),
    "SOLVER.BATCH_SIZE": _gt(0),
    "SOLVER.EPOCHS": _gt(0),
    "SOLVER.LR": _ge(0),
    "SOLVER.LR_DECAY_STAGES": _stages,
    "SOLVER.LR_DECAY_RATE": _ge(0),
    "SOLVER.WEIGHT_DECAY": _ge(0),
    "SOLVER.MOMENTUM": _within(0.0, 1.0),
    "SOLVER.WARMUP_EPOCHS": _ge(0),
    "SOLVER.DOT.DELTA": _ge(0),
    "SOLVER.TEACHER_CHUNK": _ge(-1),
    "LOG.SAVE_CHECKPOINT_FREQ": _gt(0),
    "LOG.TENSORBOARD_FREQ": _gt(0),
    "KD.TEMPERATURE": _gt(0),
    "KD.LOSS.CE_WEIGHT": _ge(0),
    "KD.LOSS.KD_WEIGHT": _ge(0),
    "DKD.T": _gt(0),
    "DKD.WARMUP": _gt(0),
    "DKD.ALPHA": _ge(0),
    "DKD.BETA": _ge(0),
    "DKD.CE_WEIGHT": _ge(0),
    "SLD.TEMPERATURES": _temps,
    "SLD.GAMMA": _ge(0),
    "SLD.GAMMA_FRACTION": _within(0.0, 1.0),
    "CRD.NCE.K": _gt(0),
    "CRD.NCE.TEMPERATURE": _gt(0),
    "CRD.FEAT.DIM": _gt(0),
    "REVIEWKD.SHAPES": _positive_list,
    "REVIEWKD.OUT_SHAPES": _positive_list,
    "REVIEWKD.IN_CHANNELS": _positive_list,
    "REVIEWKD.OUT_CHANNELS": _positive_list,
    "FITNET.INPUT_SIZE": _positive_list,
    "VID.INPUT_SIZE": _positive_list,
}


def _build_schema() -> dict[str, Spec]:
    schema: dict[str, Spec] = {}
    for key, value in CfgNode(DEFAULTS).walk():
        schema[key] = Spec(_KIND_EXCEPTIONS.get(key, _kind_of(value)), _CHOICES.get(key), _CHECKS.get(key))
    missing = (set(_KIND_EXCEPTIONS) | set(_CHOICES) | set(_CHECKS)) - set(schema)
    assert not missing, f"schema tables name keys absent from DEFAULTS: {sorted(missing)}"
    return schema


#: dotted leaf key -> :class:`Spec`; derived from :data:`DEFAULTS` plus the tables above.
SCHEMA: dict[str, Spec] = _build_schema()
_SECTIONS: frozenset[str] = frozenset(
    ".".join(k.split(".")[:i]) for k in SCHEMA for i in range(1, k.count(".") + 1)
)


def _known_distillers() -> list[str]:
    names = set(PUBLISHED_DISTILLERS)
    base = sys.modules.get("sldistill.distillers.base")  # user-registered distillers, if loaded
    if base is not None and hasattr(base, "available_distillers"):
        names.update(base.available_distillers())
    return sorted(names)


def _unknown_key(source: str, key: str) -> ConfigError:
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    candidates = list(SCHEMA) + sorted(_SECTIONS)
    hits = _close(key, candidates)
    if not hits and parent in _SECTIONS:  # same section, similar leaf name
        leaf = key.rsplit(".", 1)[1]
        siblings = [k for k in SCHEMA if k.startswith(parent + ".")]
        hits = [parent + "." + h for h in _close(leaf, [s[len(parent) + 1:] for s in siblings])]
        if not hits:
            hits = siblings[:8]
    msg = "unknown key"
    if hits:
        msg += f"; closest valid keys: {', '.join(hits)}"
    return ConfigError(source, key, msg)


def _coerce(source: str, key: str, value: Any, spec: Spec) -> Any:
    """Convert ``value`` to ``spec``'s type (int -> float only) or raise :class:`ConfigError`."""
    def bad() -> ConfigError:
        return ConfigError(source, key, f"expected {spec.describe()}, got {type(value).__name__} {value!r}")

    kind = spec.kind
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
            out = float(value)
            if not math.isfinite(out):
                raise ConfigError(source, key, f"must be a finite number, got {value!r}")
            return out
        raise bad()
    if kind == "str":
        if isinstance(value, str):
            return value
        raise bad()
    if kind in ("list_int", "list_float"):
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise bad()
        out_list = []
        for item in value:
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                raise bad()
            if kind == "list_int":
                if not isinstance(item, int):
                    raise bad()
                out_list.append(item)
            else:
                out_list.append(float(item))
        return out_list
    raise AssertionError(kind)  # pragma: no cover


def _check_value(source: str, key: str, value: Any, spec: Spec) -> None:
    if spec.choices is not None and value not in spec.choices:
        raise ConfigError(source, key, f"invalid value {value!r}; valid: {', '.join(spec.choices)}"
                          + _suggest(str(value), spec.choices))
    if spec.check is not None:
        problem = spec.check(value)
        if problem:
            raise ConfigError(source, key, problem)


def _check_base(name: Any, source: str) -> str:
    if not isinstance(name, str) or name not in BASES:
        raise ConfigError(source, "BASE", f"invalid value {name!r}; valid: {', '.join(BASES)}"
                          + _suggest(str(name), BASES))
    return name


def validate_config(cfg: Mapping[str, Any], source: str = "<config>") -> None:
    """Check every key, type, enumeration and range of a full configuration.

    Raises:
        ConfigError: naming ``source``, the dotted key, and the close valid keys (unknown
            key), the expected type (wrong type) or the valid choices/range (bad value).
    """
    seen: set[str] = set()

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for k, v in node.items():
            key = f"{prefix}{k}"
            if not isinstance(k, str):
                raise ConfigError(source, key, "keys must be strings")
            if isinstance(v, Mapping):
                if key in SCHEMA:
                    raise ConfigError(source, key, f"expected {SCHEMA[key].describe()}, got a mapping")
                if key not in _SECTIONS:
                    raise _unknown_key(source, key)
                walk(v, key + ".")
                continue
            if key not in SCHEMA:
                if key in _SECTIONS:
                    raise ConfigError(source, key, f"expected a section (mapping), got {v!r}")
                raise _unknown_key(source, key)
            spec = SCHEMA[key]
            coerced = _coerce(source, key, v, spec)
            _check_value(source, key, coerced, spec)
            seen.add(key)

    walk(cfg, "")
    missing = sorted(set(SCHEMA) - seen)
    if missing:
        raise ConfigError(source, missing[0], f"missing key (and {len(missing) - 1} more)" if len(missing) > 1 else "missing key")

    dtype = _get(cfg, "DISTILLER.TYPE")
    known = _known_distillers()
    if dtype not in known:
        raise ConfigError(source, "DISTILLER.TYPE", f"unknown distiller {dtype!r}; valid: {', '.join(known)}"
                          + _suggest(dtype, known))
    trainer = _get(cfg, "SOLVER.TRAINER")
    if dtype in TWO_VIEW_DISTILLERS and trainer != "ours":
        raise ConfigError(source, "SOLVER.TRAINER",
                          f"DISTILLER.TYPE {dtype} trains on a weak and a strong view and needs "
                          f"SOLVER.TRAINER 'ours', got {trainer!r}")
    epochs = _get(cfg, "SOLVER.EPOCHS")
    if _get(cfg, "SOLVER.WARMUP_EPOCHS") > epochs:
        raise ConfigError(source, "SOLVER.WARMUP_EPOCHS",
                          f"warm-up of {_get(cfg, 'SOLVER.WARMUP_EPOCHS')} epochs exceeds SOLVER.EPOCHS {epochs}")
    if _get(cfg, "SOLVER.AMP") == "fp16" and _get(cfg, "EXPERIMENT.DEVICE") == "cpu":
        raise ConfigError(source, "SOLVER.AMP", "fp16 needs a CUDA device (EXPERIMENT.DEVICE is 'cpu'); "
                          "valid on CPU: none, bf16")


def unreleased_reason(cfg: Mapping[str, Any]) -> str | None:
    """Why a (valid) configuration cannot be trained, or ``None``.

    Published files name a few distillers that no release implements (``DKD_aug``, ``DOT``);
    they load and validate so that every published file can be read, and the trainer refuses
    them with this message.
    """
    dtype = _get(cfg, "DISTILLER.TYPE")
    if dtype in UNRELEASED_DISTILLERS:
        return (f"DISTILLER.TYPE {dtype!r} appears in published config files but no published "
                f"release implements it, so sldistill does not either; implemented names: "
                f"{', '.join(n for n in PUBLISHED_DISTILLERS if n not in UNRELEASED_DISTILLERS)}")
    return None


# --------------------------------------------------------------------------------------------
# Merging, overrides
# --------------------------------------------------------------------------------------------


def _merge(cfg: CfgNode, data: Mapping[str, Any], source: str, explicit: set[str], prefix: str = "") -> None:
    """Merge a nested mapping into ``cfg``: keys checked against the schema, values converted."""
    for k, v in data.items():
        key = f"{prefix}{k}"
        if not isinstance(k, str):
            raise ConfigError(source, key, "keys must be strings")
        if key in _SECTIONS:
            if not isinstance(v, Mapping):
                raise ConfigError(source, key, f"expected a section (mapping), got {type(v).__name__} {v!r}")
            _merge(cfg, v, source, explicit, key + ".")
        elif key in SCHEMA:
            spec = SCHEMA[key]
            if isinstance(v, Mapping):
                raise ConfigError(source, key, f"expected {spec.describe()}, got a mapping")
            value = _coerce(source, key, v, spec)
            _check_value(source, key, value, spec)
            _set(cfg, key, value)
            explicit.add(key)
        else:
            raise _unknown_key(source, key)


class _Loader(yaml.SafeLoader):
    """Safe YAML loader that also reads ``1e-4`` / ``5E+3`` (no dot) as floats, as YAML 1.2 does."""


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


_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def _parse_value(raw: str, spec: Spec) -> Any:
    if spec.kind == "str":
        try:
            parsed = _yaml_load(raw)
        except yaml.YAMLError:
            return raw
        return parsed if isinstance(parsed, str) else raw  # '123', 'true' stay strings
    try:
        return _yaml_load(raw)
    except yaml.YAMLError:
        return raw


def parse_overrides(items: Sequence[str], source: str = "<command line>") -> list[tuple[str, Any]]:
    """Parse command-line overrides into ``(dotted key, typed value)`` pairs.

    Accepts the published ``KEY VALUE`` pairs (``SOLVER.LR 0.1``) and ``KEY=VALUE`` items,
    mixed. A ``KEY`` item consumes the next item as its value, whatever it contains. Values are
    read as YAML scalars or lists (``[150,180]``, ``true``/``True``, ``1e-4``) and converted to
    the key's schema type (an int is accepted for a float key; string keys keep the text as
    typed). Unknown keys, missing values, wrong types and bad values raise :class:`ConfigError`.
    """
    out: list[tuple[str, Any]] = []
    items = list(items)
    i = 0
    while i < len(items):
        item = str(items[i])
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
            raw = str(items[i + 1])
            i += 2
        if key not in SCHEMA:
            if key in _SECTIONS:
                raise ConfigError(source, key, "is a section; override its keys, e.g. "
                                  + ", ".join(k for k in SCHEMA if k.startswith(key + "."))[:200])
            raise _unknown_key(source, key)
        spec = SCHEMA[key]
        value = _coerce(source, key, _parse_value(raw, spec), spec)
        _check_value(source, key, value, spec)
        out.append((key, value))
    return out


def merge_overrides(cfg: CfgNode, overrides: Sequence[str] | Sequence[tuple[str, Any]],
                    source: str = "<command line>") -> set[str]:
    """Apply overrides (raw strings or parsed pairs) to ``cfg`` in place; return the keys set."""
    pairs = parse_overrides(overrides, source) if overrides and isinstance(overrides[0], str) else list(overrides)
    keys: set[str] = set()
    for key, value in pairs:
        if key not in SCHEMA:
            raise _unknown_key(source, key)
        value = _coerce(source, key, value, SCHEMA[key])
        _check_value(source, key, value, SCHEMA[key])
        _set(cfg, key, value)
        keys.add(key)
    return keys


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def configs_root() -> Path:
    """The shipped ``configs/`` folder: ``$SLDISTILL_CONFIGS`` if set, else ``configs/`` beside
    the ``sldistill`` package directory (the repository root of a source checkout or editable
    install; a wheel does not carry it)."""
    env = os.environ.get("SLDISTILL_CONFIGS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "configs"


def _case_insensitive(path: Path) -> Path | None:
    """Find ``path`` matching each component case-insensitively (``SLD/`` for ``sld/``)."""
    parts = path.parts
    cur = Path(parts[0]) if path.is_absolute() else Path(".")
    rest = parts[1:] if path.is_absolute() else parts
    for part in rest:
        if part in (".", ".."):
            cur = cur / part
            continue
        if (cur / part).exists():
            cur = cur / part
            continue
        try:
            hits = [c for c in cur.iterdir() if c.name.lower() == part.lower()]
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return None
        if len(hits) != 1:
            return None
        cur = hits[0]
    return cur if cur.is_file() else None


#: the abbreviations of the published file names (SLD/MLKD releases) -> our model names
_SHORT_NAMES = {
    "res8x4": "resnet8x4", "res32x4": "resnet32x4", "res20": "resnet20", "res32": "resnet32",
    "res56": "resnet56", "res110": "resnet110", "res50": "ResNet50", "res34": "resnet34",
    "res18": "resnet18", "shuv1": "ShuffleV1", "shuv2": "ShuffleV2", "mv2": "MobileNetV2",
    "mv1": "mobilenetv1", "wrn40_2": "wrn_40_2", "r34": "resnet34", "r18": "resnet18",
    "r50": "resnet50",
}


def _expand_short_names(stem: str) -> str:
    """``res32x4_res8x4`` -> ``resnet32x4_resnet8x4``; ``wrn40_2_shuv1`` -> ``wrn_40_2_ShuffleV1``."""
    return re.sub(r"(?<![A-Za-z0-9])(" + "|".join(sorted(_SHORT_NAMES, key=len, reverse=True)) + r")(?![A-Za-z0-9])",
                  lambda m: _SHORT_NAMES[m.group(1)], stem)


def resolve_config_path(path: str | Path) -> Path:
    """Locate a config file given as a path or as a name relative to the shipped configs.

    Tries, in order: the path as given; the same path matching folder/file names
    case-insensitively (the SLD README writes ``configs/cifar100/SLD/...`` for ``sld/``); the
    path relative to :func:`configs_root` (with or without a leading ``configs/`` and the
    ``.yaml`` suffix). Otherwise raises ``FileNotFoundError`` naming the closest shipped files.
    """
    p = Path(path).expanduser()
    candidates = [p]
    root = configs_root()
    rel = Path(*p.parts[1:]) if p.parts and p.parts[0] == "configs" and len(p.parts) > 1 else p
    if not p.is_absolute():
        candidates += [root / rel]
    for c in list(candidates):
        if c.suffix not in (".yaml", ".yml"):
            candidates.append(c.with_name(c.name + ".yaml"))
    for c in candidates:
        if c.is_file():
            return c
    for c in candidates:
        hit = _case_insensitive(c)
        if hit is not None:
            return hit
    for c in candidates:  # the published releases' short file names (res32x4_res8x4.yaml)
        stem = _expand_short_names(c.stem)
        if stem != c.stem:
            hit = _case_insensitive(c.with_name(stem + c.suffix))
            if hit is not None:
                return hit
    shipped = [str(q.relative_to(root)) for q in list_configs(root)] if root.is_dir() else []
    hits = _close(str(rel), shipped, n=5, cutoff=0.5)
    msg = f"config file {str(path)!r} not found (also looked under {root})"
    if hits:
        msg += f"; closest shipped configs: {', '.join(hits)}"
    raise FileNotFoundError(msg)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise FileNotFoundError(f"cannot read config file {path}: {e}") from e
    try:
        data = _yaml_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(str(path), "", f"not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), "", f"expected a mapping of sections at the top level, got {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (), *,
                base: str | None = None) -> CfgNode:
    """Resolve a configuration: base defaults, then the YAML file, then overrides; validated.

    Args:
        path: a YAML file (published or ours; see :func:`resolve_config_path`), or ``None``
            for the defaults alone.
        overrides: command-line items, ``KEY VALUE`` pairs and/or ``KEY=VALUE``.
        base: which codebase's defaults to start from (a key of :data:`BASES`). ``None``:
            a ``BASE`` override, else the file's top-level ``BASE`` key, else ``"sld"``. An
            explicit argument wins over both (e.g. ``sldistill train --base
            logit-standardization`` for a file from that release). The base used is recorded
            in ``cfg.BASE``, so a saved config reloads to the same values.

    Returns:
        The validated :class:`CfgNode`. Numbers of float keys are floats.

    Raises:
        ConfigError: unknown key / wrong type / bad value, naming the file and the key.
        FileNotFoundError: no such file.
    """
    source = "<defaults>"
    data: dict[str, Any] = {}
    if path is not None:
        resolved = resolve_config_path(path)
        source = str(resolved)
        data = _read_yaml(resolved)
    pairs = parse_overrides(overrides)
    chosen = base
    if chosen is None:
        chosen = next((v for k, v in reversed(pairs) if k == "BASE"), None)
    if chosen is None:
        chosen = data.get("BASE", "sld")
    name = _check_base(chosen, "<command line>" if base is not None else source)

    cfg = get_defaults(name)
    explicit: set[str] = set()
    _merge(cfg, data, source, explicit)
    explicit |= merge_overrides(cfg, pairs)
    cfg.BASE = name
    for key, value in BASES[name]["implicit"].get(cfg.DISTILLER.TYPE, {}).items():
        if key not in explicit:
            _set(cfg, key, value)
    for key, spec in SCHEMA.items():  # defaults too: ints of float keys become floats
        _set(cfg, key, _coerce(source, key, _get(cfg, key), spec))
    validate_config(cfg, source)
    return cfg


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


def _repr_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)


_Dumper.add_representer(list, _repr_list)
_Dumper.add_representer(CfgNode, lambda d, data: d.represent_dict(dict(data)))


def format_config(cfg: Mapping[str, Any]) -> str:
    """Readable YAML of a configuration (sections in order, lists inline); loads back equal."""
    data = cfg.to_dict() if isinstance(cfg, CfgNode) else dict(cfg)
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)


def save_config(cfg: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``cfg`` as YAML (creating folders); :func:`load_config` of the file gives it back."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# resolved sldistill configuration\n" + format_config(cfg), encoding="utf-8")
    return out


def run_dir(cfg: Mapping[str, Any]) -> Path:
    """The run's output folder: ``LOG.PREFIX / EXPERIMENT.PROJECT / (EXPERIMENT.NAME or TAG)``."""
    exp = cfg["EXPERIMENT"]
    return Path(cfg["LOG"]["PREFIX"]) / exp["PROJECT"] / (exp["NAME"] or exp["TAG"])


# --------------------------------------------------------------------------------------------
# Shipped configs
# --------------------------------------------------------------------------------------------


def list_configs(root: str | Path | None = None) -> list[Path]:
    """Every ``*.yaml`` file under ``root`` (default :func:`configs_root`), sorted.

    Raises:
        FileNotFoundError: ``root`` is not a folder (e.g. a non-editable install; set
            ``$SLDISTILL_CONFIGS``).
    """
    folder = Path(root) if root is not None else configs_root()
    if not folder.is_dir():
        raise FileNotFoundError(f"configs folder {folder} not found; set $SLDISTILL_CONFIGS or use a source checkout")
    return sorted(p for p in folder.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def _group(rel: Path) -> tuple[str, str, str]:
    """(dataset, method, item) of a shipped path: ``<dataset>/<method>/<pair>.yaml`` or, for
    ImageNet, ``imagenet/<pair>/<method>.yaml``."""
    parts = rel.with_suffix("").parts
    if len(parts) >= 3 and parts[0] == "imagenet":
        return parts[0], parts[-1], "/".join(parts[1:-1])
    if len(parts) >= 3:
        return parts[0], "/".join(parts[1:-1]), parts[-1]
    if len(parts) == 2:
        return parts[0], parts[1], ""
    return "", parts[0], ""


def format_config_list(root: str | Path | None = None, paths: Sequence[Path] | None = None) -> str:
    """The text of ``sldistill configs``: shipped files grouped by dataset, then method."""
    folder = Path(root) if root is not None else configs_root()
    files = list(paths) if paths is not None else list_configs(folder)
    groups: dict[str, dict[str, list[str]]] = {}
    for p in files:
        rel = p.relative_to(folder) if p.is_absolute() and folder in p.parents else p
        dataset, method, item = _group(Path(rel))
        groups.setdefault(dataset, {}).setdefault(method, []).append(item)
    lines = [f"{len(files)} configs under {folder} (use e.g. `sldistill train <dataset>/<method>/<name>`):"]
    for dataset in sorted(groups):
        methods = groups[dataset]
        lines.append(f"{dataset or '.'}:")
        for method in sorted(methods):
            items = sorted(i for i in methods[method] if i)
            tail = f" ({len(items)}): {', '.join(items)}" if items else ""
            lines.append(f"  {method}{tail}")
    return "\n".join(lines)
