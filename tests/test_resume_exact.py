"""Resume leaves the run folder as an uninterrupted run would: the interrupted epoch's training
metrics, one metric row per epoch when a save fails, a finished run extended and interrupted,
the resume message of a run stopped in its first epoch; and checkpoint writes that fail cleanly
(a full disk) and get a normal file's permissions."""
from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path

import pytest
import torch
from test_ddp_reliability import _env, _spawn
from test_trainer import RandomImages, TinyKD, TinyNet, _one_thread, make_cfg, make_parts  # noqa: F401 (fixture)

from sldistill.engine import trainer as trainer_module
from sldistill.engine.checkpoint import atomic_save, load_checkpoint
from sldistill.engine.distributed import DistInfo
from sldistill.engine.rundir import run_state
from sldistill.engine.trainer import StopFlag, Trainer

TIMES = ("epoch_time_s", "images_per_s")  # the only fields that may differ between the runs


@pytest.fixture
def deterministic():
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)


def _trainer(tmp_path: Path, cfg, name: str, **kw) -> Trainer:
    torch.manual_seed(7)
    distiller, train, val = make_parts(cfg)
    return Trainer(cfg, distiller, train, val, tmp_path / name, DistInfo(), **kw)


def _stop_at(flag: StopFlag, where: tuple[int, int]):
    """An ``on_iteration`` hook acting as a SIGTERM after iteration ``where = (epoch, iteration)``."""
    def hook(epoch: int, iteration: int) -> None:
        if (epoch, iteration) == where:
            flag.set(signal.SIGTERM)
    return hook


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMES} for r in rows]


# ------------------------------------------------------------------ 1. the interrupted epoch's metrics

@pytest.mark.parametrize("where", [(1, 2), (2, 3)])
def test_mid_epoch_resume_logs_the_metrics_of_an_uninterrupted_run(tmp_path, deterministic, where):
    cfg = make_cfg(tmp_path, EPOCHS=2, SCHEDULER="cosine")  # a per-iteration rate: the logged lr too
    _trainer(tmp_path, cfg, "full").fit()

    flag = StopFlag()
    assert _trainer(tmp_path, cfg, "cut", stop_flag=flag, on_iteration=_stop_at(flag, where)).fit().status \
        == "interrupted"
    ck = load_checkpoint(tmp_path / "cut" / "latest.pth")  # weights_only=True
    assert ck["interrupted"] and ck["iteration"] == where[1]
    assert ck["meter"][0]["names"] == ["loss_ce", "loss_kd"] and ck["meter"][0]["steps"] == where[1]
    assert _trainer(tmp_path, cfg, "cut", resume=True).fit().status == "finished"

    full, cut = _rows(tmp_path / "full"), _rows(tmp_path / "cut")
    assert [r["epoch"] for r in cut] == [1, 2]
    assert cut == full  # train_loss, train_loss_*, train_acc, lr, test metrics: all exactly equal
    csv_full = (tmp_path / "full" / "metrics.csv").read_text().splitlines()
    csv_cut = (tmp_path / "cut" / "metrics.csv").read_text().splitlines()
    drop = [csv_full[0].split(",").index(k) for k in TIMES]
    assert [[v for i, v in enumerate(line.split(",")) if i not in drop] for line in csv_cut] == \
        [[v for i, v in enumerate(line.split(",")) if i not in drop] for line in csv_full]


def _ddp_worker(rank: int, port: int, out: str) -> None:
    _env(rank, port)
    from torch.utils.data import DataLoader

    from sldistill.engine.distributed import barrier, cleanup_distributed, init_distributed

    info = init_distributed("cpu")
    cfg = make_cfg(Path(out), EPOCHS=2, BATCH_SIZE=16)

    def trainer(name: str, **kw) -> Trainer:
        torch.manual_seed(0)  # the same initial weights on both ranks
        distiller = TinyKD(TinyNet(), TinyNet(8), cfg)
        torch.manual_seed(10 + rank)  # then each rank's own data order
        loader = DataLoader(RandomImages(32), batch_size=8, shuffle=True)
        val = DataLoader(RandomImages(20, train=False, seed=1), batch_size=8)
        return Trainer(cfg, distiller, loader, val, Path(out) / name, info, log_interval=1, **kw)

    trainer("full").fit()
    flag = StopFlag()
    hook = _stop_at(flag, (2, 2)) if rank == 0 else None  # one rank's signal stops both
    trainer("cut", stop_flag=flag, on_iteration=hook).fit()
    barrier()
    trainer("cut", resume=True).fit()
    barrier()
    cleanup_distributed()


