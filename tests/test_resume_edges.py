"""Resume edges a reliability review found: a mid-epoch resume with another batch order, an
extended run resumed without its SOLVER.EPOCHS, a live lock met before the folder messages, a
lock release masking the real failure, eval of a run with no best.pth, metrics.jsonl rows of
re-run epochs, the class count of teacher-less distillers, repeated seeds in reports, report
labels read without rewriting the config.

Each run trains resnet8 (no teacher) on a tiny generated CIFAR-100 in process."""
from __future__ import annotations

import csv
import errno
import hashlib
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_subcommand
from datagen import write_cifar100
from runfiles import StopAtCheck, write_run_folder
from torch import nn

from sldistill.cli import main
from sldistill.engine.config import load_config, run_dir
from sldistill.engine.rundir import RunFolderError, RunLock

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_cifar100(tmp_path_factory.mktemp("edges") / "data", n_train=16, n_test=8)


def _opts(data: Path, out: Path, *extra: str, batch: int = 8, epochs: int = 1) -> list[str]:
    return ["DISTILLER.TYPE", "NONE", "DISTILLER.STUDENT", "resnet8", "DATASET.ROOT", str(data),
            "DATASET.NUM_WORKERS", "0", "DATASET.TEST.BATCH_SIZE", "8", "SOLVER.BATCH_SIZE", str(batch),
            "SOLVER.EPOCHS", str(epochs), "LOG.PREFIX", str(out), "LOG.TENSORBOARD", "false", "LOG.PROGRESS",
            "false", "EXPERIMENT.DEVICE", "cpu", "EXPERIMENT.NAME", "run", *extra]


def _folder(opts: list[str]) -> Path:
    return Path(run_dir(load_config(None, opts)))


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}





def _train(opts: list[str], **kw):
    from sldistill.engine.run import train

    return train(load_config(None, opts), **kw)


def _jsonl_epochs(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------ 1. mid-epoch resume, other batches

def test_a_mid_epoch_resume_with_another_batch_order_is_refused_before_writing(data, tmp_path, capsys):
    opts = _opts(data, tmp_path / "out", batch=4)  # 4 batches an epoch
    run = _folder(opts)
    assert _train(opts, stop_flag=StopAtCheck(3)).status == "interrupted"  # after 3 of epoch 1's batches
    before = _hashes(run)
    capsys.readouterr()
    assert main(["train", *_opts(data, tmp_path / "out", batch=16), "--resume"]) == 2  # 1 batch an epoch
    err = capsys.readouterr().err
    assert "SOLVER.BATCH_SIZE 4 -> 16" in err and "middle of epoch 1" in err and "epoch boundary" in err
    assert "--allow-config-change" in err and "Traceback" not in err
    assert _hashes(run) == before  # config.yaml not rewritten, nothing else written
    # another process count, from the checkpoint's "world_size"
    from sldistill.engine.run import plan_run_folder

    with pytest.raises(RunFolderError, match=r"processes \(world size\) 1 -> 2"):
        plan_run_folder(load_config(None, opts), run, True, False, False, world_size=2)
    # the old batch size resumes, and config.yaml keeps it
    assert main(["train", *opts, "--resume"]) == 0
    assert "BATCH_SIZE: 4" in (run / "config.yaml").read_text()
    assert _jsonl_epochs(run) == [1]


# ------------------------------------------------------------------ 2. an extended run resumed without its epochs

def test_resuming_an_extended_run_without_its_epochs_says_to_pass_them(data, tmp_path, capsys):
    short, longer = _opts(data, tmp_path / "out"), _opts(data, tmp_path / "out", epochs=2)
    run = _folder(short)
    assert main(["train", *short]) == 0
    assert _train(longer, resume=True, stop_flag=StopAtCheck(1)).status == "interrupted"  # in epoch 2
    before = _hashes(run)
    capsys.readouterr()
    assert main(["train", *short, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "pass SOLVER.EPOCHS 2" in err and "in epoch 2 of 2" in err and "--allow-config-change" not in err
    assert _hashes(run) == before  # config.yaml still says 2 epochs
    assert main(["train", *longer, "--resume"]) == 0
    assert json.loads((run / "summary.json").read_text())["last_epoch"] == 2


# ------------------------------------------------------------------ 3. a live lock comes first

@pytest.mark.parametrize("mode", [[], ["--resume"], ["--overwrite"]])
def test_a_live_lock_is_named_before_the_folder_state(data, tmp_path, capsys, mode):
    opts = _opts(data, tmp_path / "out")
    run = _folder(opts)
    assert main(["train", *opts]) == 0  # a finished run
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / "run.lock").write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(),
                                                  "started": "earlier"}))
        before = _hashes(run)
        capsys.readouterr()
        assert main(["train", *opts, *mode]) == 2
        err = capsys.readouterr().err
        assert f"is in use by another run (pid {sleeper.pid}" in err and "holds" not in err
        assert _hashes(run) == before
    finally:
        sleeper.kill()
        sleeper.wait()


# ------------------------------------------------------------------ 4. the lock never masks the failure

