"""SIGINT / SIGTERM stop a sweep as they stop ``sldistill train``: the running run saves its
mid-epoch position and releases its lock, no new run starts, one line says where it stopped, the
exit status is 130 / 143; the same sweep command then continues to the metrics of an
uninterrupted sweep. Real ``python -m sldistill sweep`` processes on tiny generated data, in
this process's runs and in one subprocess per device; stubs for the bookkeeping."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from datagen import write_fashion_mnist

from sldistill import models
from sldistill.engine.checkpoint import load_checkpoint
from sldistill.engine.control import StopFlag
from sldistill.sweep import SweepInterrupted, plan_sweep, run_sweep
from sldistill.sweep_run import _run_parallel

REPO = Path(__file__).resolve().parents[1]
KD = REPO / "configs" / "fashion_mnist" / "kd" / "resnet20_resnet8.yaml"
METHOD = "kd,resnet20,resnet8"
#: fields that depend on the machine's speed, not on what was trained
TIMING = ("images_per_s", "epoch_time_s", "data_time_s")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Data (480 images: 60 iterations per epoch of batch 8), a teacher and the sweep arguments."""
    root = tmp_path_factory.mktemp("sweep_signals")
    data = write_fashion_mnist(root / "fm", n_train=480, n_test=16)
    torch.manual_seed(0)
    teacher = root / "teacher.pth"
    torch.save({"model": models.create("resnet20", num_classes=10, dataset="fashion_mnist").state_dict()}, teacher)
    opts = ["--teacher-cache", "off", "DATASET.ROOT", str(data), "DATASET.TRAIN_SUBSET", "0",
            "DATASET.NUM_WORKERS", "0", "SOLVER.BATCH_SIZE", "8", "SOLVER.EPOCHS", "2",
            "EXPERIMENT.DEVICE", "cpu", "DISTILLER.TEACHER_CKPT", str(teacher)]
    return SimpleNamespace(root=root, opts=opts, ref=None)


def _sweep(tiny, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "sldistill", "sweep", "--cfg", str(KD), "--seeds", "2", "--out", str(out),
           *extra, *tiny.opts]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tiny.root)


def _metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _wait_for_iteration(proc: subprocess.Popen, run: Path) -> None:
    """Until the run's log shows an iteration of epoch 1 or 2."""
    deadline = time.time() + 90
    while not ((run / "log.txt").is_file() and re.search(r"epoch [12] iteration \d+/", (run / "log.txt").read_text())):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "no iteration logged"
        time.sleep(0.05)


def _assert_saved_mid_epoch(run: Path) -> None:
    ck = load_checkpoint(run / "latest.pth")
    assert ck.get("interrupted") and ck["epoch"] in (0, 1) and 0 < ck["iteration"] < 60
    assert not (run / "run.lock").exists()


@pytest.mark.parametrize("mode", ["in_process", "subprocess_per_device"])
def test_sigterm_saves_mid_epoch_and_the_same_command_continues(tiny, mode):
    # two device slots: each run is a `sldistill train` subprocess, both seeds at once
    extra = ["--devices", "cpu,cpu"] if mode == "subprocess_per_device" else []
    out = tiny.root / mode
    # the uninterrupted sweep (once for the module) runs beside the one interrupted
    ref_proc = _sweep(tiny, tiny.root / "ref") if tiny.ref is None else None
    proc = _sweep(tiny, out, *extra)
    try:
        run = out / METHOD / "seed0"
        _wait_for_iteration(proc, run)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    if ref_proc is not None:
        ref_err = ref_proc.communicate(timeout=120)[1]
        assert ref_proc.returncode == 0, ref_err
        tiny.ref = {s: _metrics(tiny.root / "ref" / METHOD / f"seed{s}") for s in (0, 1)}
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if "stopped by SIGTERM" in line]
    assert len(lines) == 1, stderr
    line = lines[0]
    assert f"interrupted: {METHOD} seed 0 (in {run})" in line and "run the same sweep command again" in line
    assert "finished: none" in line
    _assert_saved_mid_epoch(run)
    if mode == "in_process":  # one run at a time: seed 1 waits
        assert f"not started: {METHOD} seed 1" in line and not (out / METHOD / "seed1").exists()
    else:  # seed 1 ran beside seed 0 and was stopped too (saved, or stopped while starting)
        assert f"{METHOD} seed 1 (in {out / METHOD / 'seed1'})" in line and "not started" not in line

    again = _sweep(tiny, out, *extra)
    stdout, stderr = again.communicate(timeout=120)
    assert again.returncode == 0, stderr
    assert f"{METHOD} seed 0: resuming the unfinished run" in stdout
    assert re.search(r"continuing at epoch [12], iteration \d+", (run / "log.txt").read_text())
    for s in (0, 1):
        assert _metrics(out / METHOD / f"seed{s}") == tiny.ref[s], f"seed {s}"
        assert not (out / METHOD / f"seed{s}" / "run.lock").exists()
    assert (out / "summary.md").is_file()


