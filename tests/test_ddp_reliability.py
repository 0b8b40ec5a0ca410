"""Multi-process behaviour on 2 gloo processes (the CPU path of the torchrun code): the logged
top-1 is the checkpoint's, the teacher stays out of DDP, CRD's memory banks take every rank's
rows, a NaN on one rank stops both with one message, each rank resumes its own random
streams; and the single-process parts of the device and SyncBatchNorm logic."""
from __future__ import annotations

import json
import os
import random
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from datagen import write_cifar100, write_published_teacher
from test_trainer import RandomImages, TinyKD, TinyNet, make_cfg

_NETWORK_ERRORS = ("EADDRINUSE", "Address already in use", "Connection reset", "Connection refused",
                   "Socket Timeout", "timed out")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(fn, *args) -> None:
    for attempt in range(2):
        try:
            mp.start_processes(fn, args=(_free_port(), *args), nprocs=2, join=True, start_method="spawn")
            return
        except mp.ProcessRaisedException as exc:  # a port taken between choosing and binding: retry once
            if attempt or not any(w in str(exc) for w in _NETWORK_ERRORS):
                raise


def _env(rank: int, port: int) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))


# ------------------------------------------------------------------ logged top-1 == checkpoint's

def _train_worker(rank: int, port: int, overrides: list[str]) -> None:
    _env(rank, port)
    from sldistill.engine.config import load_config
    from sldistill.engine.run import train

    train(load_config(None, overrides))


@pytest.mark.parametrize("optimizer", ["SGD", "DOT"])
def test_ddp_logged_accuracy_is_what_the_checkpoint_gives(tmp_path, optimizer):
    """Also with DOT, whose two backward passes run under no_sync (no DDP buffer broadcast)."""
    from sldistill.engine.config import load_config
    from sldistill.engine.run import evaluate_checkpoint

    data = write_cifar100(tmp_path / "data", n_train=32, n_test=16)
    teacher = write_published_teacher(tmp_path / "teachers", "resnet8")
    overrides = ["DISTILLER.TYPE", "KD", "DISTILLER.TEACHER", "resnet8", "DISTILLER.STUDENT", "resnet8",
                 "DISTILLER.TEACHER_CKPT", str(teacher), "DATASET.ROOT", str(data), "DATASET.NUM_WORKERS", "0",
                 "DATASET.TEST.BATCH_SIZE", "4", "SOLVER.BATCH_SIZE", "8", "SOLVER.EPOCHS", "2", "SOLVER.LR", "0.2",
                 "LOG.PREFIX", str(tmp_path / "out"), "LOG.TENSORBOARD", "false", "EXPERIMENT.DEVICE", "cpu",
                 "EXPERIMENT.NAME", "run", "SOLVER.TYPE", optimizer]
    _spawn(_train_worker, overrides)
    run = tmp_path / "out" / "distill" / "run"
    summary = json.loads((run / "summary.json").read_text())
    rows = {r["epoch"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}
    cfg = load_config(None, overrides)
    for name, epoch in (("best.pth", summary["best_epoch"]), ("latest.pth", summary["last_epoch"])):
        res = evaluate_checkpoint(cfg, "resnet8", run / name)
        # top-1 on 16 images is coarse; the test loss shows any difference in the weights or BN statistics
        assert res["top1"] == pytest.approx(rows[epoch]["test_acc"], abs=1e-9), name
        assert res["loss"] == pytest.approx(rows[epoch]["test_loss"], rel=1e-5), name
    ck = torch.load(run / "latest.pth", weights_only=True)
    assert ck["world_size"] == 2 and len(ck["rng"]) == 2


def test_ddp_runs_read_one_teacher_cache(tmp_path):
    """Every rank maps the same read-only cache; the run equals the 2-process run without it."""
    from sldistill.engine.config import load_config
    from sldistill.teacher_cache import build_cache

    data = write_cifar100(tmp_path / "data", n_train=32, n_test=16)
    teacher = write_published_teacher(tmp_path / "teachers", "resnet8")
    common = ["DISTILLER.TYPE", "KD", "DISTILLER.TEACHER", "resnet8", "DISTILLER.STUDENT", "resnet8",
              "DISTILLER.TEACHER_CKPT", str(teacher), "DATASET.ROOT", str(data), "DATASET.NUM_WORKERS", "0",
              "DATASET.TEST.BATCH_SIZE", "4", "SOLVER.BATCH_SIZE", "8", "SOLVER.EPOCHS", "1",
              "LOG.PREFIX", str(tmp_path / "out"), "LOG.TENSORBOARD", "false", "EXPERIMENT.DEVICE", "cpu",
              "EXPERIMENT.DETERMINISTIC", "true"]
    cache = build_cache(load_config(None, common), tmp_path / "t.tcache", progress=False)
    _spawn(_train_worker, [*common, "EXPERIMENT.NAME", "live"])
    _spawn(_train_worker, [*common, "EXPERIMENT.NAME", "cached", "DISTILLER.TEACHER_CACHE", str(cache)])
    rows = {name: json.loads((tmp_path / "out" / "distill" / name / "metrics.jsonl").read_text().splitlines()[0])
            for name in ("live", "cached")}
    assert rows["cached"]["test_acc"] == rows["live"]["test_acc"]
    assert rows["cached"]["train_loss_kd"] == pytest.approx(rows["live"]["train_loss_kd"], rel=1e-4)
    assert "teacher cache:" in (tmp_path / "out" / "distill" / "cached" / "log.txt").read_text()


# ------------------------------------------------------------------ CRD banks and the teacher

class FlatNet(nn.Module):
    """No BatchNorm, so a per-rank forward equals the rows of a global-batch forward."""

    def __init__(self, width: int = 6) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.fc = nn.Linear(width, 5)

    def forward(self, x):
        h = F.relu(self.conv(x))
        pooled = h.mean((2, 3))
        return self.fc(pooled), {"feats": [h], "preact_feats": [h], "pooled_feat": pooled}


def _crd_parts():
    from sldistill.distillers import get_distiller_class
    from sldistill.engine.config import load_config

    cfg = load_config(None, ["DISTILLER.TYPE", "CRD", "CRD.NCE.K", "3", "CRD.FEAT.DIM", "4", "EXPERIMENT.DEVICE",
                             "cpu", "LOG.TENSORBOARD", "false", "SOLVER.BATCH_SIZE", "8", "CRD.FEAT.STUDENT_DIM", "6",
                             "CRD.FEAT.TEACHER_DIM", "6"])
    torch.manual_seed(0)
    distiller = get_distiller_class("CRD")(FlatNet(), FlatNet(), cfg, num_data=16)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, 8, 8, generator=g), torch.arange(8) % 5
    index = torch.tensor([3, 9, 1, 14, 6, 11, 0, 7])
    contrast = torch.cat([index[:, None], torch.randint(0, 16, (8, 3), generator=g)], 1)
    return cfg, distiller, x, y, index, contrast


