"""Reading run folders and writing comparison tables and plots (shared by ``demo`` and ``sweep``).

A run folder is what :func:`sldistill.engine.run.train` writes: ``config.yaml`` and
``metrics.csv`` (one row per epoch with ``epoch`` and ``test_acc``, top-1 in percent).
:func:`read_run` turns one into a :class:`RunRecord`; :func:`aggregate` groups records by
method and gives mean and standard deviation of the best-epoch and last-epoch top-1. The
standard deviation is the sample one (divisor N - 1); with one run it is reported as 0 and
the table says ``n=1``.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

__all__ = [
    "RunRecord",
    "MethodSummary",
    "read_metrics",
    "read_run",
    "budget_of",
    "mean_std",
    "aggregate",
    "format_pm",
    "markdown_table",
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


def read_metrics(path: str | Path) -> list[dict[str, str]]:
    """Rows of a ``metrics.csv`` (strings); raises ``FileNotFoundError`` naming the file."""
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.csv"
    if not p.is_file():
        raise FileNotFoundError(f"no metrics file {p} (has the run finished an epoch?)")
    with open(p, newline="") as f:
        return list(csv.DictReader(f))


def budget_of(cfg: Mapping[str, Any], num_train: int | None = None) -> str:
    """The training budget of a config as one line: epochs, views, augmentation, images, batch.

    Two-view trainers (``SOLVER.TRAINER`` ``ours``) train on a weak view (random crop + flip)
    and a strong view (the strong policy on top); the others on the weak view only.
    """
    solver = cfg["SOLVER"]
    two = str(solver["TRAINER"]) == "ours"
    subset = int(cfg["DATASET"].get("TRAIN_SUBSET", 0) or 0)
    images = num_train if num_train is not None else (subset if subset > 0 else None)
    parts = [f"{int(solver['EPOCHS'])} epochs", "2 views" if two else "1 view",
             "crop+flip / +strong" if two else "crop+flip"]
    parts.append(f"{images} train images" if images else "full train set")
    parts.append(f"batch {int(solver['BATCH_SIZE'])}")
    return ", ".join(parts)


def read_run(run_dir: str | Path, method: str | None = None) -> RunRecord:
    """Read a run folder's ``metrics.csv`` (and ``config.yaml`` for seed, epochs and budget).

    Args:
        run_dir: the folder.
        method: the label; default the config's ``EXPERIMENT.NAME`` or ``TAG``.

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
        method = str(exp.get("NAME") or exp.get("TAG") or run_dir.name)
    budget = budget_of(cfg) if cfg else ""
    return RunRecord(method, seed, epochs, acc, planned, budget, run_dir)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (divisor N - 1; 0.0 for a single value)."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("mean_std of no values")
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def aggregate(records: Iterable[RunRecord], order: Sequence[str] | None = None) -> list[MethodSummary]:
    """Group runs by method; mean and sample std (N - 1) of best and last top-1 per method.

    ``order`` lists methods in the order wanted (others follow in first-seen order). Runs of
    one method with different budgets raise ``ValueError`` (they would not be comparable).
    """
    groups: dict[str, list[RunRecord]] = {}
    for r in records:
        groups.setdefault(r.method, []).append(r)
    names = [m for m in (order or []) if m in groups] + [m for m in groups if m not in (order or [])]
    out = []
    for name in names:
        runs = groups[name]
        budgets = sorted({r.budget for r in runs})
        if len(budgets) > 1:
            raise ValueError(f"method {name!r}: runs with different budgets cannot be averaged: {budgets}")
        bm, bs = mean_std([r.best for r in runs])
        lm, ls = mean_std([r.last for r in runs])
        out.append(MethodSummary(name, len(runs), bm, bs, lm, ls, budgets[0], sorted(r.seed for r in runs),
                                 sum(not r.complete for r in runs)))
    return out


def format_pm(mean: float, std: float, n: int) -> str:
    """``"91.23 ± 0.17"``, or just the mean for one run."""
    return f"{mean:.2f} ± {std:.2f}" if n > 1 else f"{mean:.2f}"


def markdown_table(summaries: Sequence[MethodSummary], *, with_budget: bool = True) -> str:
    """A markdown table: method, runs, best top-1, last top-1 (mean ± std over seeds), budget."""
    head = ["method", "runs", "best top-1 (%)", "last top-1 (%)"] + (["budget"] if with_budget else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for s in summaries:
        runs = f"{s.n}" + (f" ({s.incomplete} incomplete)" if s.incomplete else "")
        cells = [s.method, runs, format_pm(s.best_mean, s.best_std, s.n), format_pm(s.last_mean, s.last_std, s.n)]
        if with_budget:
            cells.append(s.budget)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_summary_csv(summaries: Sequence[MethodSummary], path: str | Path) -> Path:
    """Write the aggregated table as CSV (std columns are sample std, N - 1)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "runs", "seeds", "best_mean", "best_std", "last_mean", "last_std", "budget",
                    "incomplete"])
        for s in summaries:
            w.writerow([s.method, s.n, " ".join(map(str, s.seeds)), f"{s.best_mean:.4f}", f"{s.best_std:.4f}",
                        f"{s.last_mean:.4f}", f"{s.last_std:.4f}", s.budget, s.incomplete])
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
