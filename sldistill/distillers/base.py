"""The distiller contract and the registry of distillers by ``DISTILLER.TYPE``.

A distiller owns a student, a frozen teacher and any connector modules. It declares, next to
its code, everything the rest of the toolkit needs to know about it (class attributes):

* ``config``: the keys it reads, ``{"SECTION.NAME": Key(default, "description", ...)}``
  (see :class:`sldistill.options.Key`); the configuration schema, its defaults, its
  validation and ``docs/configs.md`` are derived from these declarations;
* ``num_views``: 1, or 2 for weak/strong training (the loaders build that many views);
* ``needs``: extra batch items it reads, passed to :meth:`Distiller.forward_train` by name
  (``"index"``; ``"contrast_index"`` turns on CRD sampling in the loaders);
* ``aliases``: other names it is known by in published files (``KD_ours`` for MLKD).

:meth:`Distiller.forward_train` returns ``(logits, terms)``: the student's logits ``[batch,
num_classes]`` on the first view and ``{"loss_<name>": scalar tensor}``, at least one term,
every name starting with ``loss_`` (``loss_ce`` for the cross-entropy on the labels, which
``SOLVER.TYPE: DOT`` steps apart from the other terms). :meth:`Distiller.forward` checks this
(shapes and types only, nothing that waits for an accelerator).

Register with ``@register("NAME")``; user code does the same through
``from sldistill.distillers import Distiller, register``.
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import Tensor, nn

from sldistill.options import Key, Keys, merge_keys

__all__ = ["Distiller", "Unreleased", "register", "get_distiller_class", "build_distiller",
           "available_distillers", "distiller_keys", "canonical_name", "LossTerms", "Key"]

LossTerms = dict[str, Tensor]


class Distiller(nn.Module):
    """Base class: a student, a frozen teacher (in eval mode) and optional connectors.

    Subclasses set the class attributes described in the module docstring and implement
    :meth:`forward_train`. Connector modules must be registered as submodules other than
    ``student`` and ``teacher`` so that :meth:`learnable_parameters` and checkpoints see them.

    Args:
        student: model whose ``forward(x)`` returns ``(logits, features)``.
        teacher: same contract; frozen here (``requires_grad=False``, eval mode). May be
            ``None`` for distillers that need no teacher (``NONE``).
        cfg: the experiment configuration (attribute access, published key names).
    """

    #: the config keys this distiller reads (dotted name -> Key)
    config: ClassVar[Keys] = {}
    #: views per training sample: 1, or 2 (weak, strong)
    num_views: ClassVar[int] = 1
    #: extra batch items passed to forward_train by name ("index", "contrast_index")
    needs: ClassVar[tuple[str, ...]] = ()
    #: other names of this method in published files
    aliases: ClassVar[tuple[str, ...]] = ()
    #: whether it reads a teacher at all (NONE does not)
    needs_teacher: ClassVar[bool] = True
    #: whether the teacher stays in eval mode while the distiller trains (the released OFD
    #: switches it to train mode; see that class)
    teacher_eval: bool = True
    #: whether it reads the teacher's features (then a teacher-logit cache cannot stand in)
    uses_teacher_features: ClassVar[bool] = False
    #: the number of classes, for the check of forward_train's logits; taken from the
    #: teacher's logits the first time it runs, unless set before
    num_classes: int | None = None

    def __init__(self, student: nn.Module, teacher: nn.Module | None, cfg: Any) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.cfg = cfg
        if teacher is not None:
            for p in teacher.parameters():
                p.requires_grad_(False)
            teacher.eval()
        #: a teacher-logit cache (``DISTILLER.TEACHER_CACHE``) standing in for the teacher on
        #: the weak view: any object with ``lookup(index, view_id) -> logits``; set by the engine
        self.teacher_cache: Any = None
        self._cache_keys: tuple[Tensor, Tensor] | None = None

    # ------------------------------------------------------------------ modes
    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        if self.teacher is not None and self.teacher_eval:
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
        per view. The teacher is frozen and (unless ``teacher_eval`` is false, as for the
        released OFD) in eval mode, so this equals one forward per view, at the cost of one.
        ``features=False`` returns ``{}`` as every view's features."""
        assert self.teacher is not None, "this distiller has no teacher"
        if self.teacher_cache is not None and self._cache_keys is not None and not features:
            # the weak view's logits, computed once for every view of every image (exactly the
            # teacher's, float32 rounding aside); the teacher runs on the other views only
            index, view_id = self._cache_keys
            weak = self.teacher_cache.lookup(index.cpu(), view_id.cpu(), dtype=self.teacher_cache.live_dtype)
            weak = weak.to(views[0].device, non_blocking=True)
            self._seen_classes(weak)
            return [(weak, {}), *(self._teacher_run(views[1:], False) if len(views) > 1 else [])]
        return self._teacher_run(views, features)

    def _teacher_run(self, views: Sequence[Tensor], features: bool) -> list[tuple[Tensor, Any]]:
        assert self.teacher is not None
        x = views[0] if len(views) == 1 else torch.cat(list(views), dim=0)
        logits, feats = model_output(self.teacher, "teacher", x)
        self._seen_classes(logits)
        feats = feats if features else {}
        if len(views) == 1:
            return [(logits, feats)]
        sizes = [v.shape[0] for v in views]
        return [(lg, split_features(feats, sizes, i)) for i, lg in enumerate(logits.split(sizes, dim=0))]

    def student_forward(self, views: Sequence[Tensor], fuse: bool = False) -> list[tuple[Tensor, dict]]:
        """Student forward per view (separate by default so batch-norm statistics are
        per view, as released); ``fuse=True`` does one forward over the concatenation."""
        if fuse and len(views) > 1:
            sizes = [v.shape[0] for v in views]
            logits, feats = model_output(self.student, "student", torch.cat(list(views), dim=0))
            return [(lg, split_features(feats, sizes, i)) for i, lg in enumerate(logits.split(sizes, 0))]
        return [model_output(self.student, "student", v) for v in views]

    def _seen_classes(self, teacher_logits: Tensor) -> None:
        if self.num_classes is None and teacher_logits.dim() == 2:
            self.num_classes = int(teacher_logits.shape[1])

    # ------------------------------------------------------------- API
    def forward_train(self, views: Sequence[Tensor], target: Tensor, epoch: int,
                      **extras: Any) -> tuple[Tensor, LossTerms]:
        """Return the student's logits (first view) and ``{"loss_<name>": weighted loss}``."""
        raise NotImplementedError

    def forward_test(self, image: Tensor) -> Tensor:
        """Student logits for evaluation."""
        return model_output(self.student, "student", image)[0]

    def forward(self, *args: Any, **kwargs: Any):  # noqa: D401 - dispatch
        """``forward(views, target, epoch, ...)`` in training, ``forward(image)`` in eval. The
        trainer passes ``cache_keys=(index, view_id)`` when a teacher cache is attached."""
        if self.training:
            self._cache_keys = kwargs.pop("cache_keys", None)
            try:
                out = self.forward_train(*args, **kwargs)
            finally:
                self._cache_keys = None
            target = args[1] if len(args) > 1 else kwargs.get("target")
            check_train_output(self, out, target)
            return out
        return self.forward_test(*args, **kwargs)


