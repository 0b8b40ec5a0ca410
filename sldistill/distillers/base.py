"""The distiller contract and the registry of distillers by published ``DISTILLER.TYPE``.

A distiller owns a student, a frozen teacher and any connector modules. The trainer calls
``forward_train(views, target, epoch, **extras)`` and sums the returned loss terms.
"""
from __future__ import annotations

import copy
import warnings
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from sldistill._cfg import cfg_get

__all__ = ["Distiller", "register", "get_distiller_class", "build_distiller", "available_distillers",
           "fold_batchnorm"]

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
        #: run the teacher through a copy with each conv+BN pair folded into the conv
        #: (``SOLVER.FOLD_TEACHER_BN``); ``self.teacher`` itself is never changed
        self.fold_teacher_bn = teacher is not None and bool(cfg_get(cfg, "SOLVER.FOLD_TEACHER_BN", True))
        #: rows per teacher forward (``SOLVER.TEACHER_CHUNK``): -1 auto, 0 the whole batch
        self.teacher_chunk = _teacher_chunk(cfg_get(cfg, "SOLVER.TEACHER_CHUNK", -1))
        # a plain object (not a Module), so the folded copy stays out of state_dict,
        # children, parameters and DDP's parameter broadcast
        self._folded = _FoldedTeacher()

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
    def teacher_forward(self, views: Sequence[Tensor], features: bool = True) -> list[tuple[Tensor, Any]]:
        """Run the teacher once over all views concatenated; return ``(logits, features)``
        per view. In eval mode this equals separate forwards, at the cost of one.

        With ``SOLVER.FOLD_TEACHER_BN`` (default) the forward goes through
        :meth:`forward_teacher_module`'s BN-folded copy of the teacher (same outputs up to
        float rounding). The batch is run in micro-batches of :meth:`teacher_chunk_rows`
        rows (``SOLVER.TEACHER_CHUNK``; on the CPU a cache-sized chunk is faster than one
        large batch, and in eval mode the rows are independent). ``features=False`` (the
        logit distillers) returns ``{}`` as every view's features, so that chunked feature
        maps are never concatenated."""
        assert self.teacher is not None, "this distiller has no teacher"
        x = views[0] if len(views) == 1 else torch.cat(list(views), dim=0)
        teacher = self.forward_teacher_module(x)
        chunk = self.teacher_chunk_rows(x)
        if chunk and x.shape[0] > chunk:
            outs = [teacher(part) for part in x.split(chunk)]
            logits = torch.cat([o[0] for o in outs])
            feats = _cat_features([o[1] for o in outs]) if features else {}
        else:
            logits, feats = teacher(x)
            feats = feats if features else {}
        if len(views) == 1:
            return [(logits, feats)]
        sizes = [v.shape[0] for v in views]
        out_logits = logits.split(sizes, dim=0)
        out_feats = [_split_features(feats, sizes, i) for i in range(len(views))]
        return list(zip(out_logits, out_feats))

    def teacher_chunk_rows(self, x: Tensor) -> int:
        """Rows per teacher forward for input ``x`` (0: the whole batch at once).
        ``SOLVER.TEACHER_CHUNK`` -1 (auto) means :data:`CPU_TEACHER_CHUNK` rows for a float32
        forward on the CPU, and the whole batch otherwise: on accelerators a large batch keeps
        the device busy, and CPU bf16 (autocast) kernels are no faster in chunks."""
        if self.teacher_chunk >= 0:
            return self.teacher_chunk
        fp32_cpu = x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and not _cpu_autocast_on()
        return CPU_TEACHER_CHUNK if fp32_cpu else 0

    def forward_teacher_module(self, probe: Tensor | None = None) -> nn.Module:
        """The module :meth:`teacher_forward` runs: the teacher with every conv+BatchNorm
        pair folded into the conv (see :func:`fold_batchnorm`), or ``self.teacher`` itself when
        ``SOLVER.FOLD_TEACHER_BN`` is false or folding is not possible for this model.

        The folded copy is built on first use and rebuilt whenever the teacher's parameters
        or buffers change (weights loaded, moved to another device or memory layout). A new
        copy is checked once against the teacher on (at most 2 images of) ``probe`` in fp32;
        if the model cannot be traced or its outputs differ, the unfolded teacher is used
        from then on and a one-line warning says so."""
        assert self.teacher is not None, "this distiller has no teacher"
        state = self._folded
        if not self.fold_teacher_bn or state.failed:
            return self.teacher
        signature = _tensor_signature(self.teacher)
        if state.module is not None and state.signature == signature:
            return state.module
        state.module, state.signature = None, None
        name = type(self.teacher).__name__
        try:
            folded = fold_batchnorm(self.teacher)
        except Exception as exc:  # noqa: BLE001 - any tracing failure means: run unfolded
            return state.fail(f"SOLVER.FOLD_TEACHER_BN: teacher {name} cannot be traced "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                              "running it unfolded", self.teacher)
        if probe is not None:
            why = _compare_outputs(self.teacher, folded, probe[:2])
            if why:
                return state.fail(f"SOLVER.FOLD_TEACHER_BN: the folded teacher {name} does not reproduce the "
                                  f"teacher ({why}); running it unfolded", self.teacher)
        state.module, state.signature = folded, signature
        return folded

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