def test_ddp_mid_epoch_resume_restores_every_ranks_sums(tmp_path):
    _spawn(_ddp_worker, str(tmp_path))
    assert _rows(tmp_path / "cut") == _rows(tmp_path / "full")  # train_acc/train_loss sum both ranks' counts


# ------------------------------------------------------------------ 2. a full disk while saving

def _write_then_fail(exc: BaseException):
    def fake_save(obj, f, *a, **kw):
        f.write(b"PK partial zip")  # part of the file is written, then the disk is full
        raise exc
    return fake_save


@pytest.mark.parametrize("exc", [
    RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/0: "
                 "file write failed: No space left on device"),
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"),
    OSError(errno.ENOSPC, "No space left on device"),
])
def test_a_failed_checkpoint_write_is_an_oserror_and_keeps_the_old_file(tmp_path, monkeypatch, exc):
    path = tmp_path / "latest.pth"
    atomic_save({"epoch": 1, "w": torch.ones(3)}, path)
    monkeypatch.setattr(torch, "save", _write_then_fail(exc))
    with pytest.raises(OSError) as info:
        atomic_save({"epoch": 2, "w": torch.zeros(3)}, path)
    assert info.value.filename == str(path)
    assert str(path) in str(info.value) and str(exc.args[-1]) in str(info.value)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pth"]  # no partial temporary file left


def test_checkpoints_get_a_normal_files_permissions(tmp_path):
    old = os.umask(0o027)
    try:
        path = atomic_save({"w": torch.ones(1)}, tmp_path / "best.pth")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o640  # 0666 less the umask, as open() would give


# ------------------------------------------------------------------ 3. a failed save logs no row

def test_a_failed_save_after_an_epoch_logs_no_row_and_resume_logs_it_once(tmp_path, monkeypatch):
    cfg = make_cfg(tmp_path, EPOCHS=2)
    real = trainer_module.atomic_save

    def full_disk_at_epoch_2(state, path):
        if Path(path).name == "latest.pth" and state["epoch"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(state, path)

    monkeypatch.setattr(trainer_module, "atomic_save", full_disk_at_epoch_2)
    with pytest.raises(OSError, match="No space left"):
        _trainer(tmp_path, cfg, "run").fit()
    assert [r["epoch"] for r in _rows(tmp_path / "run")] == [1]
    monkeypatch.undo()
    resumed = _trainer(tmp_path, cfg, "run", resume=True)
    assert resumed.start_epoch == 2
    resumed.fit()
    assert [r["epoch"] for r in _rows(tmp_path / "run")] == [1, 2]
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2"]


# ------------------------------------------------------------------ 4. extending a finished run

def test_extending_a_finished_run_then_stopping_leaves_it_unfinished(tmp_path):
    _trainer(tmp_path, make_cfg(tmp_path, EPOCHS=2), "run").fit()
    run = tmp_path / "run"
    assert run_state(run).describe() == "a finished run (epoch 2)"

    flag = StopFlag()
    longer = make_cfg(tmp_path, EPOCHS=3)
    res = _trainer(tmp_path, longer, "run", resume=True, stop_flag=flag, on_iteration=_stop_at(flag, (3, 1))).fit()
    assert res.status == "interrupted"
    assert not (run / "summary.json").exists()
    assert run_state(run).describe() == "a run stopped at epoch 2"

    assert _trainer(tmp_path, longer, "run", resume=True).fit().status == "finished"
    assert json.loads((run / "summary.json").read_text())["last_epoch"] == 3


# ------------------------------------------------------------------ 5. resumed in the first epoch

def test_a_run_resumed_in_its_first_epoch_has_no_best_yet(tmp_path):
    cfg = make_cfg(tmp_path, EPOCHS=1)
    flag = StopFlag()
    _trainer(tmp_path, cfg, "run", stop_flag=flag, on_iteration=_stop_at(flag, (1, 2))).fit()
    _trainer(tmp_path, cfg, "run", resume=True)
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "continuing at epoch 1, iteration 3 (best top-1 so far none yet)" in log
    assert "-1.00" not in log
