"""Multi-seed runs of one or more configs, and the aggregated comparison table.

``sldistill sweep --cfg FILE [--cfg FILE ...] --seeds N [KEY VALUE ...]`` trains every config
with ``EXPERIMENT.SEED`` = ``first_seed .. first_seed + N - 1`` (the same overrides for all, so
all methods share one budget), then reads each run's ``metrics.csv`` and writes, in the output
folder:

* ``summary.md`` and ``summary.csv``: per method, the mean ± sample standard deviation
  (divisor N - 1) over seeds of the best-epoch and the last-epoch test top-1, the 95%
  t-interval of the best-epoch mean, the published number of the experiment
  (:mod:`sldistill.published`) and whether it lies in that interval, and the budget (epochs,
  views, augmentation, training images, batch);
* with ``baseline``: each method's paired difference to the baseline method, seed by seed, with
  its 95% t-interval over seeds;
* ``accuracy.png``: test top-1 per epoch per method (mean over seeds, min-max band).

Pairing: every method of one seed gets the same ``EXPERIMENT.SEED``, and every random draw of
the training data (the shuffle, each image's crop and flip, the strong policy) is a pure
function of that seed, the epoch and the sample (:mod:`sldistill.data.loaders`), so the methods
of a seed train on the same data order and the same augmentations (a two-view method's weak
view is the one-view methods' view). :func:`unpaired_seeds` lists the seeds where the configs'
data settings differ (another ``DATASET.SUBSET_SEED``, subset or batch size), which the report
names.

Runs go to ``<out>/<method>/seed<S>/`` (ordinary run folders). On CPU, or on one GPU, the runs
go one after another in this process. With several CUDA devices (``devices`` or all visible
ones when ``EXPERIMENT.DEVICE`` is ``auto``/``cuda``) each run is a ``sldistill train``
subprocess pinned to one device, as many at once as there are devices.

A seed's folder is only reused for the same configuration: a finished run of the identical
configuration (``summary.json`` and the same ``config.yaml``) is reused (and said so), an
unfinished one is resumed, so an interrupted sweep continues where it stopped; a run of a
*different* configuration is never replaced: the sweep stops, naming the folder and the keys
that differ, unless ``rerun`` is set (then every run is trained again, replacing what is there).

SIGINT / SIGTERM stop a sweep as they stop ``sldistill train``: the running run (in this process,
or each ``train`` subprocess, to which the signal is forwarded and which is waited for) finishes
its iteration, saves ``latest.pth`` with its mid-epoch position and releases its lock; no new run
starts; one line names the finished, interrupted and unstarted runs, and :class:`SweepInterrupted`
makes ``sldistill sweep`` exit with 130 / 143. Running the same sweep command again continues the interrupted
runs mid-epoch (a second SIGINT stops at once, without saving).

Here: planning the jobs (:func:`plan_sweep`), deciding on their run folders, and summarising
and reporting (:func:`summarize_runs`, :func:`paired_differences`, :func:`write_sweep_report`);
:func:`run_sweep` does all in order. Running the jobs (in this process or one subprocess per
device), the signal handling and :class:`SweepInterrupted` are in :mod:`sldistill.sweep_run`
(re-exported here); the ``sldistill sweep`` command line is :mod:`sldistill.sweep_cli`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from sldistill.report import (
    MethodSummary,
    RunRecord,
    aggregate,
    markdown_table,
    mean_ci,
    mean_std,
    plot_curves,
    read_run,
    table_notes,
    write_summary_csv,
)
from sldistill.sweep_run import SweepInterrupted, run_jobs, sweep_devices

__all__ = ["SweepJob", "SweepResult", "PairedDiff", "SweepInterrupted", "plan_sweep", "run_sweep", "summarize_runs",
           "paired_differences", "unpaired_seeds", "write_sweep_report", "sweep_devices"]


@dataclass
class SweepJob:
    """One run of a sweep: the method label, the seed and its resolved config."""

    method: str
    seed: int
    cfg: Any
    #: what to do with the run folder: train, resume, overwrite or reuse (set by run_sweep)
    mode: str = "train"

    @property
    def run_dir(self) -> Path:
        """The run folder the config names."""
        from sldistill.engine.config import run_dir

        return Path(run_dir(self.cfg))


@dataclass
class PairedDiff:
    """``method`` minus ``baseline`` over the seeds both ran: mean, sample std and 95% t-interval
    of the per-seed differences of the best-epoch (``which="best"``) or last-epoch top-1."""

    method: str
    baseline: str
    which: str
    n: int
    mean: float
    std: float
    ci: tuple[float, float] | None
    seeds: list[int] = field(default_factory=list)


@dataclass
class SweepResult:
    """What :func:`run_sweep` produced."""

    out: Path
    summaries: list[MethodSummary]
    records: list[RunRecord]
    table: str
    files: dict[str, Path] = field(default_factory=dict)
    paired: list[PairedDiff] = field(default_factory=list)


def _label(cfg: Any) -> str:
    name = str(cfg.EXPERIMENT.NAME or cfg.EXPERIMENT.TAG or cfg.DISTILLER.TYPE)
    return re.sub(r"[^A-Za-z0-9_.,+-]+", "_", name)


def plan_sweep(cfg_files: Sequence[str | Path], seeds: int | Sequence[int], overrides: Sequence[str] = (), *,
               out: str | Path = "runs/sweep", base: str | None = None, first_seed: int = 0,
               labels: Sequence[str] | None = None) -> list[SweepJob]:
    """Resolve the configs of every (config, seed) pair of a sweep without running anything.

    Jobs come seed-major: every config's first seed, then every config's second seed, ...

    Args:
        cfg_files: experiment YAML files (see :func:`sldistill.engine.config.load_config`).
        seeds: a count N (seeds ``first_seed .. first_seed + N - 1``) or explicit seeds.
        overrides: ``KEY VALUE`` items applied to every config (one budget for all).
        out: the sweep folder; runs go to ``<out>/<method>/seed<S>``.
        labels: method labels, one per file (default: the config's ``EXPERIMENT.NAME`` or
            ``TAG``).

    Raises:
        ValueError: no files, a seed count below 1, duplicate labels or mismatched ``labels``.
    """
    from sldistill.engine.config import load_config, merge_overrides

    if not cfg_files:
        raise ValueError("a sweep needs at least one --cfg FILE")
    if isinstance(seeds, int):
        if seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {seeds}")
        seed_list = list(range(int(first_seed), int(first_seed) + seeds))
    else:
        seed_list = [int(s) for s in seeds]
        if not seed_list:
            raise ValueError("the seed list is empty")
    if labels is not None and len(labels) != len(cfg_files):
        raise ValueError(f"{len(labels)} labels for {len(cfg_files)} config files; give one label per --cfg")
    per_cfg: list[list[SweepJob]] = []
    seen: dict[str, str] = {}
    for i, path in enumerate(cfg_files):
        cfg0 = load_config(path, list(overrides), base=base)
        label = labels[i] if labels is not None else _label(cfg0)
        if label in seen:
            raise ValueError(f"two configs share the method label {label!r} ({seen[label]} and {path}); "
                             "give EXPERIMENT.NAME / TAG or --label to tell them apart")
        seen[label] = str(path)
        per_cfg.append([])
        for s in seed_list:
            cfg = load_config(path, list(overrides), base=base)
            merge_overrides(cfg, [("EXPERIMENT.SEED", s), ("LOG.PREFIX", str(out)), ("EXPERIMENT.PROJECT", label),
                                  ("EXPERIMENT.NAME", f"seed{s}")], source="<sweep>")
            per_cfg[-1].append(SweepJob(label, s, cfg))
    # seed-major order: every method's first seed before any second seed (a partial sweep is balanced)
    return [runs[k] for k in range(len(seed_list)) for runs in per_cfg]


def _folder_decision(job: SweepJob, rerun: bool) -> str:
    """``"reuse"`` (a finished run of this config), ``"resume"`` (an unfinished one), ``"train"``
    (nothing there) or ``"overwrite"`` (``rerun``); a run of another config raises ValueError."""
    import yaml

    from sldistill.engine.rundir import config_changes, run_state

    d = job.run_dir
    state = run_state(d)
    if not state.exists:
        return "train"
    if rerun:
        return "overwrite"
    cfg_file = d / "config.yaml"
    if not cfg_file.is_file() and not (d / "latest.pth").is_file():
        return "overwrite"  # stopped while starting: no config, no checkpoint, nothing to keep
    saved = yaml.safe_load(cfg_file.read_text(encoding="utf-8")) if cfg_file.is_file() else {}
    changes, _ = config_changes(saved or {}, job.cfg)
    # the cache gives the teacher's own logits: whether a run read one does not change it
    changes = [c for c in changes if not c.startswith("DISTILLER.TEACHER_CACHE:")]
    if changes:
        raise ValueError(f"[sweep] {job.method} seed {job.seed}: {d} holds {state.describe()} of a different config "
                         f"({'; '.join(changes[:5])}{' ...' if len(changes) > 5 else ''}); not replacing it. Use "
                         "another --out, or --rerun to train every run again")
    if state.finished:
        return "reuse"
    return "resume" if (d / "latest.pth").is_file() else "overwrite"


def _use_teacher_caches(jobs: Sequence[SweepJob]) -> None:
    """Build or reuse a teacher cache for each group of runs where it pays (see ``run_sweep``)."""
    from sldistill.teacher_cache import build_cache, plan_teacher_caches

    planning = plan_teacher_caches([j.cfg for j in jobs])
    for plan in planning.plans:
        if not plan.cost.pays:
            print(f"[sweep] no teacher cache: {plan.describe()}", flush=True)
            continue
        print(f"[sweep] teacher cache {'reused' if plan.ready else 'built'}: {plan.describe()}", flush=True)
        if not plan.ready:
            build_cache(plan.cfg, plan.path)
        for i in plan.runs:
            jobs[i].cfg.DISTILLER.TEACHER_CACHE = str(plan.path)


def paired_differences(records: Sequence[RunRecord], baseline: str, which: str = "best") -> list[PairedDiff]:
    """For every method other than ``baseline`` (first-seen order): its per-seed difference to
    ``baseline`` over the seeds both ran, with mean, sample std and 95% t-interval.

    Raises:
        ValueError: ``baseline`` is not among the methods, or a method has a seed twice.
    """
    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last', not {which!r}")
    by: dict[str, dict[int, float]] = {}
    for r in records:
        seeds = by.setdefault(r.method, {})
        if r.seed in seeds:
            raise ValueError(f"method {r.method!r} has two runs with seed {r.seed}; paired differences need one")
        seeds[r.seed] = r.best if which == "best" else r.last
    if baseline not in by:
        raise ValueError(f"baseline {baseline!r} is not one of the methods: {', '.join(by)}")
    out = []
    for method, vals in by.items():
        if method == baseline:
            continue
        common = sorted(set(vals) & set(by[baseline]))
        if not common:
            continue
        diffs = [vals[s] - by[baseline][s] for s in common]
        m, sd = mean_std(diffs)
        out.append(PairedDiff(method, baseline, which, len(diffs), m, sd, mean_ci(diffs) if len(diffs) > 1 else None,
                              common))
    return out


#: DATASET keys that do not change what a run trains on
_DATA_PLACE_KEYS = ("ROOT", "NUM_WORKERS", "DOWNLOAD", "TEST")


def _data_signature(cfg: Any) -> str:
    data = {k: v for k, v in cfg.DATASET.to_dict().items() if k not in _DATA_PLACE_KEYS}
    return repr((sorted(data.items()), int(cfg.EXPERIMENT.SEED), int(cfg.SOLVER.BATCH_SIZE)))


def unpaired_seeds(jobs: Sequence[SweepJob]) -> list[int]:
    """Seeds whose methods do not all train on the same data stream: the DATASET settings (other
    than places and workers), the seed or the batch size differ between their configs."""
    sigs: dict[int, set[str]] = {}
    for j in jobs:
        sigs.setdefault(j.seed, set()).add(_data_signature(j.cfg))
    return sorted(s for s, v in sigs.items() if len(v) > 1)


def summarize_runs(jobs: Sequence[SweepJob]) -> tuple[list[MethodSummary], list[RunRecord]]:
    """Read every job's run folder and aggregate per method (in the jobs' order)."""
    records = [read_run(j.run_dir, method=j.method) for j in jobs]
    order = list(dict.fromkeys(j.method for j in jobs))
    return aggregate(records, order=order), records


def write_sweep_report(summaries: Sequence[MethodSummary], records: Sequence[RunRecord], out: str | Path, *,
                       command: str = "", plot: bool = True, baseline: str | None = None,
                       unpaired: Sequence[int] = ()) -> dict[str, Path]:
    """Write ``summary.md``, ``summary.csv`` (and ``accuracy.png``) in ``out``; return the paths.
    With ``baseline``, the paired differences to that method are in both files."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paired = (paired_differences(records, baseline, "best") + paired_differences(records, baseline, "last")
              if baseline else [])
    files = {"csv": write_summary_csv(summaries, out / "summary.csv", paired=paired)}
    # views and augmentation differ by design (two-view methods); epochs, images and batch must not
    budgets = sorted({", ".join(p for p in s.budget.split(", ") if "view" not in p and "crop" not in p)
                      for s in summaries if s.budget})
    lines = ["# Sweep summary", ""]
    if command:
        lines += ["Command:", "", "```", command, "```", ""]
    lines += [markdown_table(summaries, paired=paired), ""]
    for note in table_notes(summaries, paired):
        lines += [note, ""]
    if len(budgets) > 1:
        lines += [f"**Note:** the methods' epoch/data budgets differ ({'; '.join(budgets)}); "
                  "their numbers are not directly comparable.", ""]
    if unpaired:
        lines += [f"**Note:** for seed(s) {', '.join(map(str, unpaired))} the methods' data settings differ "
                  "(DATASET keys, seed or batch size), so their runs did not see the same data: the paired "
                  "differences are not paired there.", ""]
    if plot and records:
        files["png"] = plot_curves(records, out / "accuracy.png", title="test top-1 per epoch",
                                   order=[s.method for s in summaries])
        lines += ["![test top-1 per epoch](accuracy.png)", ""]
    (out / "summary.md").write_text("\n".join(lines), encoding="utf-8")
    files["md"] = out / "summary.md"
    return files