# ------------------------------------------------------------------ the bookkeeping, with stubs


def _stub_train(flag: StopFlag, stop_at: int, calls: list):
    """A train() stand-in: the run of seed ``stop_at`` gets a SIGTERM and ends interrupted."""
    def train(cfg, **_flags):
        seed = int(cfg.EXPERIMENT.SEED)
        calls.append(seed)
        if seed == stop_at:
            flag.set(signal.SIGTERM)
            return SimpleNamespace(status="interrupted")
        Path(cfg.LOG.PREFIX, str(cfg.EXPERIMENT.PROJECT), f"seed{seed}").mkdir(parents=True, exist_ok=True)
        return SimpleNamespace(status="finished")
    return train


def test_in_process_stop_starts_no_further_run(tmp_path, capsys, monkeypatch):
    from sldistill.engine import control

    calls: list = []
    monkeypatch.setattr(control, "STOP", StopFlag())
    with pytest.raises(SweepInterrupted) as exc:
        run_sweep([KD], 3, out=tmp_path / "sw", teacher_cache="off", train_fn=_stub_train(control.STOP, 1, calls))
    assert exc.value.code == 143 and calls == [0, 1]
    err = capsys.readouterr().err
    assert (f"[sweep] stopped by SIGTERM: finished: {METHOD} seed 0; interrupted: {METHOD} seed 1 (in "
            f"{tmp_path / 'sw' / METHOD / 'seed1'}); not started: {METHOD} seed 2; run the same sweep command "
            "again to continue") in err


class _Proc:
    """A running ``train`` subprocess: it stops (exit 128 + signal) when sent a signal."""

    def __init__(self, log: list, seed: int) -> None:
        self.seed, self.log, self.rc = seed, log, None

    def poll(self):
        return self.rc

    def send_signal(self, signum: int) -> None:
        self.log.append(("signal", self.seed, signum))
        self.rc = 128 + signum

    def wait(self):
        self.log.append(("wait", self.seed))
        return self.rc


def test_parallel_stop_forwards_the_signal_and_waits(tmp_path):
    jobs = plan_sweep([KD], 4, out=tmp_path / "sw")
    flag, log = StopFlag(), []

    def launch(job, dev, path):
        if job.seed == 1:  # both devices busy: a signal comes
            flag.set(signal.SIGINT)
        return _Proc(log, job.seed)

    progress = _run_parallel(jobs, ["cuda:0", "cuda:1"], tmp_path / "sw", launch=launch, poll=0.0, stop=flag)
    assert log == [("signal", 0, signal.SIGINT), ("signal", 1, signal.SIGINT), ("wait", 0), ("wait", 1)]
    assert [j.seed for j in progress.interrupted] == [0, 1] and [j.seed for j in progress.not_started] == [2, 3]
    assert progress.finished == [] and progress.failed == []