class _FoldedTeacher:
    """The cached BN-folded teacher copy, the teacher signature it was built from, and
    whether folding failed (then it is not retried)."""

    def __init__(self) -> None:
        self.module: nn.Module | None = None
        self.signature: tuple | None = None
        self.failed = False

    def fail(self, notice: str, fallback: nn.Module) -> nn.Module:
        self.failed, self.module, self.signature = True, None, None
        warnings.warn(notice, RuntimeWarning, stacklevel=4)
        return fallback


def _tensor_signature(module: nn.Module) -> tuple:
    """Storage, in-place version, device and dtype of every parameter and buffer: changes
    when weights are loaded (``copy_`` bumps the version) or the module is moved/converted."""
    return tuple((t.data_ptr(), t._version, t.device, t.dtype)
                 for t in (*module.parameters(), *module.buffers()))


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A frozen eval-mode copy of ``model`` with each BatchNorm that directly follows a
    convolution (or linear layer) folded into that layer's weight and bias.

    Functional ReLUs whose input is a fresh tensor used by nothing else (a conv, linear or
    out-of-place addition not among the outputs) run in place, saving an allocation each.

    Models ``torch.fx`` cannot trace get the conv+BN pairs that are adjacent children of an
    ``nn.Sequential`` folded instead (the BN replaced by ``nn.Identity``).

    ``model`` is not modified. The copy (usually a ``torch.fx.GraphModule``) has the same
    ``forward`` outputs up to float rounding (about 1e-6 relative in fp32) and the memory
    layout of ``model``'s weights. Raises whatever ``torch.fx`` tracing raises when the model
    cannot be traced symbolically and has no such adjacent pair.
    """
    from torch.fx.experimental.optimization import fuse

    src = copy.deepcopy(model).eval()
    try:
        folded = fuse(src, inplace=True).eval()
        _relu_in_place(folded)
    except Exception:
        # not traceable (e.g. a branch on the input size): fold the conv+BN pairs that sit
        # next to each other in an nn.Sequential, eagerly; nothing else can read between them
        if not _fold_sequential_pairs(src):
            raise
        folded = src
    for p in folded.parameters():
        p.requires_grad_(False)
    conv_weights = [p for p in model.parameters() if p.dim() == 4 and p.shape[-1] * p.shape[-2] > 1]
    if conv_weights and conv_weights[0].is_contiguous(memory_format=torch.channels_last) \
            and not conv_weights[0].is_contiguous():
        folded = folded.to(memory_format=torch.channels_last)
    return folded


def _fold_sequential_pairs(model: nn.Module) -> int:
    """Fold every ``Conv2d`` directly followed by a ``BatchNorm2d`` in an ``nn.Sequential`` of
    ``model`` (in place); returns the number of pairs folded."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    count = 0
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats \
                    and bn.running_mean is not None:
                seq._modules[a] = fuse_conv_bn_eval(conv.eval(), bn.eval())
                seq._modules[b] = nn.Identity()
                count += 1
    return count


