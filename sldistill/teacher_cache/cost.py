"""When a cache pays: its build cost against the teacher forwards the runs reading it save.

Units: one *teacher epoch* is one teacher forward of every training image (one view). A
build costs ``V`` of them (every one of the ``V`` weak views of every image; 162 for CIFAR),
times ``view_cost``, the cost of one image-view in the build relative to one image in a
training step (large no-grad batches make it cheaper than 1; ``benchmarks/teacher_cache.py``
measures it). A run of ``E`` epochs that reads the cache skips ``E`` teacher epochs (its
weak view's forwards; a two-view method still runs the teacher on its strong view). A set of
runs sharing one cache saves ``sum(E) - V * view_cost`` teacher epochs; it pays when that is
positive, or at once when the cache already exists.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from sldistill._cfg import cfg_get

__all__ = ["CacheCost", "CachePlan", "CachePlanning", "teacher_cache_cost", "cache_problem", "plan_teacher_caches"]


@dataclass(frozen=True)
class CacheCost:
    """The estimate of :func:`teacher_cache_cost`, in teacher epochs (see the module docstring)."""

    num_views: int
    read_epochs: int
    build_epochs: float
    saving_epochs: float
    built: bool = False

    @property
    def pays(self) -> bool:
        """Whether building (or using the existing cache) saves teacher forwards."""
        return self.saving_epochs > 0

    def describe(self) -> str:
        """One sentence: the estimate and the verdict."""
        build = "already built" if self.built else f"building costs {self.build_epochs:g} teacher epochs"
        verdict = "pays" if self.pays else "does not pay"
        return (f"teacher cache {verdict}: {build} ({self.num_views} views per image); the runs read "
                f"{self.read_epochs} epochs, an estimated saving of {self.saving_epochs:g} teacher epochs")


def teacher_cache_cost(num_views: int, run_epochs: int | Sequence[int], *, built: bool = False,
                       view_cost: float = 1.0) -> CacheCost:
    """The estimated saving of a cache of ``num_views`` views per image read by runs of
    ``run_epochs`` epochs (one number per run, or the total).

    ``built``: the cache exists (no build cost). ``view_cost``: one image-view of the build
    relative to one image of the teacher's forward in training (1.0 unless measured).
    Returns a :class:`CacheCost`; ``.saving_epochs`` is the estimated saving (negative: it
    does not pay) and ``.pays`` the verdict.
    """
    if int(num_views) < 1:
        raise ValueError(f"num_views must be >= 1, got {num_views}")
    if view_cost < 0:
        raise ValueError(f"view_cost must be >= 0, got {view_cost}")
    read = int(run_epochs) if isinstance(run_epochs, int) else sum(int(e) for e in run_epochs)
    build = 0.0 if built else float(num_views) * float(view_cost)
    return CacheCost(int(num_views), read, build, read - build, bool(built))


def cache_problem(cfg: Any) -> str | None:
    """Why the run of ``cfg`` cannot read a teacher cache, or ``None`` if it can: the method
    has no teacher or reads the teacher's features, or the weak view is not finite. Reads no
    data."""
    from sldistill.distillers import get_distiller_class

    from .header import weak_transform_problem

    name = str(cfg_get(cfg, "DISTILLER.TYPE", "NONE"))
    cls = get_distiller_class(name)
    if not getattr(cls, "needs_teacher", True):
        return f"DISTILLER.TYPE {name} has no teacher"
    if getattr(cls, "uses_teacher_features", False):
        return (f"DISTILLER.TYPE {name} reads the teacher's features, which a teacher-logit cache does not hold: "
                "the teacher runs live")
    return weak_transform_problem(cfg)[1]


def _group_key(cfg: Any) -> tuple:
    """Config values that decide which cache a run reads (cheap: no data or weights read)."""
    from sldistill.data.keys import data_option
    from sldistill.models.teachers import teacher_root

    subset = int(data_option(cfg, "DATASET.TRAIN_SUBSET"))
    seed = int(data_option(cfg, "DATASET.SUBSET_SEED"))
    seed = int(cfg_get(cfg, "EXPERIMENT.SEED", 0)) if seed < 0 else seed
    return (str(cfg_get(cfg, "DISTILLER.TEACHER", "")), str(cfg_get(cfg, "DISTILLER.TEACHER_CKPT", "")),
            str(teacher_root(cfg)), str(cfg_get(cfg, "DATASET.TYPE", "")), str(data_option(cfg, "DATASET.ROOT")),
            subset, seed if subset > 0 else None, int(data_option(cfg, "DATASET.IMAGE_SIZE")),
            str(cfg_get(cfg, "SOLVER.AMP", "none")), bool(cfg_get(cfg, "SOLVER.CHANNELS_LAST", True)),
            tuple(cfg_get(cfg, "EXPERIMENT.PLUGINS", []) or []))


@dataclass
class CachePlan:
    """One cache a set of runs can share: where it goes, which runs read it, what it saves."""

    path: Path
    cfg: Any  #: the config to build it from (the first of its runs)
    runs: list[int]  #: positions of its runs in the list given to plan_teacher_caches
    cost: CacheCost
    ready: bool  #: a finished cache of this configuration is already at ``path``

    def describe(self) -> str:
        """What the sweep should say about it."""
        return f"{self.path} ({len(self.runs)} runs): {self.cost.describe()}"


@dataclass
class CachePlanning:
    """:func:`plan_teacher_caches`' answer: the caches, and why the other runs have none."""

    plans: list[CachePlan] = field(default_factory=list)
    skipped: dict[int, str] = field(default_factory=dict)


