"""Logit processors: swap, sort and z-score, as pure batched tensor functions.

Every processor maps raw logits ``z`` of shape ``[B, C]`` (any floating dtype, any device)
and integer labels ``y`` of shape ``[B]`` to processed logits of the same shape and dtype.
No Python loop runs over rows, no additive constant is used (so float16 / bfloat16 cannot
overflow), and the autograd graph is kept: gradients flow from the output back to ``z``
(the released SLD pseudo-teacher ``swap(student)`` is *not* detached).

``swap(z, y)``
    Where ``argmax(z) != y``, exchange the values at the arg-max class and at the label;
    other rows are unchanged. The arg-max is the first maximal index (ties go to the lowest
    class index). Afterwards the label's class holds the row maximum.

``sort(z, y)`` (the parameter-free sorting mechanism)
    The label's class receives the largest value; every other class keeps its relative order
    and receives the remaining values in descending order, so classes ranked above the label
    move down one place. Ranks come from a *stable* descending sort: equal values keep the
    order of their class indices. Equal to ``swap`` when the label ranks second.

``zscore(z)`` (logit standardization)
    ``(z - mean(z)) / (1e-7 + std(z))`` per row, with the unbiased (``N - 1``) standard
    deviation, as released. 16-bit inputs are standardised in float32 and cast back.

Swap and sort only permute each row, so they commute with ``softmax`` (and with division by a
temperature): ``softmax(swap(z) / T) == swap(softmax(z / T))``.

``PROCESSORS`` maps the names ``"none"``, ``"swap"``, ``"sort"``, ``"zscore"`` to functions
``f(logits, target) -> logits``; :func:`get_processor` looks a name up and raises
``ValueError`` listing the valid names.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

__all__ = [
    "swap",
    "sort",
    "zscore",
    "identity",
    "PROCESSORS",
    "PERMUTATION_PROCESSORS",
    "get_processor",
    "check_logits",
    "check_same_shape",
    "check_target",
]

Processor = Callable[[Tensor, Optional[Tensor]], Tensor]

# --------------------------------------------------------------------------- validation


def check_logits(name: str, logits: object) -> Tensor:
    """Raise ``ValueError`` unless ``logits`` is a 2-D floating-point tensor ``[B, C]``."""
    if not isinstance(logits, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape [B, C], got {type(logits).__name__}")
    if logits.dim() != 2:
        raise ValueError(f"{name} must be 2-D [batch, classes], got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"{name} must have a floating dtype, got {logits.dtype} (shape {tuple(logits.shape)})")
    return logits


def check_same_shape(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    """Raise ``ValueError`` naming both arguments when their shapes differ."""
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape [B, C]; got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def check_target(target: object, logits: Tensor, logits_name: str = "logits", *, check_range: bool = True) -> Tensor:
    """Validate labels against ``logits`` ``[B, C]`` and return them as ``int64``.

    Shape and dtype are always checked (cheap, no device synchronisation): ``target`` must be
    a 1-D integer tensor of length ``B``. The range ``0 <= y < C`` needs the label values, so
    it is checked only when ``target`` lives on the CPU; on an accelerator it is skipped to
    avoid a host synchronisation (an out-of-range label then fails inside the indexing kernel).
    ``check_range=False`` skips it on the CPU too (for callers that have checked already).
    """
    if not isinstance(target, Tensor):
        raise ValueError(f"target must be a torch.Tensor of integer labels, got {type(target).__name__}")
    if target.dtype == torch.bool or target.is_floating_point() or target.is_complex():
        raise ValueError(
            f"target must have an integer dtype (torch.int64 preferred), got {target.dtype} "
            f"with shape {tuple(target.shape)}"
        )
    if target.dim() != 1 or target.shape[0] != logits.shape[0]:
        raise ValueError(
            f"target must have shape [B] = [{logits.shape[0]}] to match {logits_name} of shape "
            f"{tuple(logits.shape)}; got shape {tuple(target.shape)}"
        )
    if target.device != logits.device:
        raise ValueError(f"target is on {target.device} but {logits_name} is on {logits.device}")
    if check_range and target.device.type == "cpu" and target.numel() > 0:
        lo, hi = (int(v) for v in torch.aminmax(target))
        n_cls = logits.shape[1]
        if lo < 0 or hi >= n_cls:
            raise ValueError(
                f"target values must lie in [0, {n_cls - 1}] for {logits_name} of shape {tuple(logits.shape)}; "
                f"got values in [{lo}, {hi}]"
            )
    return target.long()


# --------------------------------------------------------------------------- processors


def swap(logits: Tensor, target: Tensor) -> Tensor:
    """Exchange, per row, the arg-max value and the label's value (rows already right stay).

    Args:
        logits: ``[B, C]`` floating tensor (any dtype/device; the graph is kept).
        target: ``[B]`` integer labels.

    Returns:
        A new ``[B, C]`` tensor; row ``i`` is ``logits[i]`` with the entries at
        ``argmax(logits[i])`` and ``target[i]`` exchanged. Gradients reach ``logits``.
    """
    check_logits("logits", logits)
    y = check_target(target, logits).unsqueeze(1)
    top = logits.detach().argmax(dim=1, keepdim=True)
    v_top = logits.gather(1, top)
    v_lab = logits.gather(1, y)
    # Writing v_top at y then v_lab at top is a no-op on rows where top == y.
    return logits.scatter(1, y, v_top).scatter(1, top, v_lab)


def sort(logits: Tensor, target: Tensor) -> Tensor:
    """Give the label the row's largest value; shift the classes ranked above it down one.

    Ranks are those of a stable descending sort (ties: lower class index ranks higher). The
    result is a per-row permutation of the values; classes other than the label keep their
    relative order. Gradients reach ``logits``.

    Args:
        logits: ``[B, C]`` floating tensor.
        target: ``[B]`` integer labels.
    """
    check_logits("logits", logits)
    y = check_target(target, logits).unsqueeze(1)
    values, order = torch.sort(logits.detach(), dim=1, descending=True, stable=True)
    n_cls = logits.shape[1]
    positions = torch.arange(n_cls, device=logits.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, positions)  # rank[c]: position of class c
    rank_y = rank.gather(1, y)
    new_rank = rank + (rank < rank_y).long()
    new_rank.scatter_(1, y, 0)
    sorted_vals = logits.gather(1, order)  # differentiable copy of `values`
    return sorted_vals.gather(1, new_rank)


def zscore(logits: Tensor, target: Optional[Tensor] = None) -> Tensor:
    """Per-row standardisation ``(z - mean) / (1e-7 + std)`` with unbiased ``std``.

    ``target`` is ignored (accepted so that all processors share one signature). 16-bit
    inputs are computed in float32 and returned in their own dtype.
    """
    check_logits("logits", logits)
    z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    mean = z.mean(dim=1, keepdim=True)
    std = z.std(dim=1, keepdim=True)
    return ((z - mean) / (std + 1e-7)).to(logits.dtype)


def identity(logits: Tensor, target: Optional[Tensor] = None) -> Tensor:
    """The ``"none"`` processor: return ``logits`` unchanged."""
    return logits


def _swap_proc(logits: Tensor, target: Optional[Tensor]) -> Tensor:
    if target is None:
        raise ValueError("the 'swap' processor needs target labels")
    return swap(logits, target)


def _sort_proc(logits: Tensor, target: Optional[Tensor]) -> Tensor:
    if target is None:
        raise ValueError("the 'sort' processor needs target labels")
    return sort(logits, target)


#: name -> ``f(logits, target) -> logits``
PROCESSORS: dict[str, Processor] = {
    "none": identity,
    "swap": _swap_proc,
    "sort": _sort_proc,
    "zscore": zscore,
}

#: processors that only permute each row (they commute with softmax)
PERMUTATION_PROCESSORS: frozenset[str] = frozenset({"swap", "sort"})


def get_processor(name: str) -> Processor:
    """Return the processor called ``name``; unknown names raise ``ValueError`` listing valid ones."""
    try:
        return PROCESSORS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown logit processor {name!r}; valid: {', '.join(sorted(PROCESSORS))}") from None
