"""The distiller contract and the registry of distillers by published ``DISTILLER.TYPE``.

A distiller owns a student, a frozen teacher and any connector modules. The trainer calls
``forward_train(views, target, epoch, **extras)`` and sums the returned loss terms.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["Distiller", "register", "get_distiller_class", "build_distiller", "available_distillers"]

LossTerms = dict[str, Tensor]


class Distiller(nn.Module):
    """Base class: a student, a frozen teacher (always in eval mode) and optional connectors.

    Subclasses set :attr:`num_views` (1, or 2 for weak/strong training) and implement
    :meth:`forward_train`. Connector modules must be registered as submodules other than
    ``student`` and ``teacher`` so that :meth:`learnable_parameters` and checkpoints see them.

    Args:
        student: model whose ``forward(x)`` returns ``(logits, features)``.
        teacher: same contract; frozen here (``requires_grad=False``, eval mode). May be
            ``None`` for distillers that need no teacher (``NONE``).
        cfg: the experiment configuration (attribute access, published key names).
    """

    num_views: int = 1
    #: extra batch items this distiller needs from the train loader (e.g. ``("index",)``)
    needs: tuple[str, ...] = ()

    def __init__(self, student: nn.Module, teacher: nn.Module | None, cfg: Any) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.cfg = cfg
        if teacher is not None:
            for p in teacher.parameters():
                p.requires_grad_(False)
            teacher.eval()

    # ------------------------------------------------------------------ modes
    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def learnable_parameters(self) -> list[nn.Parameter]:
        """Student parameters plus those of any connector module (never the teacher's)."""
        params = list(self.student.parameters())
        for name, module in self.named_children():
            if name not in ("student", "teacher"):
                params.extend(p for p in module.parameters() if p.requires_grad)
        return params

    def extra_parameter_count(self) -> int:
        """Number of parameters in connector modules (reported at start)."""
        n_student = sum(p.numel() for p in self.student.parameters())
        return sum(p.numel() for p in self.learnable_parameters()) - n_student

    # ------------------------------------------------------------- helpers
    @torch.no_grad()
    def teacher_forward(self, views: Sequence[Tensor]) -> list[tuple[Tensor, dict]]:
        """Run the teacher once over all views concatenated; return ``(logits, features)``
        per view. In eval mode this equals separate forwards, at the cost of one."""
        assert self.teacher is not None, "this distiller has no teacher"
        if len(views) == 1:
            return [self.teacher(views[0])]
        sizes = [v.shape[0] for v in views]
        logits, feats = self.teacher(torch.cat(list(views), dim=0))
        out_logits = logits.split(sizes, dim=0)
        out_feats = [_split_features(feats, sizes, i) for i in range(len(views))]
        return list(zip(out_logits, out_feats))

    def student_forward(self, views: Sequence[Tensor], fuse: bool = False) -> list[tuple[Tensor, dict]]:
        """Student forward per view (separate by default so batch-norm statistics are
        per view, as released); ``fuse=True`` does one forward over the concatenation."""
        if fuse and len(views) > 1:
            sizes = [v.shape[0] for v in views]
            logits, feats = self.student(torch.cat(list(views), dim=0))
            return [(l, _split_features(feats, sizes, i)) for i, l in enumerate(logits.split(sizes, 0))]
        return [self.student(v) for v in views]

    # ------------------------------------------------------------- API
    def forward_train(self, views: Sequence[Tensor], target: Tensor, epoch: int, **extras: Any) -> tuple[Tensor, LossTerms]:
        """Return the student's logits (first view) and ``{term name: weighted loss}``."""
        raise NotImplementedError

    def forward_test(self, image: Tensor) -> Tensor:
        """Student logits for evaluation."""
        return self.student(image)[0]

    def forward(self, *args: Any, **kwargs: Any):  # noqa: D401 - dispatch
        """``forward(views, target, epoch, ...)`` in training, ``forward(image)`` in eval."""
        if self.training:
            return self.forward_train(*args, **kwargs)
        return self.forward_test(*args, **kwargs)


def _split_features(feats: Any, sizes: list[int], index: int) -> Any:
    """Take the ``index``-th chunk (along dim 0, chunk sizes ``sizes``) of every tensor in a
    (possibly nested) features structure."""
    if isinstance(feats, Tensor):
        return feats.split(sizes, dim=0)[index]
    if isinstance(feats, dict):
        return {k: _split_features(v, sizes, index) for k, v in feats.items()}
    if isinstance(feats, (list, tuple)):
        return type(feats)(_split_features(v, sizes, index) for v in feats)
    return feats


_REGISTRY: dict[str, type[Distiller]] = {}


def register(*names: str) -> Callable[[type[Distiller]], type[Distiller]]:
    """Class decorator: register a distiller under one or more ``DISTILLER.TYPE`` names."""

    def deco(cls: type[Distiller]) -> type[Distiller]:
        for name in names:
            if name in _REGISTRY:
                raise ValueError(f"distiller name {name!r} registered twice")
            _REGISTRY[name] = cls
        return cls

    return deco


def available_distillers() -> list[str]:
    """The registered ``DISTILLER.TYPE`` names."""
    return sorted(_REGISTRY)


def get_distiller_class(name: str) -> type[Distiller]:
    """Look up a distiller class; unknown names raise ``ValueError`` listing valid ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown DISTILLER.TYPE {name!r}; valid: {', '.join(available_distillers())}") from None


def build_distiller(cfg: Any, student: nn.Module, teacher: nn.Module | None) -> Distiller:
    """Instantiate the distiller named by ``cfg.DISTILLER.TYPE``."""
    return get_distiller_class(cfg.DISTILLER.TYPE)(student, teacher, cfg)