def model_output(model: nn.Module, role: str, x: Tensor) -> tuple[Tensor, Any]:
    """``model(x)``, checked to be the model contract's ``(logits, features)`` pair."""
    out = model(x)
    if not (isinstance(out, (tuple, list)) and len(out) == 2 and isinstance(out[0], Tensor)):
        raise TypeError(f"the {role} ({type(model).__name__}) returned {_describe(out)}; a model's forward(x) "
                        "must return (logits, features) (see docs/architecture.md, Models)")
    return out[0], out[1]


def check_train_output(distiller: Distiller, out: Any, target: Any) -> None:
    """Raise ``TypeError`` / ``ValueError`` unless ``out`` is ``(logits, {"loss_<name>": scalar
    tensor})`` with at least one term and logits ``[batch, num_classes]``. Shapes and types only:
    nothing here waits for an accelerator."""
    where = f"{type(distiller).__name__}.forward_train"
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise TypeError(f"{where} returned {_describe(out)}; expected a pair (logits, {{'loss_<name>': scalar "
                        "tensor, ...}})")
    logits, terms = out
    if not isinstance(logits, Tensor):
        raise TypeError(f"{where} returned {_describe(logits)} as its logits; expected the student's logits, a "
                        "tensor [batch, num_classes]")
    batch = target.shape[0] if isinstance(target, Tensor) and target.dim() > 0 else None
    classes = distiller.num_classes
    if logits.dim() != 2 or (batch is not None and logits.shape[0] != batch) or \
            (classes is not None and logits.shape[1] != classes):
        raise ValueError(f"{where} returned logits of shape {list(logits.shape)}; expected the student's logits "
                         f"on the first view, [batch, num_classes] = [{batch or 'batch'}, {classes or 'num_classes'}]")
    if not isinstance(terms, dict):
        raise TypeError(f"{where} returned {_describe(terms)} as its loss terms; expected a dict "
                        "{'loss_<name>': scalar tensor, ...}")
    if not terms:
        raise ValueError(f"{where} returned no loss terms; expected at least one, e.g. {{'loss_ce': ...}}")
    for name, term in terms.items():
        if not (isinstance(name, str) and name.startswith("loss_") and len(name) > 5):
            raise ValueError(f"{where} returned a loss term named {name!r}; term names start with 'loss_' "
                             "(e.g. 'loss_ce', 'loss_kd'), which is how the trainer logs them")
        if not (isinstance(term, Tensor) and term.is_floating_point()):
            raise TypeError(f"{where} returned {_describe(term)} as term {name!r}; expected a floating-point "
                            "scalar tensor (shape [])")
        if term.dim() != 0:
            raise ValueError(f"{where} returned term {name!r} of shape {list(term.shape)}; expected a scalar "
                             "tensor (shape []): reduce it, e.g. with .mean() or .sum()")


