"""Checking a model's classifier against the dataset's class count, before training."""
from __future__ import annotations

import warnings

import torch
from torch import nn

__all__ = ["classifier_out_features", "check_num_classes"]

_HEAD_NAMES = ("fc", "classifier", "linear", "head", "last_linear")


def classifier_out_features(model: nn.Module) -> int | None:
    """Number of outputs of ``model``'s classifier, found without running it, or None.

    Looks at the usual head attributes (``fc``, ``classifier``, ``linear``, ``head``) on the
    model and on a wrapped ``model.model`` / ``model.module``, then at the last ``nn.Linear``
    registered in the model.
    """
    for m in (model, getattr(model, "module", None), getattr(model, "model", None)):
        if not isinstance(m, nn.Module):
            continue
        for name in _HEAD_NAMES:
            head = getattr(m, name, None)
            if isinstance(head, nn.Linear):
                return head.out_features
            if isinstance(head, nn.Sequential):
                lins = [x for x in head.modules() if isinstance(x, nn.Linear)]
                if lins:
                    return lins[-1].out_features
    lins = [x for x in model.modules() if isinstance(x, nn.Linear)]
    return lins[-1].out_features if lins else None


def check_num_classes(model: nn.Module, num_classes: int, *, sample: torch.Tensor | None = None,
                      what: str = "model") -> None:
    """Raise ``ValueError`` if ``model``'s classifier does not output ``num_classes`` logits.

    Call it before training. The head is found statically (see
    :func:`classifier_out_features`); if none is found and ``sample`` is given, one forward
    on it is run (the model may return ``logits`` or ``(logits, features)``).
    """
    n = classifier_out_features(model)
    if n is None and sample is not None:
        was = model.training
        model.eval()
        with torch.no_grad():
            out = model(sample)
        model.train(was)
        logits = out[0] if isinstance(out, (tuple, list)) else out
        n = int(logits.shape[-1])
    if n is None:
        warnings.warn(f"could not find the classifier of the {what} to check it against {num_classes} classes",
                      stacklevel=2)
        return
    if n != num_classes:
        raise ValueError(f"the {what}'s classifier outputs {n} classes but the dataset has {num_classes}; "
                         f"create the {what} with num_classes={num_classes} (or use a dataset with {n} classes)")
