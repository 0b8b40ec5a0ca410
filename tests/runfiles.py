"""Run folders and stop signals for tests: a finished run's files written directly (for the
report and sweep tables) and a stop flag that fires at a chosen check (for resume tests)."""
from __future__ import annotations

import csv
import json
import signal
from pathlib import Path

from sldistill.engine.config import load_config, save_config
from sldistill.engine.trainer import StopFlag

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
KD_CONFIG = "cifar100/kd/resnet32x4_resnet8x4.yaml"


def write_run_folder(path: Path, seed: int, acc: list[float], *extra: str, config: str = KD_CONFIG,
                     lr: float | None = None, summary: bool = False) -> Path:
    """``path`` as a run of ``configs/<config>`` (seed ``seed``, overrides ``extra``) that logged the
    test top-1 ``acc`` per epoch: ``config.yaml``, ``metrics.csv`` (with an ``lr`` column when
    ``lr`` is given) and, with ``summary``, ``summary.json``."""
    cfg = load_config(CONFIGS / config, ["EXPERIMENT.SEED", str(seed), "SOLVER.EPOCHS", str(len(acc)), *extra])
    path.mkdir(parents=True)
    save_config(cfg, path / "config.yaml")
    with open(path / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", *(["lr"] if lr is not None else []), "test_acc"])
        w.writerows([i, *([lr] if lr is not None else []), a] for i, a in enumerate(acc, 1))
    if summary:
        (path / "summary.json").write_text(json.dumps({"best_acc": max(acc), "last_acc": acc[-1]}))
    return path


class StopAtCheck(StopFlag):
    """Acts as a SIGTERM arriving before the ``n``-th stop check (the trainer checks after every
    iteration and after every epoch)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.left = n

    def __bool__(self) -> bool:
        self.left -= 1
        if self.left == 0:
            self.set(signal.SIGTERM)
        return self.signum is not None