def _crd_worker(rank: int, port: int, out: str) -> None:
    _env(rank, port)
    from sldistill.engine.distributed import barrier, cleanup_distributed, init_distributed
    from sldistill.engine.trainer import Trainer

    info = init_distributed("cpu")
    cfg, distiller, x, y, index, contrast = _crd_parts()
    part = slice(4 * rank, 4 * rank + 4)
    trainer = Trainer(cfg, distiller, [{}], [], Path(out) / "run", info)
    ignored = set(trainer.model.parameters_to_ignore)
    teacher_names = {f"teacher.{n}" for n, _ in distiller.teacher.named_parameters()}
    assert teacher_names <= ignored and {"contrast.memory_v1", "contrast.memory_v2"} <= ignored
    assert not any(n.startswith("student.") for n in ignored)
    trainer.model.train()
    trainer.model([x[part]], y[part], 1, index=index[part], contrast_index=contrast[part])
    torch.save({k: v.clone() for k, v in distiller.contrast.state_dict().items()}, Path(out) / f"crd{rank}.pt")
    barrier()
    cleanup_distributed()


def test_crd_memory_banks_take_every_ranks_rows(tmp_path):
    _spawn(_crd_worker, str(tmp_path))
    _, distiller, x, y, index, contrast = _crd_parts()
    distiller.train()
    distiller([x], y, 1, index=index, contrast_index=contrast)  # one process over the global batch
    want = distiller.contrast.state_dict()
    for rank in range(2):
        got = torch.load(tmp_path / f"crd{rank}.pt")
        for k in ("memory_v1", "memory_v2", "params"):
            torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=f"rank {rank} {k}")
    assert not torch.equal(want["memory_v1"][index], _crd_parts()[1].contrast.memory_v1[index])  # it did move


# ------------------------------------------------------------------ NaN on one rank

def _nan_worker(rank: int, port: int, out: str) -> None:
    _env(rank, port)
    from sldistill.engine.distributed import barrier, cleanup_distributed, init_distributed
    from sldistill.engine.trainer import NonFiniteLossError, Trainer

    info = init_distributed("cpu")
    cfg = make_cfg(Path(out), EPOCHS=1, BATCH_SIZE=8)
    torch.manual_seed(0)
    distiller = TinyKD(TinyNet(), TinyNet(8), cfg, nan_at=(1, 2) if rank == 1 else None)
    ds = RandomImages(16)
    batches = [{"views": [ds.x[i:i + 4]], "target": ds.y[i:i + 4], "index": torch.arange(i, i + 4)}
               for i in (0, 4, 8)]
    trainer = Trainer(cfg, distiller, batches, [], Path(out) / "run", info, log_interval=1)
    try:
        trainer.fit()
        message = "no error"
    except NonFiniteLossError as exc:
        message = str(exc)
    Path(out, f"nan{rank}.txt").write_text(message)
    barrier()  # both ranks are past the error before the group goes away
    cleanup_distributed()