def test_a_failure_to_release_the_lock_does_not_mask_the_error(data, tmp_path, capsys, monkeypatch):
    from sldistill.engine import trainer as trainer_module

    opts = _opts(data, tmp_path / "out")
    run = _folder(opts)

    def read_only(self):
        raise OSError(errno.EROFS, "Read-only file system", str(run / "latest.pth"))

    real_unlink = pathlib.Path.unlink

    def unlink(self, missing_ok=False):
        if self.name == "run.lock":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(trainer_module.Trainer, "fit", read_only)
    monkeypatch.setattr(pathlib.Path, "unlink", unlink)
    assert main(["train", *opts]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "latest.pth" in last and "Read-only file system" in last and "run.lock" not in last
    # the context manager too
    with pytest.raises(ValueError, match="the real one"):
        with RunLock(tmp_path / "other"):
            raise ValueError("the real one")


# ------------------------------------------------------------------ 5. eval of a run without best.pth

def test_eval_of_a_run_stopped_in_its_first_epoch_suggests_latest(data, tmp_path, capsys):
    opts = _opts(data, tmp_path / "out", batch=4)
    run = _folder(opts)
    assert _train(opts, stop_flag=StopAtCheck(2)).status == "interrupted"
    assert not (run / "best.pth").exists()
    capsys.readouterr()
    assert main(["eval", "--run", str(run)]) == 2
    err = capsys.readouterr().err
    assert "best.pth" in err and "--which latest" in err
    assert main(["eval", "--run", str(run), "--which", "latest"]) == 0


# ------------------------------------------------------------------ 6. metrics.jsonl of re-run epochs

def test_a_resume_drops_the_jsonl_rows_of_the_epochs_it_trains_again(data, tmp_path):
    opts = _opts(data, tmp_path / "out", "LOG.SAVE_CHECKPOINT_FREQ", "1", epochs=2)
    run = _folder(opts)
    assert _train(opts).status == "finished"
    assert _jsonl_epochs(run) == [1, 2]
    shutil.copyfile(run / "epoch_1.pth", run / "latest.pth")  # back to epoch 1: epoch 2 is trained again
    assert _train(opts, resume=True, stop_flag=StopAtCheck(1)).status == "interrupted"
    assert _jsonl_epochs(run) == [1]  # the row of the epoch being re-run is gone at once
    assert [r["epoch"] for r in csv.DictReader(open(run / "metrics.csv"))] == ["1"]
    assert _train(opts, resume=True).status == "finished"
    assert _jsonl_epochs(run) == [1, 2]  # logged once


# ------------------------------------------------------------------ 7. the class count without a teacher

class _NarrowNet(nn.Module):
    """A classifier head of 10 outputs whose forward returns only 7 of them."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 10)

    def forward(self, x):
        pooled = x.mean(dim=(2, 3))
        return self.fc(pooled)[:, :7], {"feats": [x], "preact_feats": [x], "pooled_feat": pooled}


def test_a_teacherless_distiller_checks_the_logits_width(monkeypatch):
    from sldistill import models
    from sldistill.engine.run import build_distiller_for

    monkeypatch.setattr(models, "build_student", lambda cfg, num_classes: _NarrowNet())
    d = build_distiller_for(load_config(None, ["DISTILLER.TYPE", "NONE", "DISTILLER.STUDENT", "resnet8"]), 10)
    assert d.teacher is None and d.num_classes == 10
    x, y = torch.randn(4, 3, 8, 8), torch.arange(4) % 7
    with pytest.raises(ValueError, match=r"forward_train.*\[4, 7\].*\[4, 10\]"):
        d.train()([x], y, 1)


# ------------------------------------------------------------------ 8./9. report

def test_report_counts_repeated_runs_of_a_seed_once(tmp_path, capsys):
    runs = tmp_path / "runs"
    copies = [write_run_folder(runs / f"copy{k}", 0, [60.0, 70.0 + k]) for k in range(3)]
    for folder, when in zip(copies, (1000, 3000, 2000)):  # copy1 written last: it stands for seed 0
        os.utime(folder / "metrics.csv", (when, when))
    write_run_folder(runs / "other", 1, [60.0, 75.0])
    assert run_subcommand(["report", str(runs), "--csv", str(tmp_path / "r.csv")]) == 0
    captured = capsys.readouterr()
    assert "| kd,resnet32x4,resnet8x4 | 2 | 73.00 ± " in captured.out  # (71 + 75) / 2, two seeds
    assert "Runs count seeds" in captured.out
    warning = [line for line in captured.err.splitlines() if "seed 0" in line]
    assert len(warning) == 1 and all(str(c) in warning[0] for c in copies) and "counted once" in warning[0]
    assert next(csv.DictReader(open(tmp_path / "r.csv")))["seeds"] == "0 1"


def test_read_run_keeps_the_config_and_grouping_labels_by_the_models_trained(tmp_path):
    from sldistill.report import read_run
    from sldistill.zoo_cli import group_records

    rec = read_run(write_run_folder(tmp_path / "r8", 0, [60.0], "DISTILLER.STUDENT", "resnet8"))
    assert rec.config["EXPERIMENT"]["TAG"] == "kd,resnet32x4,resnet8x4"  # as config.yaml has it
    assert rec.method == "kd,resnet32x4,resnet8"
    assert group_records([rec])[0].method == group_records([rec], by="tag")[0].method == "kd,resnet32x4,resnet8"
