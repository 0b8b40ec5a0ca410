"""Nothing lost, nothing silent: run folders, locks, resume checks, valid files, messages.

Each test trains resnet8 on a tiny generated CIFAR-100 through `sldistill train` (in process)."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from datagen import write_cifar100, write_image_folder, write_published_teacher
from sldistill.cli import main


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {"data": write_cifar100(root / "data", n_train=16, n_test=8),
            "teacher": write_published_teacher(root / "teachers", "resnet8")}


def _args(env, out: Path, *extra: str, epochs: int = 1, method: str = "KD") -> list[str]:
    return ["train", "DISTILLER.TYPE", method, "DISTILLER.TEACHER", "resnet8", "DISTILLER.STUDENT", "resnet8",
            "DISTILLER.TEACHER_CKPT", str(env["teacher"]), "DATASET.ROOT", str(env["data"]),
            "DATASET.NUM_WORKERS", "0", "DATASET.TEST.BATCH_SIZE", "8", "SOLVER.BATCH_SIZE", "8",
            "SOLVER.EPOCHS", str(epochs), "LOG.PREFIX", str(out), "LOG.TENSORBOARD", "false",
            "EXPERIMENT.DEVICE", "cpu", "EXPERIMENT.NAME", "run", *extra]


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _strict_json(path: Path):
    def refuse(name):
        raise ValueError(f"{path} holds {name}, which is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_a_second_run_into_a_finished_folder_is_refused_and_changes_nothing(env, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_args(env, out)) == 0
    run = out / "distill" / "run"
    before = _hashes(run)
    capsys.readouterr()
    assert main(_args(env, out)) == 2
    err = capsys.readouterr().err
    assert f"run folder {run} holds a finished run (epoch 1)" in err and "--resume" in err and "--overwrite" in err
    assert "Traceback" not in err
    assert _hashes(run) == before
    # --overwrite replaces it
    assert main(_args(env, out, "--overwrite")) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    assert "--overwrite: replacing a finished run" in (run / "log.txt").read_text()
    assert not (run / "run.lock").exists()  # released at the end


def test_run_checkpoints_load_with_weights_only_and_summary_is_strict_json(env, tmp_path):
    out = tmp_path / "out"
    assert main(_args(env, out)) == 0
    run = out / "distill" / "run"
    for name in ("latest.pth", "best.pth"):
        ck = torch.load(run / name, weights_only=True)
        assert ck["epoch"] == 1 and isinstance(ck["rng"], list) and len(ck["rng"]) == 1
    summary = _strict_json(run / "summary.json")
    assert summary["last_epoch"] == 1 and summary["best_epoch"] == 1


def test_a_live_lock_refuses_at_once_and_a_stale_one_is_reported(env, tmp_path, capsys):
    import socket

    out = tmp_path / "out"
    run = out / "distill" / "run"
    run.mkdir(parents=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / "run.lock").write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(),
                                                  "started": "earlier"}))
        assert main(_args(env, out)) == 2
        err = capsys.readouterr().err
        assert f"run folder {run} is in use by another run (pid {sleeper.pid}" in err
    finally:
        sleeper.kill()
        sleeper.wait()
    # the holder is gone now: a stale lock, reported, not taken silently
    assert main(_args(env, out)) == 2
    err = capsys.readouterr().err
    assert "stale lock" in err and f"pid {sleeper.pid}" in err and "--resume" in err
    assert (run / "run.lock").is_file()
    assert main(_args(env, out, "--overwrite")) == 0
    assert f"replaced the stale lock of pid {sleeper.pid}" in (run / "log.txt").read_text()


def test_resume_refuses_another_method_and_records_allowed_changes(env, tmp_path, capsys):
    out = tmp_path / "out"
    run = out / "distill" / "run"
    assert main(_args(env, out)) == 0
    before = _hashes(run)
    capsys.readouterr()
    assert main(_args(env, out, "--resume", epochs=2, method="DKD")) == 2
    err = capsys.readouterr().err
    assert "DISTILLER.TYPE" in err and "'KD' -> 'DKD'" in err and "--allow-config-change" in err
    assert _hashes(run) == before
    # a finished run: "already finished", nothing changes
    assert main(_args(env, out, "--resume")) == 0
    assert "already finished at epoch 1; nothing changed" in capsys.readouterr().out
    assert _hashes(run) == before
    # more epochs: allowed, shown and recorded in config.yaml
    assert main(_args(env, out, "--resume", epochs=2)) == 0
    text = capsys.readouterr().out
    assert "SOLVER.EPOCHS: 1 -> 2" in text and "continuing at epoch 2" in text
    assert "EPOCHS: 2" in (run / "config.yaml").read_text()
    assert _strict_json(run / "summary.json")["last_epoch"] == 2
    # with the flag, a method change goes through and is recorded
    assert main(_args(env, out, "--resume", "--allow-config-change", epochs=3, method="DKD")) == 0
    assert "TYPE: DKD" in (run / "config.yaml").read_text()


def test_a_failed_start_leaves_no_run_folder(env, tmp_path, capsys):
    out = tmp_path / "out"
    args = _args(env, out)
    args[args.index("DISTILLER.TEACHER_CKPT") + 1] = str(tmp_path / "missing.pth")
    assert main(args) == 2
    assert "missing.pth" in capsys.readouterr().err
    assert not (out / "distill" / "run").exists()


def test_filesystem_errors_are_one_line_with_exit_2(env, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert main(_args(env, blocker / "out")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot use" in err[0] and "a_file" in err[0] and "Traceback" not in err[0]


def test_console_shows_the_differences_and_progress_lines_off_a_terminal(env, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([*_args(env, out, epochs=1), "--log-interval", "1"]) == 0
    text = capsys.readouterr().out
    assert "key(s) differ from the sld defaults" in text and "DISTILLER.TYPE: 'KD'" in text
    assert "RKD:" not in text  # not the whole config
    assert "accepted for compatibility" not in text  # no compatibility-only key was set
    log = (out / "distill" / "run" / "log.txt").read_text()
    assert "epoch 1 iteration 1/2" in log and "img/s  ETA" in log  # captured output is not a terminal
    assert "data: cifar100 from " in log and "16 training and 8 validation images, 100 classes" in log
    assert "warning: teacher resnet8 is near chance" in log  # a random-weight teacher


def test_an_explicit_fashion_mnist_root_without_the_files_is_an_error(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    rc = main(["train", "DATASET.TYPE", "fashion_mnist", "DATASET.ROOT", str(empty), "DATASET.DOWNLOAD", "false",
               "DISTILLER.STUDENT", "resnet8", "EXPERIMENT.DEVICE", "cpu", "LOG.PREFIX", str(tmp_path / "o"),
               "EXPERIMENT.NAME", "x"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "fashion_mnist data not found" in err and str(empty) in err
    assert "/usr/share/datasets" not in err.split("Expected layout")[0]  # the system folder is not looked at


def test_an_unreadable_image_mid_epoch_names_the_file_and_keeps_progress(tmp_path, capsys):
    data = write_image_folder(tmp_path / "imgs", n_classes=2, per_class=8, size=32)
    bad = sorted((data / "train").rglob("*.png"))[5]
    bad.write_bytes(b"not an image")
    out = tmp_path / "out"
    rc = main(["train", "DATASET.TYPE", "folder", "DATASET.ROOT", str(data), "DISTILLER.STUDENT", "resnet8",
               "DATASET.NUM_WORKERS", "0", "SOLVER.BATCH_SIZE", "4", "DATASET.TEST.BATCH_SIZE", "4",
               "SOLVER.EPOCHS", "1", "EXPERIMENT.DEVICE", "cpu", "LOG.PREFIX", str(out), "LOG.TENSORBOARD",
               "false", "EXPERIMENT.NAME", "run"])
    assert rc == 2
    assert str(bad) in capsys.readouterr().err
    ck = torch.load(out / "distill" / "run" / "latest.pth", weights_only=True)
    assert ck["interrupted"] and 0 <= ck["iteration"] < 4
    assert os.path.isfile(out / "distill" / "run" / "config.yaml")
