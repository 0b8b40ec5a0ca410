"""Executing a sweep's runs: in this process or as ``sldistill train`` subprocesses, one per device.

:func:`run_jobs` trains the jobs :mod:`sldistill.sweep` planned (and whose run folders it
decided on). On CPU, or on one GPU, the runs go one after another in this process; with several
devices (:func:`sweep_devices`) each run is a ``sldistill train`` subprocess pinned to one
device, as many at once as there are devices, with its output in ``<out>/_launch/``.

SIGINT / SIGTERM are caught while the runs go: the running run (in this process, or each
subprocess, to which the signal is forwarded and which is waited for) saves and stops, no new
run starts, one line names the finished, interrupted, failed and unstarted runs
(the progress bookkeeping of ``_Progress``), and :class:`SweepInterrupted` carries the exit
status (130 / 143) up to ``sldistill sweep``.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:  # sldistill.sweep imports this module: the job type is for annotations only
    from sldistill.sweep import SweepJob

__all__ = ["SweepInterrupted", "sweep_devices", "run_jobs"]


class SweepInterrupted(Exception):
    """A stop signal ended the sweep; ``code`` is 128 + the signal number (130 SIGINT, 143
    SIGTERM), the exit status ``sldistill sweep`` returns."""

    def __init__(self, code: int) -> None:
        super().__init__(f"sweep stopped by a signal (exit status {code})")
        self.code = code


@dataclass
class _Progress:
    """What became of a sweep's runs: finished (reused or trained now), interrupted, failed
    (with a description), not started."""

    finished: list[SweepJob] = field(default_factory=list)
    interrupted: list[SweepJob] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    not_started: list[SweepJob] = field(default_factory=list)


def _names(jobs: Sequence[SweepJob]) -> str:
    return ", ".join(f"{j.method} seed {j.seed}" for j in jobs) or "none"


def _stopped(signum: int, progress: _Progress) -> SweepInterrupted:
    """Print the one line saying where the sweep stopped; the exception that ends it."""
    parts = [f"finished: {_names(progress.finished)}",
             "interrupted: " + (", ".join(f"{j.method} seed {j.seed} (in {j.run_dir})" for j in progress.interrupted)
                                or "none")]
    if progress.failed:
        parts.append("failed: " + "; ".join(progress.failed))
    if progress.not_started:
        parts.append(f"not started: {_names(progress.not_started)}")
    print(f"[sweep] stopped by {signal.Signals(signum).name}: {'; '.join(parts)}; run the same sweep command "
          "again to continue", file=sys.stderr, flush=True)
    return SweepInterrupted(128 + signum)


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


def _launch_subprocess(job: SweepJob, device: str, log: Path) -> subprocess.Popen:
    """Start ``python -m sldistill train`` for ``job`` on ``device``, output to ``log``."""
    from sldistill.engine.config import save_config

    cfg_file = save_config(job.cfg, log.parent / f"{job.method}_seed{job.seed}.yaml")
    f = open(log, "w")  # noqa: SIM115 - closed when the process ends
    cmd = [sys.executable, "-m", "sldistill", "train", "--cfg", str(cfg_file), "EXPERIMENT.DEVICE", device,
           *{"resume": ["--resume"], "overwrite": ["--overwrite"]}.get(getattr(job, "mode", "train"), [])]
    # its own session: a Ctrl-C on the terminal reaches the sweep only, which forwards it once
    proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "SLDISTILL_DEBUG": "1"},
                            start_new_session=True)
    proc._sweep_log = f  # type: ignore[attr-defined]
    return proc


def _run_parallel(jobs: Sequence[SweepJob], devices: Sequence[str], out: Path,
                  launch: Callable[[SweepJob, str, Path], subprocess.Popen] = _launch_subprocess,
                  poll: float = 2.0, stop: Any = None) -> _Progress:
    """Run ``jobs`` as subprocesses, one per entry of ``devices`` at a time (a device named twice,
    ``cpu,cpu`` or ``cuda:0,cuda:0``, runs two at once); raise if any fails.

    When ``stop`` (default: the SIGINT/SIGTERM flag) is set, no further run starts, the signal
    goes to every running subprocess, and those are waited for; the returned progress says
    what became of each run (failures then do not raise)."""
    from sldistill.engine.control import STOP

    flag = STOP if stop is None else stop
    logs = out / "_launch"
    logs.mkdir(parents=True, exist_ok=True)
    pending = list(jobs)
    running: dict[int, tuple[SweepJob, subprocess.Popen]] = {}  # by slot: the position in ``devices``
    progress = _Progress()

    def ended(job: SweepJob, proc: subprocess.Popen, rc: int, signum: int | None = None) -> None:
        f = getattr(proc, "_sweep_log", None)
        if f is not None:
            f.close()
        if rc == 0:
            progress.finished.append(job)
        elif signum is not None and rc in (128 + signum, -signum):  # saved and stopped, or killed while starting
            progress.interrupted.append(job)
        else:
            progress.failed.append(f"{job.method} seed {job.seed} (exit {rc}; log "
                                   f"{logs / f'{job.method}_seed{job.seed}.log'})")

    while (pending or running) and not flag:
        for slot, dev in enumerate(devices):
            if slot not in running and pending:
                job = pending.pop(0)
                print(f"[sweep] {job.method} seed {job.seed} on {dev}", flush=True)
                running[slot] = (job, launch(job, dev, logs / f"{job.method}_seed{job.seed}.log"))
        deadline = time.monotonic() + poll
        while not flag and time.monotonic() < deadline:  # short naps: a stop is forwarded at once
            time.sleep(min(0.1, poll))
        for slot, (job, proc) in list(running.items()):
            rc = proc.poll()
            if rc is not None:
                ended(job, proc, rc)
                del running[slot]
    if flag.signum is not None:
        signum = flag.signum
        progress.not_started = pending
        for _, proc in running.values():
            proc.send_signal(signum)
        try:
            for job, proc in running.values():
                ended(job, proc, proc.wait(), signum)
        except KeyboardInterrupt:  # a second Ctrl-C: the runs stop at once too, without saving
            for _, proc in running.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)
            raise
    elif progress.failed:
        raise RuntimeError("sweep runs failed: " + "; ".join(progress.failed))
    return progress


def _run_in_process(todo: Sequence[SweepJob], device: str | None, train_fn: Callable[..., Any],
                    stop: Any) -> _Progress:
    """Train ``todo`` one after another in this process until ``stop`` is set."""
    progress = _Progress()
    for i, job in enumerate(todo, 1):
        if stop:
            progress.not_started = list(todo[i - 1:])
            break
        print(f"[sweep] run {i}/{len(todo)}: {job.method} seed {job.seed} -> {job.run_dir}", flush=True)
        if device is not None:
            from sldistill.engine.config import merge_overrides

            merge_overrides(job.cfg, [("EXPERIMENT.DEVICE", device)], source="<sweep>")
        result = train_fn(job.cfg, resume=job.mode == "resume", overwrite=job.mode == "overwrite")
        if result.status == "interrupted" and stop:
            progress.interrupted.append(job)
            progress.not_started = list(todo[i:])
            break
        if result.status != "finished":
            raise RuntimeError(f"{job.method} seed {job.seed} ended {result.status!r}; rerun the sweep to continue")
        progress.finished.append(job)
    return progress


def run_jobs(todo: Sequence[SweepJob], devices: Sequence[str], out: Path, train_fn: Callable[..., Any],
             reused: Sequence[SweepJob] = ()) -> _Progress:
    """Train ``todo``: as subprocesses, one per device at a time, with several ``devices``; else one
    after another in this process (on ``devices[0]`` if there is one) with ``train_fn``. A stop
    signal meanwhile lets the running runs save and starts no new one.

    Raises:
        SweepInterrupted: a stop signal left runs interrupted, failed or not started (the line
            it prints counts the ``reused`` runs among the finished ones).
        RuntimeError: a run failed (without a stop signal).
    """
    from sldistill.engine.control import STOP, install_signal_handlers

    STOP.clear()
    restore = install_signal_handlers(STOP)  # a stop signal: the running run saves, no new one starts
    try:
        if len(devices) > 1:
            progress = _run_parallel(todo, devices, out, stop=STOP)
        else:
            progress = _run_in_process(todo, devices[0] if devices else None, train_fn, STOP)
    finally:
        restore()
    if STOP.signum is not None and (progress.interrupted or progress.not_started or progress.failed):
        progress.finished[:0] = list(reused)
        raise _stopped(STOP.signum, progress)
    return progress