def run_sweep(cfg_files: Sequence[str | Path], seeds: int | Sequence[int], overrides: Sequence[str] = (), *,
              out: str | Path = "runs/sweep", base: str | None = None, first_seed: int = 0,
              labels: Sequence[str] | None = None, devices: Sequence[str] | None = None, rerun: bool = False,
              command: str = "", baseline: str | None = None, teacher_cache: str = "auto",
              train_fn: Callable[..., Any] | None = None) -> SweepResult:
    """Train every (config, seed) pair, then aggregate and write the report (see module docs).

    Args:
        baseline: a method label: report every other method's paired difference to it.
        teacher_cache: ``"auto"``: where the runs that can share one exact teacher-logit cache
            (:mod:`sldistill.teacher_cache`) would save more teacher forwards than building it
            costs, build it (or reuse a finished one) and let them read it, saying so with the
            estimated saving; ``"off"``: never.
        train_fn: what trains one config in this process (default :func:`sldistill.engine.run.train`).

    Returns:
        :class:`SweepResult` with the per-method summaries, the run records, the markdown
        table, the written files and the paired differences.

    Raises:
        ValueError: ``baseline`` is not one of the methods (before anything is trained).
        SweepInterrupted: SIGINT / SIGTERM stopped the runs (see module docs).
    """
    out = Path(out)
    jobs = plan_sweep(cfg_files, seeds, overrides, out=out, base=base, first_seed=first_seed, labels=labels)
    methods = list(dict.fromkeys(j.method for j in jobs))
    if baseline is not None and baseline not in methods:
        raise ValueError(f"--baseline {baseline!r} is not one of the sweep's methods: {', '.join(methods)}")
    if train_fn is None:
        from sldistill.engine.run import train

        train_fn = train
    if teacher_cache not in ("auto", "off"):
        raise ValueError(f"teacher_cache must be 'auto' or 'off', got {teacher_cache!r}")
    if teacher_cache == "auto":
        _use_teacher_caches(jobs)
    todo = []
    for job in jobs:  # decide for every seed first: a conflict stops the sweep before anything trains
        job.mode = _folder_decision(job, rerun)
        if job.mode == "reuse":
            print(f"[sweep] {job.method} seed {job.seed}: reusing the finished run of the same config in "
                  f"{job.run_dir}", flush=True)
            continue
        if job.mode == "resume":
            print(f"[sweep] {job.method} seed {job.seed}: resuming the unfinished run in {job.run_dir}", flush=True)
        todo.append(job)
    run_jobs(todo, sweep_devices(jobs[0].cfg, devices), out, train_fn, reused=[j for j in jobs if j.mode == "reuse"])
    summaries, records = summarize_runs(jobs)
    files = write_sweep_report(summaries, records, out, command=command, baseline=baseline,
                               unpaired=unpaired_seeds(jobs))
    paired = (paired_differences(records, baseline, "best") + paired_differences(records, baseline, "last")
              if baseline else [])
    return SweepResult(out, summaries, records, markdown_table(summaries, paired=paired), files, paired)
