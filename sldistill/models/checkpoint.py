"""Reading weight files into models: one place for every checkpoint format we accept.

Accepted files (all read with ``torch.load(..., weights_only=True)`` by default):

- the published format: a dict whose ``"model"`` entry is the state dict (other entries such
  as ``"epoch"``, ``"optimizer"``, ``"best_acc"`` are ignored);
- our own run checkpoints (``"model"`` = the student's state dict; they may hold NumPy RNG
  state, whose arrays are allowed by the safe loader);
- a dict with a ``"state_dict"`` entry, or a raw state dict;
- any of these with ``module.`` (DataParallel / DDP) or ``_orig_mod.`` (``torch.compile``)
  prefixes on every key.

Errors name the file and list the missing keys, unexpected keys and shape mismatches (the
first few of each, with counts).
"""
from __future__ import annotations

import contextlib
import os
import pickle
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


def read_checkpoint(path: str | os.PathLike, *, weights_only: bool = True) -> Any:
    """``torch.load`` a file onto the CPU with clear errors.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: truncated/corrupt file, not a PyTorch file, or (with
            ``weights_only=True``) objects the safe loader refuses.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {p}" + (" (it is a directory)" if p.is_dir() else ""))
    try:
        with _allow_numpy():
            return torch.load(p, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as e:
        if weights_only and "weights_only" in str(e):
            raise CheckpointError(
                f"{p}: the safe loader (weights_only=True) refuses objects in this file: {str(e).splitlines()[0]}. "
                "If you trust the file, load it with weights_only=False."
            ) from e
        raise CheckpointError(f"{p}: not a readable PyTorch checkpoint (truncated or corrupt?): {e}") from e
    except Exception as e:  # truncated zip, bad magic number, unpickler errors on garbage, ...
        raise CheckpointError(f"{p}: not a readable PyTorch checkpoint (truncated or corrupt?): {e}") from e


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

    Looks for ``obj["model"]``, then ``obj["state_dict"]``, then ``obj`` itself.
    """
    for key in ("model", "state_dict"):
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
                 weights_only: bool = True) -> LoadReport:
    """Load a weight file into ``model`` (published, raw, prefixed or run checkpoints).

    Args:
        model: the network (a zoo model, or a wrapped ``torchvision:``/``timm:`` model, which
            also accepts the wrapped network's own weight files).
        path: the file.
        strict: require an exact match of names and shapes (default).
        weights_only: use PyTorch's safe loader (default); pass ``False`` only for files you trust.

    Returns:
        a :class:`LoadReport` (with ``strict=False``, what was skipped).

    Raises:
        FileNotFoundError, CheckpointError, WeightsMismatchError (both ``ValueError``).
    """
    obj = read_checkpoint(path, weights_only=weights_only)
    sd = extract_state_dict(obj, str(path))
    return load_state_dict_checked(model, sd, strict=strict, source=str(path))
