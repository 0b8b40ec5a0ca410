"""Multi-seed runs of one or more configs, and the aggregated comparison table.

``sldistill sweep --cfg FILE [--cfg FILE ...] --seeds N [KEY VALUE ...]`` trains every config
with ``EXPERIMENT.SEED`` = ``first_seed .. first_seed + N - 1`` (the same overrides for all, so
all methods share one budget), then reads each run's ``metrics.csv`` and writes, in the output
folder:

* ``summary.md`` and ``summary.csv``: per method, the mean ± sample standard deviation
  (divisor N - 1) over seeds of the best-epoch and the last-epoch test top-1, with the budget
  (epochs, views, augmentation, training images, batch) beside it;
* ``accuracy.png``: test top-1 per epoch per method (mean over seeds, min-max band).

Runs go to ``<out>/<method>/seed<S>/`` (ordinary run folders). On CPU, or on one GPU, the runs
go one after another in this process. With several CUDA devices (``devices`` or all visible
ones when ``EXPERIMENT.DEVICE`` is ``auto``/``cuda``) each run is a ``sldistill train``
subprocess pinned to one device, as many at once as there are devices.

A run whose folder already holds a finished run of the identical configuration
(``summary.json`` and the same ``config.yaml``) is reused unless ``rerun`` is set, so an
interrupted sweep continues where it stopped.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from sldistill.report import (
    MethodSummary,
    RunRecord,
    aggregate,
    markdown_table,
    plot_curves,
    read_run,
    write_summary_csv,
)

__all__ = ["SweepJob", "SweepResult", "plan_sweep", "run_sweep", "summarize_runs", "write_sweep_report",
           "sweep_devices"]


@dataclass
class SweepJob:
    """One run of a sweep: the method label, the seed and its resolved config."""

    method: str
    seed: int
    cfg: Any

    @property
    def run_dir(self) -> Path:
        """The run folder the config names."""
        from sldistill.engine.config import run_dir

        return Path(run_dir(self.cfg))


@dataclass
class SweepResult:
    """What :func:`run_sweep` produced."""

    out: Path
    summaries: list[MethodSummary]
    records: list[RunRecord]
    table: str
    files: dict[str, Path] = field(default_factory=dict)


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


def sweep_devices(cfg: Any, devices: Sequence[str] | None = None) -> list[str]:
    """Devices to spread runs over: ``devices`` if given, else every visible CUDA device when
    ``EXPERIMENT.DEVICE`` is ``auto`` or ``cuda`` and there are several, else ``[]`` (run one
    after another in this process)."""
    if devices:
        return [str(d) for d in devices]
    spec = str(cfg.EXPERIMENT.DEVICE).lower()
    if spec not in ("auto", "cuda"):
        return []
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [f"cuda:{i}" for i in range(n)] if n > 1 else []


def _finished_same(job: SweepJob) -> bool:
    from sldistill.engine.config import format_config

    d = job.run_dir
    cfg_file = d / "config.yaml"
    if not ((d / "summary.json").is_file() and cfg_file.is_file()):
        return False
    saved = cfg_file.read_text(encoding="utf-8").split("\n", 1)[-1]
    return saved == format_config(job.cfg)


def _launch_subprocess(job: SweepJob, device: str, log: Path) -> subprocess.Popen:
    """Start ``python -m sldistill train`` for ``job`` on ``device``, output to ``log``."""
    from sldistill.engine.config import save_config

    cfg_file = save_config(job.cfg, log.parent / f"{job.method}_seed{job.seed}.yaml")
    f = open(log, "w")  # noqa: SIM115 - closed when the process ends
    cmd = [sys.executable, "-m", "sldistill", "train", "--cfg", str(cfg_file), "EXPERIMENT.DEVICE", device]
    proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "SLDISTILL_DEBUG": "1"})
    proc._sweep_log = f  # type: ignore[attr-defined]
    return proc


def _run_parallel(jobs: Sequence[SweepJob], devices: Sequence[str], out: Path,
                  launch: Callable[[SweepJob, str, Path], subprocess.Popen] = _launch_subprocess,
                  poll: float = 2.0) -> None:
    """Run ``jobs`` as subprocesses, one per device at a time; raise if any fails."""
    logs = out / "_launch"
    logs.mkdir(parents=True, exist_ok=True)
    pending = list(jobs)
    running: dict[str, tuple[SweepJob, subprocess.Popen]] = {}
    failed: list[str] = []
    while pending or running:
        for dev in devices:
            if dev not in running and pending:
                job = pending.pop(0)
                print(f"[sweep] {job.method} seed {job.seed} on {dev}", flush=True)
                running[dev] = (job, launch(job, dev, logs / f"{job.method}_seed{job.seed}.log"))
        time.sleep(poll)
        for dev, (job, proc) in list(running.items()):
            rc = proc.poll()
            if rc is None:
                continue
            f = getattr(proc, "_sweep_log", None)
            if f is not None:
                f.close()
            if rc != 0:
                log = logs / f"{job.method}_seed{job.seed}.log"
                failed.append(f"{job.method} seed {job.seed} (exit {rc}; log {log})")
            del running[dev]
    if failed:
        raise RuntimeError("sweep runs failed: " + "; ".join(failed))


def summarize_runs(jobs: Sequence[SweepJob]) -> tuple[list[MethodSummary], list[RunRecord]]:
    """Read every job's run folder and aggregate per method (in the jobs' order)."""
    records = [read_run(j.run_dir, method=j.method) for j in jobs]
    order = list(dict.fromkeys(j.method for j in jobs))
    return aggregate(records, order=order), records


def write_sweep_report(summaries: Sequence[MethodSummary], records: Sequence[RunRecord], out: str | Path, *,
                       command: str = "", plot: bool = True) -> dict[str, Path]:
    """Write ``summary.md``, ``summary.csv`` (and ``accuracy.png``) in ``out``; return the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"csv": write_summary_csv(summaries, out / "summary.csv")}
    # views and augmentation differ by design (two-view methods); epochs, images and batch must not
    budgets = sorted({", ".join(p for p in s.budget.split(", ") if "view" not in p and "crop" not in p)
                      for s in summaries if s.budget})
    lines = ["# Sweep summary", ""]
    if command:
        lines += ["Command:", "", "```", command, "```", ""]
    lines += [markdown_table(summaries), "",
              "Top-1 on the test set, mean ± sample standard deviation (divisor N - 1) over seeds; "
              "'best' is the highest epoch of each run, 'last' its final epoch.", ""]
    if len(budgets) > 1:
        lines += [f"**Note:** the methods' epoch/data budgets differ ({'; '.join(budgets)}); "
                  "their numbers are not directly comparable.", ""]
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
              command: str = "") -> SweepResult:
    """Train every (config, seed) pair, then aggregate and write the report (see module docs).

    Returns:
        :class:`SweepResult` with the per-method summaries, the run records, the markdown
        table and the written files.
    """
    from sldistill.engine.run import train

    out = Path(out)
    jobs = plan_sweep(cfg_files, seeds, overrides, out=out, base=base, first_seed=first_seed, labels=labels)
    todo = []
    for job in jobs:
        if not rerun and _finished_same(job):
            print(f"[sweep] {job.method} seed {job.seed}: finished run found in {job.run_dir}, reused", flush=True)
            continue
        if job.run_dir.exists():
            shutil.rmtree(job.run_dir)  # a stale or different run of ours: start clean
        todo.append(job)
    devs = sweep_devices(jobs[0].cfg, devices)
    if len(devs) > 1:
        _run_parallel(todo, devs, out)
    else:
        for i, job in enumerate(todo, 1):
            print(f"[sweep] run {i}/{len(todo)}: {job.method} seed {job.seed} -> {job.run_dir}", flush=True)
            if devs:
                from sldistill.engine.config import merge_overrides

                merge_overrides(job.cfg, [("EXPERIMENT.DEVICE", devs[0])], source="<sweep>")
            result = train(job.cfg)
            if result.status != "finished":
                raise RuntimeError(f"{job.method} seed {job.seed} ended {result.status!r}; rerun the sweep to continue")
    summaries, records = summarize_runs(jobs)
    files = write_sweep_report(summaries, records, out, command=command)
    return SweepResult(out, summaries, records, markdown_table(summaries), files)
