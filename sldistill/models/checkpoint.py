"""Reading weight files into models: one place for every checkpoint format we accept.

Accepted files (all read with ``torch.load(..., weights_only=True)`` by default):

- the published format: a dict whose ``"model"`` entry is the state dict (other entries such
  as ``"epoch"``, ``"optimizer"``, ``"best_acc"`` are ignored);
- our own run checkpoints (``"model"`` = the student's state dict; they may hold NumPy RNG
  state, whose arrays are allowed by the safe loader);
- a dict with a ``"state_dict"`` entry, or a raw state dict;
- any of these with ``module.`` (DataParallel / DDP) or ``_orig_mod.`` (``torch.compile``)
  prefixes on every key, or one common prefix (Lightning's ``model.`` / ``net.``) that the
  model's own keys lack;
- the layouts of timm, torchdistill, Lightning and mdistiller, whose files carry non-tensor
  extras (an ``args`` Namespace, hyper-parameters, callback states): the safe loader reads
  them with every class it does not know replaced by an inert placeholder, so the weights
  load and no code from the file runs. ``trust=True`` (``--trust-checkpoint``,
  ``DISTILLER.TRUST_CHECKPOINT``) unpickles the file fully instead, for files you trust.

Errors name the file and list the missing keys, unexpected keys and shape mismatches (the
first few of each, with counts).
"""
from __future__ import annotations

import contextlib
import os
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "CheckpointError",
    "WeightsMismatchError",
    "LoadReport",
    "read_checkpoint",
    "extract_state_dict",
    "load_state_dict_checked",
    "load_weights",
]

_SHOW = 5  # how many keys of each kind an error message lists
_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(ValueError):
    """The file cannot be read as a checkpoint, or holds no state dict."""


class WeightsMismatchError(ValueError):
    """The state dict does not fit the model (strict loading)."""

    def __init__(self, message: str, report: "LoadReport") -> None:
        super().__init__(message)
        self.report = report


@dataclass
class LoadReport:
    """What a load did: the source, how many tensors were loaded, and what did not fit."""

    source: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every key matched by name and shape."""
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self) -> str:
        """One paragraph listing the first few problems of each kind, with counts."""
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing key(s) (in the model, not in the file): {_head(self.missing)}")
        if self.unexpected:
            parts.append(
                f"{len(self.unexpected)} unexpected key(s) (in the file, not in the model): {_head(self.unexpected)}"
            )
        if self.mismatched:
            shown = [f"{k} file {list(a)} vs model {list(b)}" for k, a, b in self.mismatched[:_SHOW]]
            more = f", ... ({len(self.mismatched) - _SHOW} more)" if len(self.mismatched) > _SHOW else ""
            parts.append(f"{len(self.mismatched)} shape mismatch(es): " + ", ".join(shown) + more)
        return "; ".join(parts) if parts else "all keys match"


def _head(keys: list[str]) -> str:
    more = f", ... ({len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def _numpy_safe_globals() -> list[Any]:
    """NumPy objects needed to rebuild plain arrays (e.g. saved NumPy RNG state)."""
    out: list[Any] = [np.ndarray, np.dtype]
    core = getattr(np, "_core", None) or np.core
    out.append(core.multiarray._reconstruct)
    out.append(type(np.dtype(np.uint32)))
    return out


@contextlib.contextmanager
def _allow_numpy() -> Iterator[None]:
    ctx = getattr(torch.serialization, "safe_globals", None)
    if ctx is None:  # older torch: plain weights_only
        yield
        return
    with ctx(_numpy_safe_globals()):
        yield


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _plain(text: str) -> str:
    """A message without terminal colour codes, first line only."""
    return _ANSI.sub("", text).strip().splitlines()[0] if text.strip() else ""


class _Inert:
    """Stands in for a class the safe loader does not know (an ``args`` Namespace, a callback
    state): it keeps what the file held as plain data and runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _placeholders(path: Path) -> list[Any]:
    """``(inert class, 'module.Name')`` for every global the file names that the safe loader
    does not allow (``torch.serialization.get_unsafe_globals_in_checkpoint``, torch >= 2.5)."""
    lister = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if lister is None:
        return []
    names = lister(str(path))
    return [(type("Inert_" + re.sub(r"\W", "_", n), (_Inert,), {}), n) for n in names]


