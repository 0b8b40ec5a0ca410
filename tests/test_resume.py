"""Resume and faults: epoch-boundary resume equality, SIGTERM mid-epoch, atomic writes, RNG."""
from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED
from runfiles import StopAtCheck
from test_trainer import _one_thread, make_cfg, make_parts  # noqa: F401 (autouse fixture)

from sldistill.engine.checkpoint import (
    atomic_save,
    capture_rng_state,
    find_resume_checkpoint,
    load_checkpoint,
    restore_rng_state,
)
from sldistill.engine.distributed import DistInfo
from sldistill.engine.trainer import StopFlag, Trainer, install_signal_handlers


@pytest.fixture
def deterministic():
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)


def _trainer(tmp_path, cfg, name, **kw):
    distiller, train, val = make_parts(cfg, views=kw.pop("views", 1))
    return Trainer(cfg, distiller, train, val, tmp_path / name, DistInfo(), **kw)


def _assert_same_state(a: Trainer, b: Trainer):
    for (k, va), vb in zip(a.distiller.state_dict().items(), b.distiller.state_dict().values()):
        assert torch.equal(va, vb), k
    sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        assert torch.equal(sa[i]["momentum_buffer"], sb[i]["momentum_buffer"])
    assert a.scheduler.get_last_lr() == b.scheduler.get_last_lr()


def test_resume_at_epoch_boundary_equals_uninterrupted(tmp_path, deterministic):
    cfg = make_cfg(tmp_path, EPOCHS=3, LR_DECAY_STAGES=[2])
    torch.manual_seed(123)
    full = _trainer(tmp_path, cfg, "full")
    res_full = full.fit()

    torch.manual_seed(123)
    part = _trainer(tmp_path, cfg, "part", stop_after_epoch=1)
    assert part.fit().status == "stopped"
    assert load_checkpoint(tmp_path / "part" / "latest.pth")["epoch"] == 1
    torch.manual_seed(999)  # a new process: whatever state the generators are in
    random.seed(5)
    resumed = _trainer(tmp_path, cfg, "part", resume=True)
    assert resumed.start_epoch == 2
    res = resumed.fit()
    _assert_same_state(full, resumed)
    assert res.best_acc == res_full.best_acc and res.best_epoch == res_full.best_epoch
    rows = (tmp_path / "part" / "metrics.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]


def test_sigterm_mid_epoch_saves_and_resume_matches(tmp_path, deterministic):
    cfg = make_cfg(tmp_path, EPOCHS=2, TRAINER="ours")
    torch.manual_seed(7)
    full = _trainer(tmp_path, cfg, "full", views=2)
    full.fit()

    flag = StopFlag()
    restore = install_signal_handlers(flag)
    try:
        def kill_at(epoch, it):
            if (epoch, it) == (2, 2):
                os.kill(os.getpid(), signal.SIGTERM)  # a real signal, handled by the installed handler

        torch.manual_seed(7)
        t = _trainer(tmp_path, cfg, "cut", views=2, stop_flag=flag, on_iteration=kill_at)
        res = t.fit()
    finally:
        restore()
    assert res.status == "interrupted" and res.signal_name == "SIGTERM"
    ck = load_checkpoint(tmp_path / "cut" / "latest.pth")
    assert ck["interrupted"] and ck["epoch"] == 1 and ck["iteration"] == 2
    assert "stopped by SIGTERM at epoch 2, iteration 2" in (tmp_path / "cut" / "log.txt").read_text()

    torch.manual_seed(1)
    resumed = _trainer(tmp_path, cfg, "cut", views=2, resume=True)
    assert (resumed.start_epoch, resumed.skip_iters) == (2, 2)
    assert resumed.fit().status == "finished"
    _assert_same_state(full, resumed)


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "best.pth").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"no latest.pth in .*r \(found: best.pth\)"):
        find_resume_checkpoint(tmp_path / "r")
    cfg = make_cfg(tmp_path)
    with pytest.raises(FileNotFoundError, match="--resume"):
        _trainer(tmp_path, cfg, "empty", resume=True)


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("boom while writing")