def _relu_in_place(gm: Any) -> int:
    """Make ``F.relu(x)`` in place in ``gm``'s graph where ``x`` is a new tensor (not a view)
    that nothing else reads; returns how many were changed."""
    import operator

    import torch.nn.functional as F

    modules = dict(gm.named_modules())
    fresh_modules = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
    changed = 0
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in (F.relu, torch.relu) or node.kwargs.get("inplace"):
            continue
        if node.target is torch.relu or len(node.args) != 1:
            continue
        src = node.args[0]
        if not hasattr(src, "users") or len(src.users) != 1:
            continue
        fresh = (src.op == "call_module" and isinstance(modules.get(src.target), fresh_modules)) or \
                (src.op == "call_function" and src.target in (operator.add, torch.add) and "out" not in src.kwargs)
        if fresh:
            node.kwargs = {**node.kwargs, "inplace": True}
            changed += 1
    if changed:
        gm.recompile()
    return changed


def _compare_outputs(reference: nn.Module, candidate: nn.Module, x: Tensor) -> str:
    """'' when both modules give the same output structure and values (fp32, 1e-3 of each
    tensor's largest magnitude) on ``x``; otherwise a short reason."""
    try:
        with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
            ref, cand = reference(x), candidate(x)
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__} on a probe batch"
    return _diff(ref, cand, "output")


def _diff(a: Any, b: Any, where: str) -> str:
    if isinstance(a, Tensor):
        if not isinstance(b, Tensor) or a.shape != b.shape:
            return f"{where}: shape/type differs"
        scale = float(a.detach().abs().max()) if a.numel() else 0.0
        err = float((a.detach().float() - b.detach().float()).abs().max()) if a.numel() else 0.0
        return "" if err <= 1e-3 * max(scale, 1e-6) else f"{where}: max difference {err:.3g} (scale {scale:.3g})"
    if isinstance(a, dict):
        if not isinstance(b, dict) or list(a) != list(b):
            return f"{where}: keys differ"
        return next((d for k in a if (d := _diff(a[k], b[k], f"{where}[{k!r}]"))), "")
    if isinstance(a, (list, tuple)):
        if not isinstance(b, (list, tuple)) or len(a) != len(b):
            return f"{where}: length differs"
        return next((d for i, (u, v) in enumerate(zip(a, b)) if (d := _diff(u, v, f"{where}[{i}]"))), "")
    return "" if type(a) is type(b) else f"{where}: type differs"


#: rows per float32 teacher forward on the CPU with ``SOLVER.TEACHER_CHUNK: -1`` (auto):
#: measured on ResNet32x4 at 32x32 (2 cores), the forward alone runs 1.1-1.2x faster in 32-row
#: chunks than as one 128-row batch (a chunk's activations stay in cache), and no slower than
#: in 16- or 64-row ones; in a whole SLD step that is a few percent
CPU_TEACHER_CHUNK = 32


def _cpu_autocast_on() -> bool:
    """Whether CPU autocast is active (``is_autocast_enabled(device)`` needs torch >= 2.4)."""
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # older torch
        return torch.is_autocast_cpu_enabled()


def _teacher_chunk(value: Any) -> int:
    """Validate ``SOLVER.TEACHER_CHUNK``: -1 (auto), 0 (whole batch) or a positive row count."""
    if isinstance(value, bool) or not isinstance(value, int) or value < -1:
        raise ValueError(f"SOLVER.TEACHER_CHUNK must be -1 (auto), 0 (whole batch) or a positive number of rows; "
                         f"got {value!r}")
    return value


def _cat_features(parts: list[Any]) -> Any:
    """Concatenate, along dim 0, the tensors of several features structures of the same shape
    (the inverse of :func:`_split_features`)."""
    first = parts[0]
    if isinstance(first, Tensor):
        return torch.cat(parts, dim=0)
    if isinstance(first, dict):
        return {k: _cat_features([p[k] for p in parts]) for k in first}
    if isinstance(first, (list, tuple)):
        return type(first)(_cat_features([p[i] for p in parts]) for i in range(len(first)))
    return first


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