def _describe(value: Any) -> str:
    """A value's type (and shape or length) for error messages."""
    if isinstance(value, Tensor):
        return f"a {str(value.dtype).replace('torch.', '')} tensor of shape {list(value.shape)}"
    if isinstance(value, (tuple, list, dict)):
        return f"a {type(value).__name__} of length {len(value)}"
    return f"{type(value).__name__} {value!r}"[:80]


def split_features(feats: Any, sizes: list[int], index: int) -> Any:
    """The ``index``-th chunk (along dim 0, chunk sizes ``sizes``) of every tensor in a
    (possibly nested) features structure."""
    if isinstance(feats, Tensor):
        return feats.split(sizes, dim=0)[index]
    if isinstance(feats, dict):
        return {k: split_features(v, sizes, index) for k, v in feats.items()}
    if isinstance(feats, (list, tuple)):
        return type(feats)(split_features(v, sizes, index) for v in feats)
    return feats


class Unreleased(Distiller):
    """A name that published files use but no release implements: it validates (so that
    every published file loads) and refuses to be built, saying so."""

    needs_teacher = False

    def __init__(self, student: nn.Module, teacher: nn.Module | None, cfg: Any, **_: Any) -> None:
        raise ValueError(unreleased_message(str(cfg.DISTILLER.TYPE)))


def unreleased_message(name: str) -> str:
    """Why ``DISTILLER.TYPE`` ``name`` (an :class:`Unreleased` one) cannot be trained."""
    implemented = [n for n in available_distillers() if not issubclass(_REGISTRY[n], Unreleased)]
    return (f"DISTILLER.TYPE {name!r} appears in published config files but no published release "
            f"implements it, so sldistill does not either; implemented names: {', '.join(implemented)}")


# --------------------------------------------------------------------------- registry

_REGISTRY: dict[str, type[Distiller]] = {}
_CANONICAL: dict[str, str] = {}


