"""Run folders that never lose a result: what a folder holds, the lock, the resume check.

* :func:`run_state` says whether a folder holds a run (finished, or stopped at epoch N).
* :class:`RunLock` is ``run.lock`` in the folder, created exclusively: a second run started
  into the same folder fails at once naming the folder and the holder; a lock left by a
  killed run (its process is gone) is reported as stale and only replaced when the user
  asked to continue (``--resume``) or replace (``--overwrite``) the run, saying so.
* :func:`config_changes` lists what a resumed config changes against the checkpoint's, and
  which of those changes alter the experiment itself (models, method, data, seed);
  :func:`batch_order_changes` those that change an epoch's batches (refused mid-epoch).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

__all__ = ["RunState", "run_state", "RunLock", "RunFolderError", "config_changes", "PROTECTED", "clear_run",
           "flat_config", "BATCH_ORDER_KEYS", "batch_order_changes"]

LOCK = "run.lock"
#: the files a run writes (``--overwrite`` removes them, nothing else)
RUN_FILES = ("latest.pth", "best.pth", "config.yaml", "metrics.csv", "metrics.jsonl", "summary.json", "log.txt",
             ".metrics.csv.tmp", ".metrics.jsonl.tmp", "wandb_id.txt")


class RunFolderError(ValueError):
    """A run folder cannot be used as asked (the message says why and what to do)."""


@dataclass
class RunState:
    """What a run folder holds: ``exists`` (a run was started there), ``finished``, the
    last completed ``epoch`` (0 when none was) and ``checkpoint`` (``latest.pth`` is there:
    the run can be resumed)."""

    exists: bool
    finished: bool = False
    epoch: int = 0
    checkpoint: bool = False

    def describe(self) -> str:
        if not self.exists:
            return "no run"
        if self.finished:
            return f"a finished run (epoch {self.epoch})"
        if self.epoch:
            return f"a run stopped at epoch {self.epoch}"
        if self.checkpoint:
            return "a run stopped during its first epoch"
        return "a run that stopped before writing any checkpoint"


def run_state(folder: str | os.PathLike) -> RunState:
    """Whether ``folder`` holds a run, and how far it got (from ``summary.json`` / ``metrics.jsonl``)."""
    folder = Path(folder)
    present = [n for n in RUN_FILES if (folder / n).exists()] + [p.name for p in folder.glob("epoch_*.pth")]
    if not present:
        return RunState(False)
    epoch = 0
    rows = folder / "metrics.jsonl"
    if rows.is_file():
        for line in rows.read_text().splitlines():
            try:
                epoch = max(epoch, int(json.loads(line).get("epoch", 0)))
            except (ValueError, AttributeError):
                continue
    finished = (folder / "summary.json").is_file()
    return RunState(True, finished, epoch, (folder / "latest.pth").is_file())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """``run.lock`` of a run folder, held while a run writes there (rank 0 only).

    Args:
        folder: the run folder (created if missing).
        take_stale: replace a lock whose process is gone (``--resume`` / ``--overwrite``);
            otherwise such a lock is an error saying so.
    """

    def __init__(self, folder: str | os.PathLike, take_stale: bool = False) -> None:
        self.path = Path(folder) / LOCK
        self.take_stale = take_stale
        self.notice = ""
        self.held = False

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._handle_existing()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise RunFolderError(f"{self.path.parent}: could not take {LOCK}")

    def _holder(self) -> tuple[int, str, str]:
        try:
            holder = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            holder = {}
        return int(holder.get("pid", -1) or -1), str(holder.get("host", "?")), str(holder.get("started", "?"))

    def check(self) -> None:
        """Raise :class:`RunFolderError` when another run holds the lock: a live process here,
        or a process on another host. No lock, or a stale one, passes (``acquire`` deals with it)."""
        if not self.path.is_file():
            return
        pid, host, since = self._holder()
        folder = self.path.parent
        if host != socket.gethostname():
            raise RunFolderError(f"run folder {folder} is locked by a run on host {host} (pid {pid}, since {since}); "
                                 f"if no run is using it any more, delete {self.path}")
        if pid > 0 and _pid_alive(pid):
            raise RunFolderError(f"run folder {folder} is in use by another run (pid {pid}, since {since}); wait for "
                                 "it to end, or give this run another EXPERIMENT.NAME")

    def _handle_existing(self) -> None:
        self.check()
        pid, _, since = self._holder()
        folder = self.path.parent
        if not self.take_stale:
            raise RunFolderError(f"run folder {folder} has a stale lock: the run that held it (pid {pid}, since "
                                 f"{since}) is not running any more (killed?); --resume continues that run, "
                                 "--overwrite replaces it")
        self.notice = f"replaced the stale lock of pid {pid} (since {since}) in {folder}"
        self.path.unlink(missing_ok=True)

    def release(self, raise_errors: bool = True) -> None:
        """Remove the lock. ``raise_errors=False`` (an exception is already on its way): a
        failure to remove it is one warning line on stderr, never an exception masking that one."""
        if not self.held:
            return
        self.held = False
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            if raise_errors:
                raise
            print(f"warning: could not remove {self.path} ({exc.strerror or exc}); a later --resume or --overwrite "
                  "replaces it", file=sys.stderr)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.release(raise_errors=exc_type is None)


def clear_run(folder: str | os.PathLike) -> list[str]:
    """Remove what a run wrote in ``folder`` (``--overwrite``); returns the names removed.
    Files the toolkit does not write are left alone."""
    folder = Path(folder)
    removed = []
    for name in [*RUN_FILES, *(p.name for p in folder.glob("epoch_*.pth"))]:
        p = folder / name
        if p.is_file():
            p.unlink()
            removed.append(name)
    if (folder / "tb").is_dir():
        shutil.rmtree(folder / "tb")
        removed.append("tb/")
    return removed


#: dotted prefixes whose change makes a resumed run a different experiment
PROTECTED = (
    "DISTILLER.TYPE", "DISTILLER.TEACHER", "DISTILLER.STUDENT", "DISTILLER.TEACHER_CKPT", "DISTILLER.STUDENT_CKPT",
    "DISTILLER.LOGIT_PROCESSOR", "DATASET.TYPE", "DATASET.TRAIN_SUBSET", "DATASET.SUBSET_SEED", "DATASET.IMAGE_SIZE",
    "EXPERIMENT.SEED", "EXPERIMENT.LOGIT_STAND", "BASE", "EXPERIMENT.PLUGINS",
)


def flat_config(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{dotted key: value}`` of a nested config mapping."""
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        if isinstance(v, Mapping):
            out.update(flat_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any], method_sections: tuple[str, ...] = ()
                   ) -> tuple[list[str], list[str]]:
    """``(every change as 'KEY: old -> new', the protected keys among them)``.

    Protected: :data:`PROTECTED` and the keys of ``method_sections`` (the distiller's own
    sections, e.g. ``SLD``): a change there makes the continued run a different method."""
    a, b = flat_config(old), flat_config(new)
    lines, protected = [], []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, "<absent>"), b.get(key, "<absent>")
        if va == vb:
            continue
        lines.append(f"{key}: {va!r} -> {vb!r}")
        top = key.split(".")[0]
        if key in PROTECTED or top in method_sections:
            protected.append(key)
    return lines, protected


#: dotted keys that fix the order and size of an epoch's batches (besides the process count): a
#: mid-epoch resume replays the epoch's batches up to the interrupt, so it needs them unchanged
BATCH_ORDER_KEYS = ("SOLVER.BATCH_SIZE", "DATASET.DROP_LAST", "EXPERIMENT.SEED", "DATASET.TRAIN_SUBSET",
                    "DATASET.SUBSET_SEED", "DATASET.TYPE")


def batch_order_changes(old: Mapping[str, Any], new: Mapping[str, Any], old_world: int, new_world: int
                        ) -> list[str]:
    """What changes an epoch's batches between a checkpoint's config and process count and
    these, as ``'KEY old -> new'`` lines (the process count as ``'processes (world size) ...'``).
    A key that one of the configs lacks (an older version's checkpoint) is not compared."""
    a, b = flat_config(old), flat_config(new)
    lines = [f"{k} {a[k]!r} -> {b[k]!r}" for k in BATCH_ORDER_KEYS if k in a and k in b and a[k] != b[k]]
    if old_world != new_world:
        lines.append(f"processes (world size) {old_world} -> {new_world}")
    return lines