def read_checkpoint(path: str | os.PathLike, *, weights_only: bool = True, trust: bool = False) -> Any:
    """``torch.load`` a file onto the CPU with clear errors.

    With the safe loader (the default), classes the file names that are not plain data are
    read as inert placeholders (see the module docstring), so the layouts of other training
    codebases load. ``trust=True`` (or ``weights_only=False``) unpickles the file fully, with
    a warning: only for files you trust.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: truncated/corrupt file, or not a PyTorch file.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {p}" + (" (it is a directory)" if p.is_dir() else ""))
    if trust or not weights_only:
        warnings.warn(f"{p}: unpickling the whole file (--trust-checkpoint): this runs code the file names; "
                      "use it only for files you trust", UserWarning, stacklevel=2)
        weights_only = False
    try:
        with _allow_numpy():
            try:
                return torch.load(p, map_location="cpu", weights_only=weights_only)
            except pickle.UnpicklingError:
                stand_ins = _placeholders(p) if weights_only else []
                if not stand_ins:
                    raise
                ctx = torch.serialization.safe_globals
                with ctx(stand_ins):
                    return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if weights_only:
            raise CheckpointError(
                f"{p}: the safe loader cannot read this file ({_plain(str(e))}); if you trust the file, pass "
                "--trust-checkpoint (or set DISTILLER.TRUST_CHECKPOINT: true)") from e
        raise CheckpointError(f"{p}: not a readable PyTorch checkpoint (truncated or corrupt?): "
                              f"{_plain(str(e))}") from e
    except Exception as e:  # truncated zip, bad magic number, unpickler errors on garbage, ...
        raise CheckpointError(f"{p}: not a readable PyTorch checkpoint (truncated or corrupt?): "
                              f"{_plain(str(e))}") from e


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(k, str) for k in obj) and all(
        isinstance(v, Tensor) for v in obj.values()
    )


def _strip_prefixes(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out = dict(sd)
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if out and all(k.startswith(prefix) for k in out):
                out = {k[len(prefix):]: v for k, v in out.items()}
                changed = True
    return out


def extract_state_dict(obj: Any, source: str = "<object>") -> dict[str, Tensor]:
    """The state dict inside a loaded checkpoint object, with DDP/compile prefixes removed.

    Looks for ``obj["model"]`` (published, mdistiller, torchdistill), ``obj["state_dict"]``
    (timm, Lightning), ``obj["model_state_dict"]``, then ``obj`` itself.
    """
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(obj, Mapping) and key in obj:
            inner = obj[key]
            if isinstance(inner, nn.Module):
                inner = inner.state_dict()
            if _is_state_dict(inner):
                return _strip_prefixes(inner)
            raise CheckpointError(f"{source}: entry {key!r} is not a state dict (a mapping of names to tensors)")
    if _is_state_dict(obj):
        return _strip_prefixes(obj)
    what = f"a dict with keys {sorted(map(str, obj))[:10]}" if isinstance(obj, Mapping) else type(obj).__name__
    raise CheckpointError(
        f"{source}: no state dict found (got {what}); expected {{'model': state_dict}} (published/run checkpoints), "
        "{'state_dict': state_dict} or a raw state dict"
    )


def _strip_common_prefix(sd: dict[str, Tensor], own: Mapping[str, Any]) -> dict[str, Tensor]:
    """Drop one leading ``name.`` shared by every key of ``sd`` (Lightning modules save their
    network as ``model.`` / ``net.``) when that makes the keys match the model's."""
    if not sd or set(sd) & set(own):
        return sd
    first = {k.split(".", 1)[0] for k in sd}
    if len(first) == 1 and all("." in k for k in sd):
        prefix = first.pop() + "."
        stripped = {k[len(prefix):]: v for k, v in sd.items()}
        if set(stripped) & set(own):
            return stripped
    return sd


def _target_module(model: nn.Module, sd: Mapping[str, Tensor]) -> nn.Module:
    """A wrapped model (``.wrapped``) receives the wrapped network's own weight files."""
    inner = getattr(model, "wrapped", None)
    if isinstance(inner, nn.Module) and inner is not model:
        outer_keys = set(model.state_dict())
        inner_keys = set(inner.state_dict())
        if len(set(sd) & inner_keys) > len(set(sd) & outer_keys):
            return inner
    return model


def load_state_dict_checked(model: nn.Module, state_dict: Mapping[str, Tensor], strict: bool = True,
                            source: str = "<state dict>") -> LoadReport:
    """Load ``state_dict`` into ``model``, checking names and shapes first.

    ``strict=True``: any missing key, unexpected key or shape mismatch raises
    :class:`WeightsMismatchError` and nothing is loaded. ``strict=False``: loads every tensor
    whose name and shape match and reports the rest. Missing BatchNorm
    ``num_batches_tracked`` counters (very old files) are not counted as missing.
    """
    sd = _strip_prefixes(state_dict)
    target = _target_module(model, sd)
    own = target.state_dict()
    sd = _strip_common_prefix(sd, own)
    report = LoadReport(source)
    report.missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    report.unexpected = [k for k in sd if k not in own]
    report.mismatched = [
        (k, tuple(sd[k].shape), tuple(own[k].shape))
        for k in own
        if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    if strict and not report.ok:
        raise WeightsMismatchError(
            f"{source}: weights do not fit {type(target).__name__}: {report.describe()}. "
            "Is this the checkpoint of another architecture or number of classes?",
            report,
        )
    bad = {k for k, _, _ in report.mismatched}
    usable = {k: v for k, v in sd.items() if k in own and k not in bad}
    target.load_state_dict(usable, strict=False)
    report.loaded = len(usable)
    return report


def load_weights(model: nn.Module, path: str | os.PathLike, strict: bool = True, *,
                 weights_only: bool = True, trust: bool = False) -> LoadReport:
    """Load a weight file into ``model`` (published, raw, prefixed or run checkpoints).

    Args:
        model: the network (a zoo model, or a wrapped ``torchvision:``/``timm:`` model, which
            also accepts the wrapped network's own weight files).
        path: the file.
        strict: require an exact match of names and shapes (default).
        weights_only: use PyTorch's safe loader (default); pass ``False`` only for files you trust.
        trust: the same as ``weights_only=False`` (``--trust-checkpoint``).

    Returns:
        a :class:`LoadReport` (with ``strict=False``, what was skipped).

    Raises:
        FileNotFoundError, CheckpointError, WeightsMismatchError (both ``ValueError``).
    """
    obj = read_checkpoint(path, weights_only=weights_only, trust=trust)
    sd = extract_state_dict(obj, str(path))
    return load_state_dict_checked(model, sd, strict=strict, source=str(path))