def test_atomic_save_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "latest.pth"
    atomic_save({"epoch": 1, "w": torch.ones(3)}, path)
    with pytest.raises(RuntimeError, match="boom"):
        atomic_save({"epoch": 2, "bad": _Unpicklable()}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pth"]  # no temp file left behind


def test_rng_state_roundtrip():
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    state = capture_rng_state()
    a = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    restore_rng_state(state)
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


# ---------------------------------------------------------------------------------------------
# end to end: real data files, the CLI and the run assembly (sldistill.engine.run.train)
# ---------------------------------------------------------------------------------------------

SEED_CFG = (SHARED or Path(__file__).resolve().parents[2] / "shared") / "seed_configs" / "sld" / "cifar100" / "sld" / "res32x4_res8x4.yaml"


@pytest.fixture(scope="module")
def cifar_env(tmp_path_factory):
    from datagen import write_cifar100, write_published_teacher

    root = tmp_path_factory.mktemp("resume_e2e")
    data = write_cifar100(root / "data", n_train=32, n_test=8)
    ckpt = write_published_teacher(root / "teachers", "resnet8")
    return {"data": data, "teacher": ckpt}


@pytest.fixture
def restore_determinism():
    yield  # EXPERIMENT.DETERMINISTIC switches deterministic algorithms on for the process
    torch.use_deterministic_algorithms(False)


def _opts(env, out: Path, workers: int) -> list[str]:
    """SLD with the two-view trainer (weak + batched strong policy), 4 steps per epoch."""
    return ["DISTILLER.TYPE", "SLD", "SOLVER.TRAINER", "ours", "DISTILLER.TEACHER", "resnet8",
            "DISTILLER.STUDENT", "resnet8", "DISTILLER.TEACHER_CKPT", str(env["teacher"]),
            "DATASET.ROOT", str(env["data"]), "DATASET.NUM_WORKERS", str(workers), "DATASET.TEST.BATCH_SIZE", "8",
            "SOLVER.BATCH_SIZE", "8", "SOLVER.EPOCHS", "2", "SOLVER.LR_DECAY_STAGES", "[1]",
            "EXPERIMENT.DETERMINISTIC", "true", "EXPERIMENT.SEED", "3", "EXPERIMENT.DEVICE", "cpu",
            "EXPERIMENT.NAME", "run", "LOG.PREFIX", str(out), "LOG.TENSORBOARD", "false", "LOG.PROGRESS", "false"]


def _student(out: Path) -> dict:
    return load_checkpoint(out / "sld_cifar100_baselines" / "run" / "latest.pth")


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a["epoch"] == b["epoch"] == 2
    assert a["model"].keys() == b["model"].keys()
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k  # bitwise


@pytest.mark.parametrize("workers", [0, 2])
def test_cli_resume_of_real_run_equals_uninterrupted(cifar_env, tmp_path, restore_determinism, workers):
    from sldistill.cli import main
    from sldistill.engine.config import load_config
    from sldistill.engine.run import train

    assert main(["train", "--cfg", str(SEED_CFG), *_opts(cifar_env, tmp_path / "full", workers)]) == 0
    full = _student(tmp_path / "full")

    # stopped at the epoch boundary, then `sldistill train ... --resume` in a fresh generator state
    part = tmp_path / "part"
    res = train(load_config(SEED_CFG, _opts(cifar_env, part, workers)), stop_after_epoch=1, log_interval=1)
    assert res.status == "stopped" and _student(part)["epoch"] == 1
    torch.manual_seed(1234), np.random.seed(5), random.seed(6)
    assert main(["train", "--cfg", str(SEED_CFG), *_opts(cifar_env, part, workers), "--resume"]) == 0
    _assert_same_weights(full, _student(part))

    # SIGTERM in epoch 2 after iteration 2 (checks: 4 iterations + end of epoch 1, then 2), resume
    cut = tmp_path / "cut"
    res = train(load_config(SEED_CFG, _opts(cifar_env, cut, workers)), stop_flag=StopAtCheck(7), log_interval=1)
    assert res.status == "interrupted" and res.signal_name == "SIGTERM"
    ck = _student(cut)
    assert ck["interrupted"] and (ck["epoch"], ck["iteration"]) == (1, 2)
    torch.manual_seed(99)
    assert main(["train", "--cfg", str(SEED_CFG), *_opts(cifar_env, cut, workers), "--resume"]) == 0
    _assert_same_weights(full, _student(cut))
