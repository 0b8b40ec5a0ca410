"""Losses are computed in at least single precision, whatever the caller's autocast says.

:func:`float32_loss` wraps a loss function: inside it autocast is switched off (for the
device types of the tensor arguments on which it is on), and every float16 / bfloat16 tensor
argument, alone or in a list or tuple, is cast up to float32 first (float32 and float64 stay
as they are). The loss therefore returns float32 for 16-bit inputs, and the gradients that
reach 16-bit inputs come back in their own dtype (the cast is part of the graph).
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Iterator, TypeVar

import torch
from torch import Tensor

__all__ = ["float32_loss", "to_float32"]

F = TypeVar("F", bound=Callable[..., Any])

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def to_float32(x: Any) -> Any:
    """``x`` with 16-bit floating tensors cast to float32 (lists and tuples element-wise)."""
    if isinstance(x, Tensor):
        return x.float() if x.dtype in _LOW_PRECISION else x
    if type(x) in (list, tuple):
        return type(x)(to_float32(v) for v in x)
    return x


def _device_types(values: Any) -> Iterator[str]:
    for x in values:
        if isinstance(x, Tensor):
            yield x.device.type
        elif isinstance(x, (list, tuple)):
            yield from _device_types(x)


def float32_loss(fn: F) -> F:
    """Decorator: run ``fn`` with autocast off and 16-bit tensor arguments cast to float32."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        args = tuple(to_float32(a) for a in args)
        kwargs = {k: to_float32(v) for k, v in kwargs.items()}
        with contextlib.ExitStack() as stack:
            for dev in set(_device_types((*args, *kwargs.values()))):
                if torch.is_autocast_enabled(dev):
                    stack.enter_context(torch.autocast(dev, enabled=False))
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