def test_a_nan_on_one_rank_stops_every_rank_with_one_message(tmp_path):
    _spawn(_nan_worker, str(tmp_path))
    messages = [(tmp_path / f"nan{r}.txt").read_text() for r in range(2)]
    assert messages[0] == messages[1]
    assert "'loss_kd'" in messages[0] and "epoch 1, iteration 2" in messages[0]


# ------------------------------------------------------------------ per-rank streams after resume

def _streams() -> list[float]:
    return [*torch.rand(3).tolist(), random.random(), float(np.random.rand())]


def _rng_worker(rank: int, port: int, out: str) -> None:
    _env(rank, port)
    from torch.utils.data import DataLoader

    from sldistill.engine.distributed import barrier, cleanup_distributed, init_distributed
    from sldistill.engine.trainer import Trainer

    info = init_distributed("cpu")
    cfg = make_cfg(Path(out), EPOCHS=2, BATCH_SIZE=16)
    results = {}
    for name, stop in (("full", None), ("part", 1)):
        torch.manual_seed(10 + rank)
        random.seed(20 + rank)
        np.random.seed(30 + rank)
        torch.manual_seed(0)  # same initial weights on both ranks
        distiller = TinyKD(TinyNet(), TinyNet(8), cfg)
        torch.manual_seed(10 + rank)  # then each rank's own stream, as sldistill.engine.run does
        loader = DataLoader(RandomImages(32), batch_size=8, shuffle=True)
        trainer = Trainer(cfg, distiller, loader, [], Path(out) / name, info, stop_after_epoch=stop)
        trainer.fit()
        if stop:
            barrier()
            torch.manual_seed(999)  # a new process: whatever state the generators are in
            random.seed(5)
            np.random.seed(7)
            torch.manual_seed(0)
            distiller = TinyKD(TinyNet(), TinyNet(8), cfg)
            loader = DataLoader(RandomImages(32), batch_size=8, shuffle=True)
            Trainer(cfg, distiller, loader, [], Path(out) / name, info, resume=True).fit()
        results[name] = _streams()
    Path(out, f"rng{rank}.json").write_text(json.dumps(results))
    barrier()
    cleanup_distributed()


def test_each_rank_resumes_its_own_random_streams(tmp_path):
    _spawn(_rng_worker, str(tmp_path))
    got = [json.loads((tmp_path / f"rng{r}.json").read_text()) for r in range(2)]
    for rank in range(2):
        assert got[rank]["part"] == got[rank]["full"], f"rank {rank}"
    assert got[0]["full"] != got[1]["full"]  # the ranks' streams are their own


# ------------------------------------------------------------------ single-process parts

def test_rng_restore_accepts_states_of_any_dtype_and_the_legacy_layout():
    from sldistill.engine.checkpoint import capture_rng_state, restore_rng_state

    state = capture_rng_state()
    want = _streams()
    moved = {**state, "torch": state["torch"].to(torch.int64)}  # as a checkpoint mapped elsewhere may give it
    restore_rng_state(moved)
    assert _streams() == want
    legacy = {"numpy": np.random.get_state()}  # older checkpoints: numpy's tuple
    a = np.random.rand()
    restore_rng_state(legacy)
    assert np.random.rand() == a


def test_device_per_process(monkeypatch):
    from sldistill.engine import distributed as D

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # one visible GPU per task (SLURM)
    assert D.resolve_device("auto", local_rank=3, world_size=4) == torch.device("cuda:0")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert D.resolve_device("cuda", local_rank=3, world_size=8) == torch.device("cuda:3")
    assert D.resolve_device("cuda:5", local_rank=0, world_size=1) == torch.device("cuda:5")
    with pytest.raises(ValueError, match=r"'cuda:1' names one GPU, but 2 processes"):
        D.resolve_device("cuda:1", local_rank=0, world_size=2)


def test_sync_batchnorm_converts_every_trainable_module_and_wrapped_features_follow():
    from sldistill.distillers import get_distiller_class
    from sldistill.engine.config import load_config
    from sldistill.engine.distributed import convert_sync_batchnorm
    from sldistill.models import create

    cfg = load_config(None, ["DISTILLER.TYPE", "FITNET", "FITNET.HINT_LAYER", "1"])
    d = get_distiller_class("FITNET")(create("resnet8"), create("resnet20"), cfg)
    convert_sync_batchnorm(d)
    assert any(isinstance(m, nn.SyncBatchNorm) for m in d.student.modules())
    assert any(isinstance(m, nn.SyncBatchNorm) for m in d.conv_reg.modules())
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in d.teacher.modules())
    assert not any(type(m) is nn.BatchNorm2d for n, m in d.named_modules() if not n.startswith("teacher"))

    wrapped = create("torchvision:resnet18", num_classes=10)
    before = [t.shape for t in wrapped.eval()(torch.randn(1, 3, 32, 32))[1]["feats"]]
    holder = nn.Module()
    holder.student = wrapped
    convert_sync_batchnorm(holder)
    feats = holder.student.eval()(torch.randn(1, 3, 32, 32))[1]["feats"]
    assert [t.shape for t in feats] == before and len(feats) >= 3
    assert isinstance(holder.student.wrapped.bn1, nn.SyncBatchNorm)
