"""Reading run folders and writing comparison tables and plots (shared by ``demo``, ``sweep`` and
``report``).

A run folder is what :func:`sldistill.engine.run.train` writes: ``config.yaml`` and
``metrics.csv`` (one row per epoch with ``epoch`` and ``test_acc``, top-1 in percent).
:func:`read_run` turns one into a :class:`RunRecord`; :func:`aggregate` groups records by
method and gives mean and standard deviation of the best-epoch and last-epoch top-1, the 95%
t-interval of the best-epoch mean over seeds and the published number of the experiment
(:mod:`sldistill.published`) where there is one; :func:`markdown_table` also shows paired
differences to a baseline (:func:`sldistill.sweep.paired_differences`). The standard deviation
is the sample one (divisor N - 1); with one run it is reported as 0, the table says ``n=1``
and there is no interval. N counts seeds, not folders: of several runs of one seed in a group
:func:`one_run_per_seed` keeps one (the one that logged the most epochs, then the latest).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from sldistill.published import SOURCES, PublishedResult, experiment_key, lookup
from sldistill.stats import mean_ci, mean_std, seeds_needed, t_quantile

if TYPE_CHECKING:
    from sldistill.sweep import PairedDiff

__all__ = [
    "RunRecord",
    "MethodSummary",
    "read_metrics",
    "read_run",
    "run_label",
    "budget_of",
    "mean_std",
    "t_quantile",
    "mean_ci",
    "seeds_needed",
    "aggregate",
    "one_run_per_seed",
    "format_pm",
    "markdown_table",
    "table_notes",
    "write_summary_csv",
    "plot_curves",
]

@dataclass
class RunRecord:
    """One finished (or partial) run.

    Attributes:
        method: the label it is grouped under.
        seed: ``EXPERIMENT.SEED``.
        epochs: the epochs logged (1-based, in order).
        test_acc: top-1 (%) after each logged epoch.
        planned_epochs: ``SOLVER.EPOCHS`` of the run (``len(epochs)`` if unknown).
        budget: the training budget as text (see :func:`budget_of`).
        run_dir: where it was read from.
    """

    method: str
    seed: int
    epochs: list[int]
    test_acc: list[float]
    planned_epochs: int
    budget: str = ""
    run_dir: Path | None = None
    config: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def key(self) -> tuple[str, str, str, str] | None:
        """``(method, teacher, student, dataset)`` of the config (see :func:`sldistill.published.experiment_key`)."""
        return experiment_key(self.config) if self.config else None

    @property
    def best(self) -> float:
        """Highest top-1 over the logged epochs."""
        return max(self.test_acc)

    @property
    def best_epoch(self) -> int:
        """The (first) epoch with the highest top-1."""
        return self.epochs[self.test_acc.index(self.best)]

    @property
    def last(self) -> float:
        """Top-1 after the last logged epoch."""
        return self.test_acc[-1]

    @property
    def complete(self) -> bool:
        """True when every planned epoch was logged."""
        return bool(self.epochs) and self.epochs[-1] >= self.planned_epochs


@dataclass
class MethodSummary:
    """Mean and sample standard deviation (N - 1) over the runs of one method."""

    method: str
    n: int
    best_mean: float
    best_std: float
    last_mean: float
    last_std: float
    budget: str
    seeds: list[int] = field(default_factory=list)
    incomplete: int = 0
    best_values: list[float] = field(default_factory=list)
    last_values: list[float] = field(default_factory=list)
    published: PublishedResult | None = None
    #: one line per seed that several runs of this method had (see :func:`one_run_per_seed`)
    repeated: list[str] = field(default_factory=list)

    @property
    def best_ci(self) -> tuple[float, float] | None:
        """95% t-interval of the best-epoch mean over seeds, clipped to the accuracy range [0, 100]
        (``None`` with fewer than 2 runs)."""
        if len(self.best_values) < 2:
            return None
        lo, hi = mean_ci(self.best_values)
        return max(lo, 0.0), min(hi, 100.0)

    @property
    def published_in_ci(self) -> bool | None:
        """Whether the published number lies in :attr:`best_ci` (``None``: no number or no interval)."""
        ci = self.best_ci
        if self.published is None or ci is None:
            return None
        return ci[0] <= self.published.top1 <= ci[1]


def read_metrics(path: str | Path) -> list[dict[str, str]]:
    """Rows of a ``metrics.csv`` (strings); raises ``FileNotFoundError`` naming the file."""
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.csv"
    if not p.is_file():
        raise FileNotFoundError(f"no metrics file {p} (has the run finished an epoch?)")
    with open(p, newline="") as f:
        return list(csv.DictReader(f))


def _num_views(cfg: Mapping[str, Any]) -> int | None:
    """Views the config's distiller trains on (its class's ``num_views``), ``None`` if unknown."""
    from sldistill.distillers import get_distiller_class

    dtype = str(cfg.get("DISTILLER", {}).get("TYPE", "NONE"))
    try:
        return int(get_distiller_class(dtype).num_views)
    except ValueError:  # a plugin distiller: import the config's plugins, then ask again
        try:
            from sldistill.engine.config import load_plugins

            load_plugins(list(cfg.get("EXPERIMENT", {}).get("PLUGINS", []) or []), "EXPERIMENT.PLUGINS")
            return int(get_distiller_class(dtype).num_views)
        except ValueError:
            return None


def budget_of(cfg: Mapping[str, Any], num_train: int | None = None) -> str:
    """The training budget of a config as one line: epochs, views, augmentation, images, batch.

    The number of views is the distiller's (``num_views`` of ``DISTILLER.TYPE``'s class):
    two-view distillers (SLD, MLKD) train on a weak view (random crop + flip) and a strong view
    (the strong policy on top); the others on the weak view only.
    """
    solver = cfg["SOLVER"]
    views = _num_views(cfg)
    subset = int(cfg["DATASET"].get("TRAIN_SUBSET", 0) or 0)
    images = num_train if num_train is not None else (subset if subset > 0 else None)
    parts = [f"{int(solver['EPOCHS'])} epochs",
             {None: "? views", 1: "1 view", 2: "2 views"}.get(views, f"{views} views"),
             "crop+flip / +strong" if views == 2 else "crop+flip"]
    parts.append(f"{images} train images" if images else "full train set")
    parts.append(f"batch {int(solver['BATCH_SIZE'])}")
    return ", ".join(parts)


#: DISTILLER.TYPE names whose label in a published TAG is another word
_TAG_METHOD = {"KD_ours": "mlkd", "NONE": "vanilla"}


def run_label(cfg: Mapping[str, Any]) -> str:
    """A run's experiment label: its ``EXPERIMENT.TAG`` when that names the config's method,
    teacher and student (the published ``method,teacher,student`` or ``vanilla,student``; the
    method's variant suffix, as in ``kd_ls``, is kept), else those three of the config. A TAG
    not of that form is kept as it is."""
    exp, distiller = cfg.get("EXPERIMENT", {}) or {}, cfg.get("DISTILLER", {}) or {}
    tag = str(exp.get("TAG") or "")
    parts = [p.strip() for p in tag.split(",")]
    if len(parts) not in (2, 3) or not distiller.get("TYPE"):
        return tag
    dtype = str(distiller["TYPE"])
    method = _TAG_METHOD.get(dtype, dtype.lower())
    teacher, student = str(distiller.get("TEACHER", "")), str(distiller.get("STUDENT", ""))
    name = parts[0] if parts[0].lower().split("_")[0] == method.split("_")[0] else method
    want = [name, student] if method == "vanilla" else [name, teacher, student]
    return tag if parts == want else ",".join(want)


def read_run(run_dir: str | Path, method: str | None = None) -> RunRecord:
    """Read a run folder's ``metrics.csv`` (and ``config.yaml`` for seed, epochs and budget).

    Args:
        run_dir: the folder.
        method: the label; default the config's ``EXPERIMENT.NAME``, else its :func:`run_label`
            (the TAG, or the method and models the run trained where the TAG names others).

    Raises:
        FileNotFoundError: no ``metrics.csv``.
        ValueError: the file has no ``epoch`` / ``test_acc`` columns or no rows.
    """
    import yaml

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    if not rows:
        raise ValueError(f"{run_dir / 'metrics.csv'} has no rows")
    if "epoch" not in rows[0] or "test_acc" not in rows[0]:
        raise ValueError(f"{run_dir / 'metrics.csv'} lacks the 'epoch' and 'test_acc' columns; has {list(rows[0])}")
    rows = sorted(rows, key=lambda r: int(r["epoch"]))
    epochs = [int(r["epoch"]) for r in rows]
    acc = [float(r["test_acc"]) for r in rows]
    cfg: dict[str, Any] = {}
    cfg_file = run_dir / "config.yaml"
    if cfg_file.is_file():
        cfg = yaml.safe_load(cfg_file.read_text()) or {}
    seed = int(cfg.get("EXPERIMENT", {}).get("SEED", 0)) if cfg else 0
    planned = int(cfg["SOLVER"]["EPOCHS"]) if cfg else epochs[-1]
    if method is None:
        exp = cfg.get("EXPERIMENT", {}) if cfg else {}
        method = str(exp.get("NAME") or (run_label(cfg) if cfg else "") or run_dir.name)
    budget = budget_of(cfg) if cfg else ""
    return RunRecord(method, seed, epochs, acc, planned, budget, run_dir, cfg)


def _written_at(r: RunRecord) -> float:
    try:
        return (r.run_dir / "metrics.csv").stat().st_mtime if r.run_dir is not None else 0.0
    except OSError:
        return 0.0


def one_run_per_seed(records: Iterable[RunRecord]) -> tuple[list[RunRecord], list[str]]:
    """``(records with one run per (method, seed), one warning line per seed that had several)``.

    Of several runs of one seed under one method the one kept is the one that logged the most
    epochs, and of those the latest (``metrics.csv`` written last): a repeat is the same
    experiment again, not another seed, so it must not count in N."""
    records = list(records)
    by: dict[tuple[str, int], list[RunRecord]] = {}
    for r in records:
        by.setdefault((r.method, r.seed), []).append(r)
    keep: set[int] = set()
    warnings = []
    for (method, seed), runs in by.items():
        chosen = max(runs, key=lambda r: (len(r.epochs), _written_at(r)))
        keep.add(id(chosen))
        if len(runs) > 1:
            folders = ", ".join(str(r.run_dir) for r in runs)
            warnings.append(f"{method}: {len(runs)} runs of seed {seed} ({folders}); counted once, as "
                            f"{chosen.run_dir} (the most epochs, then the latest)")
    return [r for r in records if id(r) in keep], warnings


def aggregate(records: Iterable[RunRecord], order: Sequence[str] | None = None) -> list[MethodSummary]:
    """Group runs by method; mean and sample std (N - 1, N the number of seeds) of best and last
    top-1 per method, and the published number of the method's experiment when its runs share one.

    ``order`` lists methods in the order wanted (others follow in first-seen order). Several runs
    of one seed count once (:func:`one_run_per_seed`; the summary's ``repeated`` says which).
    Runs of one method with different budgets raise ``ValueError`` (they would not be comparable).
    """
    groups: dict[str, list[RunRecord]] = {}
    for r in records:
        groups.setdefault(r.method, []).append(r)
    names = [m for m in (order or []) if m in groups] + [m for m in groups if m not in (order or [])]
    out = []
    for name in names:
        budgets = sorted({r.budget for r in groups[name]})  # before repeats are dropped: all must agree
        if len(budgets) > 1:
            raise ValueError(f"method {name!r}: runs with different budgets cannot be averaged: {budgets}")
        runs, repeated = one_run_per_seed(groups[name])
        bm, bs = mean_std([r.best for r in runs])
        lm, ls = mean_std([r.last for r in runs])
        keys = {r.key for r in runs}
        key = keys.pop() if len(keys) == 1 else None
        out.append(MethodSummary(name, len(runs), bm, bs, lm, ls, budgets[0], sorted(r.seed for r in runs),
                                 sum(not r.complete for r in runs), [r.best for r in runs], [r.last for r in runs],
                                 lookup(*key) if key is not None else None, repeated))
    return out


def format_pm(mean: float, std: float, n: int) -> str:
    """``"91.23 ± 0.17"``, or just the mean for one run."""
    return f"{mean:.2f} ± {std:.2f}" if n > 1 else f"{mean:.2f}"


def _ci(ci: tuple[float, float] | None) -> str:
    return f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci is not None else "n<2"


def _diff(d: PairedDiff | None) -> str:
    if d is None:
        return "—"
    return f"{d.mean:+.2f} {_ci(d.ci)}" + (f" (n={d.n})" if d.n < 2 else "")


def _in_ci(s: MethodSummary) -> str:
    inside = s.published_in_ci
    if inside is None:
        return "—" if s.published is None else "n<2"
    if inside:
        return "yes"
    ci = s.best_ci
    return "no, runs higher" if ci is not None and s.published is not None and ci[0] > s.published.top1 \
        else "no, runs lower"


def markdown_table(summaries: Sequence[MethodSummary], *, with_budget: bool = True,
                   paired: Sequence[PairedDiff] | None = None) -> str:
    """A markdown table: method, runs, best and last top-1 (mean ± std over seeds), the 95%
    interval of the best-epoch mean, the paired differences to the baseline (when ``paired`` is
    given), the published number with its source and whether it lies in the interval (when any
    method has one), the budget."""
    base = paired[0].baseline if paired else None
    best = {d.method: d for d in (paired or []) if d.which == "best"}
    last = {d.method: d for d in (paired or []) if d.which == "last"}
    has_pub = any(s.published is not None for s in summaries)
    head = ["method", "runs", "best top-1 (%)", "last top-1 (%)", "best: 95% CI"]
    if base is not None:
        head += [f"Δ best vs {base} (95% CI)", f"Δ last vs {base} (95% CI)"]
    if has_pub:
        head += ["published", "published in CI", "source"]
    if with_budget:
        head.append("budget")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for s in summaries:
        runs = f"{s.n}" + (f" ({s.incomplete} incomplete)" if s.incomplete else "")
        cells = [s.method, runs, format_pm(s.best_mean, s.best_std, s.n), format_pm(s.last_mean, s.last_std, s.n),
                 _ci(s.best_ci)]
        if base is not None:
            cells += ["baseline", "baseline"] if s.method == base else [_diff(best.get(s.method)),
                                                                       _diff(last.get(s.method))]
        if has_pub:
            pub = s.published
            cells += [f"{pub.top1:.2f}", _in_ci(s), pub.source] if pub is not None else ["—", "—", "—"]
        if with_budget:
            cells.append(s.budget)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_notes(summaries: Sequence[MethodSummary], paired: Sequence[PairedDiff] | None = None) -> list[str]:
    """The lines that explain :func:`markdown_table`'s columns (and name the published sources used)."""
    lines = ["Top-1 on the test set, mean ± sample standard deviation (divisor N - 1) over seeds; "
             "'best' is the highest epoch of each run (what the papers report), 'last' its final epoch. "
             "95% CI: t-interval of the best-epoch mean over seeds, mean ± t(0.975, n - 1) · s / √n, clipped "
             "to the accuracy range [0, 100]."]
    if any(s.repeated for s in summaries):
        lines.append("Runs count seeds: where an experiment has several runs of one seed, the one that logged the "
                     "most epochs (of those, the latest) stands for that seed and the others are left out.")
    if paired:
        lines.append(f"Δ: paired by seed, each method's top-1 minus {paired[0].baseline}'s in the run of the same "
                     "seed (same data order and augmentations), mean and 95% t-interval over the seeds both ran; "
                     "an interval that excludes 0 separates the two methods.")
    used = sorted({s.published.source for s in summaries if s.published is not None})
    if used:
        lines.append("Published: the original authors' best-epoch top-1, usually a mean over 3-5 runs; sources: "
                     + "; ".join(f"{k}: {SOURCES[k][0]} <{SOURCES[k][1]}>" for k in used) + ".")
    return lines


def write_summary_csv(summaries: Sequence[MethodSummary], path: str | Path,
                      paired: Sequence[PairedDiff] | None = None) -> Path:
    """Write the aggregated table as CSV (std columns are sample std, N - 1; a value that does not
    exist is an empty cell; the ``delta_*`` columns only with ``paired``)."""
    diffs = {(d.method, d.which): d for d in (paired or [])}

    def f4(v: float | None) -> str:
        return "" if v is None else f"{v:.4f}"

    rows = []
    for s in summaries:
        ci, pub, inside = s.best_ci, s.published, s.published_in_ci
        row: dict[str, Any] = {
            "method": s.method, "runs": s.n, "seeds": " ".join(map(str, s.seeds)), "best_mean": f4(s.best_mean),
            "best_std": f4(s.best_std), "last_mean": f4(s.last_mean), "last_std": f4(s.last_std), "budget": s.budget,
            "incomplete": s.incomplete, "best_ci_low": f4(ci[0] if ci else None),
            "best_ci_high": f4(ci[1] if ci else None), "published": f4(pub.top1 if pub else None),
            "published_source": pub.source if pub else "",
            "published_in_ci": "" if inside is None else str(inside).lower()}
        if paired:
            row["baseline"] = paired[0].baseline
            for which in ("best", "last"):
                d = diffs.get((s.method, which))
                row[f"delta_{which}"] = f4(d.mean if d else None)
                row[f"delta_{which}_low"] = f4(d.ci[0] if d and d.ci else None)
                row[f"delta_{which}_high"] = f4(d.ci[1] if d and d.ci else None)
        rows.append(row)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["method"])
        w.writeheader()
        w.writerows(rows)
    return p


def plot_curves(records: Sequence[RunRecord], path: str | Path, *, title: str = "",
                order: Sequence[str] | None = None) -> Path:
    """PNG of test top-1 per epoch, one line per method (mean over its runs; a band of min-max
    when there are several). Uses matplotlib's Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    groups: dict[str, list[RunRecord]] = {}
    for r in records:
        groups.setdefault(r.method, []).append(r)
    names = [m for m in (order or []) if m in groups] + [m for m in groups if m not in (order or [])]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for name in names:
        runs = groups[name]
        n = min(len(r.epochs) for r in runs)
        xs = runs[0].epochs[:n]
        cols = [[r.test_acc[i] for r in runs] for i in range(n)]
        mean = [sum(c) / len(c) for c in cols]
        (line,) = ax.plot(xs, mean, marker="o", markersize=3, label=f"{name} (n={len(runs)})")
        if len(runs) > 1:
            ax.fill_between(xs, [min(c) for c in cols], [max(c) for c in cols], color=line.get_color(), alpha=0.15)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test top-1 (%)")
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p)
    plt.close(fig)
    return p