def plan_teacher_caches(cfgs: Sequence[Any], *, view_cost: float = 1.0) -> CachePlanning:
    """Group runs by the cache they could share and estimate, for each group, whether it pays.

    Runs whose method or data cannot use a cache (:func:`cache_problem`), or that set
    ``DISTILLER.TEACHER_CACHE`` themselves, are in ``skipped`` with the reason. For each
    group, the expected header is computed once (the training images and the teacher file
    are hashed) to find its default path (:func:`default_cache_path`) and whether a finished
    cache is there. What to do with a plan: if ``plan.cost.pays``, ``build_cache(plan.cfg,
    plan.path)`` unless ``plan.ready``, then set ``DISTILLER.TEACHER_CACHE`` to ``plan.path``
    in every run of ``plan.runs``.
    """
    from .cache import open_cache
    from .fileformat import CacheFileError
    from .header import default_cache_path, expected_header, first_mismatch

    out = CachePlanning()
    groups: dict[tuple, list[int]] = {}
    for i, cfg in enumerate(cfgs):
        if str(cfg_get(cfg, "DISTILLER.TEACHER_CACHE", "") or ""):
            out.skipped[i] = "DISTILLER.TEACHER_CACHE is set by the config"
            continue
        problem = cache_problem(cfg)
        if problem is not None:
            out.skipped[i] = problem
            continue
        groups.setdefault(_group_key(cfg), []).append(i)
    for runs in groups.values():
        cfg = cfgs[runs[0]]
        try:
            header = expected_header(cfg)
        except (OSError, ValueError) as e:
            for i in runs:
                out.skipped[i] = f"no teacher cache: {e}"
            continue
        path = default_cache_path(cfg, header)
        ready = False
        if path.is_file():
            try:
                ready = first_mismatch(header, open_cache(path).header) is None
            except CacheFileError:  # unfinished or damaged: build_cache finishes or refuses it
                ready = False
        cost = teacher_cache_cost(header["shape"][1], [int(cfg_get(cfgs[i], "SOLVER.EPOCHS", 240)) for i in runs],
                                  built=ready, view_cost=view_cost)
        out.plans.append(CachePlan(path, cfg, list(runs), cost, ready))
    return out