def register(*names: str) -> Callable[[type[Distiller]], type[Distiller]]:
    """Class decorator: register a distiller as ``DISTILLER.TYPE`` ``names[0]``; further
    names and the class's ``aliases`` are accepted for it too.

    Raises:
        ValueError: a name is already registered; a key's default breaks its own declaration
            (``Key(0.0, ..., gt=0)``); a key is also a section (``KD.T`` and ``KD.T.X``); or
            a config key the class declares is declared differently by an already registered
            distiller.
    """
    if not names:
        raise ValueError("register() needs at least one DISTILLER.TYPE name")

    def deco(cls: type[Distiller]) -> type[Distiller]:
        if not (isinstance(cls, type) and issubclass(cls, Distiller)):
            raise TypeError(f"@register({names[0]!r}) decorates a Distiller subclass, got {cls!r}")
        all_names = list(dict.fromkeys([*names, *cls.aliases]))
        for name in all_names:
            if name in _REGISTRY:
                raise ValueError(f"distiller name {name!r} registered twice "
                                 f"({_REGISTRY[name].__module__}.{_REGISTRY[name].__qualname__} and "
                                 f"{cls.__module__}.{cls.__qualname__})")
        if cls.num_views not in (1, 2):
            raise ValueError(f"{cls.__qualname__}.num_views must be 1 or 2, got {cls.num_views!r}")
        unknown = set(cls.needs) - set(BATCH_EXTRAS)
        if unknown:
            raise ValueError(f"{cls.__qualname__}.needs names unknown batch items {sorted(unknown)}; "
                             f"valid: {', '.join(BATCH_EXTRAS)}")
        for key_name, key in cls.config.items():
            problem = key.default_problem()
            if problem:
                raise ValueError(f"{cls.__qualname__}.config[{key_name!r}]: the default {key.default!r} does not "
                                 f"pass the key's own declaration: {problem}")
        merge_keys(*((n, c.config) for n, c in _owners()), (names[0], cls.config))  # conflicts raise
        for name in all_names:
            _REGISTRY[name] = cls
            _CANONICAL[name] = names[0]
        return cls

    return deco


#: extra batch items a distiller may need, and what each is
BATCH_EXTRAS = {
    "index": "each sample's index in the training set",
    "contrast_index": "CRD's contrast indices [B, K + 1], the positive first (turns on CRD sampling)",
}


def _owners() -> list[tuple[str, type[Distiller]]]:
    """``(canonical name, class)`` of every registered distiller, once each."""
    seen: dict[str, type[Distiller]] = {}
    for name, canon in _CANONICAL.items():
        seen.setdefault(canon, _REGISTRY[name])
    return sorted(seen.items())


def available_distillers(aliases: bool = True) -> list[str]:
    """The registered ``DISTILLER.TYPE`` names (with ``aliases=False``, canonical names only)."""
    return sorted(_REGISTRY) if aliases else [n for n, _ in _owners()]


def canonical_name(name: str) -> str:
    """The name a distiller was registered under (``KD_ours`` -> ``MLKD``)."""
    get_distiller_class(name)
    return _CANONICAL[name]


def distiller_keys() -> dict[str, Key]:
    """Every config key the registered distillers declare (the union of their ``config``)."""
    return merge_keys(*((n, c.config) for n, c in _owners()))


def get_distiller_class(name: str) -> type[Distiller]:
    """Look up a distiller class; unknown names raise ``ValueError`` listing valid ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=3)
        hint = f"; did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown DISTILLER.TYPE {name!r}; valid: {', '.join(available_distillers())}{hint}"
                         " (a distiller of your own must be imported first: --plugin MODULE or "
                         "EXPERIMENT.PLUGINS)") from None


def build_distiller(cfg: Any, student: nn.Module, teacher: nn.Module | None, **kwargs: Any) -> Distiller:
    """Instantiate the distiller named by ``cfg.DISTILLER.TYPE``."""
    return get_distiller_class(cfg.DISTILLER.TYPE)(student, teacher, cfg, **kwargs)
