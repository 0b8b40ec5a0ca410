"""The trainer loop on tiny models and in-memory data (no dataset files, no model zoo)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from sldistill.distillers.base import Distiller
from sldistill.engine.checkpoint import load_checkpoint
from sldistill.engine.config import get_defaults
from sldistill.engine.distributed import DistInfo
from sldistill.engine.metrics import MetricLogger, topk_correct
from sldistill.engine.trainer import NonFiniteLossError, Trainer, amp_dtype

NUM_CLASSES = 5


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # the conftest fixture restores the count afterwards


class TinyNet(nn.Module):
    """conv-BN-ReLU-pool-linear; ``forward`` returns ``(logits, features)`` like the zoo."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, NUM_CLASSES)

    def forward(self, x: torch.Tensor):
        h = F.relu(self.bn(self.conv(x)))
        pooled = h.mean(dim=(2, 3))
        return self.fc(pooled), {"feats": [h], "preact_feats": [h], "pooled_feat": pooled}


class TinyKD(Distiller):
    """CE + temperature-4 KD, one or two views, with a connector so checkpoints carry one."""

    def __init__(self, student, teacher, cfg, views: int = 1, nan_at: tuple[int, int] | None = None):
        super().__init__(student, teacher, cfg)
        self.num_views = views
        self.connector = nn.Linear(NUM_CLASSES, NUM_CLASSES)
        self.nan_at = nan_at

    def forward_train(self, views, target, epoch, **extras):
        if epoch != getattr(self, "_epoch", None):
            self._epoch, self._it = epoch, 0
        self._it += 1
        t_out = self.teacher_forward(views)
        s_logits = [self.student(v)[0] for v in views]
        ce = sum(F.cross_entropy(sl, target) for sl in s_logits)
        kd = sum(F.kl_div(F.log_softmax(self.connector(sl) / 4, 1), F.softmax(tl / 4, 1), reduction="batchmean") * 16
                 for sl, (tl, _) in zip(s_logits, t_out))
        if self.nan_at == (epoch, self._it):
            kd = kd * float("nan")
        return s_logits[0], {"loss_ce": ce, "loss_kd": kd}


class RandomImages(Dataset):
    """Seeded random 8x8 images; items are named records like the loaders' batches: train
    ``{"views": [...], "target", "index"}``, validation ``{"image", "target"}``."""

    def __init__(self, n: int, views: int = 1, seed: int = 0, train: bool = True) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, 8, 8, generator=g)
        self.y = torch.arange(n) % NUM_CLASSES
        self.views, self.train = views, train

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        x = self.x[i]
        if not self.train:
            return {"image": x, "target": self.y[i]}
        # a random flip drawn from the global generator, so data order AND augmentation follow the seed
        if torch.rand(()) < 0.5:
            x = x.flip(-1)
        views = [x, x + 0.1 * torch.randn_like(x)] if self.views == 2 else [x]
        return {"views": views, "target": self.y[i], "index": i}


def make_cfg(tmp_path: Path, **solver) -> "object":
    cfg = get_defaults()
    cfg.LOG.PREFIX = str(tmp_path / "out")
    cfg.LOG.TENSORBOARD = False
    cfg.LOG.PROGRESS = False
    cfg.LOG.SAVE_CHECKPOINT_FREQ = 2
    cfg.EXPERIMENT.DEVICE = "cpu"
    cfg.DISTILLER.TEACHER = "tiny_teacher"
    cfg.SOLVER.EPOCHS = 2
    cfg.SOLVER.LR = 0.05
    cfg.SOLVER.LR_DECAY_STAGES = [1]
    for k, v in solver.items():
        cfg.SOLVER[k] = v
    if cfg.SOLVER.TRAINER in ("dot", "crd_dot"):  # as load_config does: the DOT trainers mean SOLVER.TYPE DOT
        cfg.SOLVER.TYPE = "DOT"
    return cfg


def make_parts(cfg, views: int = 1, n_train: int = 32, batch: int = 8, nan_at=None, seed: int = 0):
    torch.manual_seed(seed)
    student, teacher = TinyNet(), TinyNet(8)
    distiller = TinyKD(student, teacher, cfg, views=views, nan_at=nan_at)
    train = DataLoader(RandomImages(n_train, views), batch_size=batch, shuffle=True, num_workers=0)
    val = DataLoader(RandomImages(20, train=False, seed=1), batch_size=8)
    return distiller, train, val


def run_trainer(tmp_path: Path, cfg, name: str = "run", views: int = 1, **kw):
    distiller, train, val = make_parts(cfg, views=views, nan_at=kw.pop("nan_at", None))
    trainer = Trainer(cfg, distiller, train, val, tmp_path / name, DistInfo(), **kw)
    return trainer, trainer.fit()


def test_writes_checkpoints_metrics_and_summary(tmp_path):
    cfg = make_cfg(tmp_path)
    trainer, res = run_trainer(tmp_path, cfg)
    run = tmp_path / "run"
    assert res.status == "finished" and res.last_epoch == 2
    assert {p.name for p in run.glob("*.pth")} == {"latest.pth", "best.pth", "epoch_2.pth"}
    ck = load_checkpoint(run / "latest.pth")
    assert set(ck) >= {"model", "distiller", "optimizer", "scheduler", "scaler", "epoch", "best_acc", "rng", "cfg"}
    assert ck["epoch"] == 2
    assert set(ck["model"]) == set(trainer.distiller.student.state_dict())
    assert set(ck["distiller"]) == {"connector.weight", "connector.bias"}
    for k, v in trainer.distiller.student.state_dict().items():
        assert torch.equal(ck["model"][k], v)
    best = load_checkpoint(run / "best.pth")
    assert best["epoch"] == res.best_epoch and best["best_acc"] == pytest.approx(res.best_acc)
    rows = (run / "metrics.csv").read_text().strip().splitlines()
    header = rows[0].split(",")
    assert len(rows) == 3 and {"epoch", "train_loss_ce", "train_loss_kd", "test_acc", "test_acc_top5", "test_loss",
                               "lr", "images_per_s"} <= set(header)
    jl = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in jl] == [1, 2]
    assert jl[0]["lr"] == pytest.approx(0.05) and jl[1]["lr"] == pytest.approx(0.005)  # decay after epoch 1
    assert jl[-1]["test_acc"] == pytest.approx(res.last_acc)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_epoch"] == res.best_epoch and summary["last_epoch"] == 2
    assert summary["teacher_acc"] == pytest.approx(res.teacher_acc)
    log = (run / "log.txt").read_text()
    assert "teacher tiny_teacher: top-1" in log and "best top-1" in log and "last top-1" in log


def test_teacher_accuracy_is_measured_on_val(tmp_path):
    cfg = make_cfg(tmp_path, EPOCHS=1)
    trainer, res = run_trainer(tmp_path, cfg)
    teacher = trainer.distiller.teacher
    val = RandomImages(20, train=False, seed=1)
    with torch.no_grad():
        pred = teacher(val.x)[0].argmax(1)
    assert res.teacher_acc == pytest.approx(100.0 * (pred == val.y).float().mean().item())


def test_two_view_distiller_and_view_mismatch(tmp_path):
    cfg = make_cfg(tmp_path, EPOCHS=1, TRAINER="ours")
    _, res = run_trainer(tmp_path, cfg, views=2)
    assert res.status == "finished" and math.isfinite(res.last_acc)
    # a two-view distiller fed one-view batches: a clear error
    distiller, _, val = make_parts(cfg, views=2)
    one_view = DataLoader(RandomImages(16, views=1), batch_size=8)
    trainer = Trainer(cfg, distiller, one_view, val, tmp_path / "bad", DistInfo())
    with pytest.raises(ValueError, match="2 view.*gives 1.*num_views"):
        trainer.fit()


def test_non_finite_loss_names_epoch_iteration_term_and_keeps_last_good_checkpoint(tmp_path):
    cfg = make_cfg(tmp_path, EPOCHS=3)
    with pytest.raises(NonFiniteLossError, match=r"'loss_kd'.*epoch 2, iteration 3") as info:
        run_trainer(tmp_path, cfg, nan_at=(2, 3), log_interval=2)
    assert (info.value.epoch, info.value.iteration, info.value.term) == (2, 3, "loss_kd")
    ck = load_checkpoint(tmp_path / "run" / "latest.pth")
    assert ck["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_dot_trainer_runs_and_differs_from_sgd(tmp_path):
    cfg = make_cfg(tmp_path, EPOCHS=1, TRAINER="dot")
    t_dot, _ = run_trainer(tmp_path, cfg, name="dot")
    assert type(t_dot.optimizer).__name__ == "DOT"
    t_sgd, _ = run_trainer(tmp_path, make_cfg(tmp_path, EPOCHS=1), name="sgd")
    w_dot = t_dot.distiller.student.fc.weight
    w_sgd = t_sgd.distiller.student.fc.weight
    assert not torch.allclose(w_dot, w_sgd)


def test_bf16_autocast_on_cpu(tmp_path):
    cfg = make_cfg(tmp_path, EPOCHS=1, AMP="bf16")
    trainer, res = run_trainer(tmp_path, cfg)
    assert trainer.amp_dtype == torch.bfloat16
    assert math.isfinite(res.last_acc)
    assert all(p.dtype == torch.float32 for p in trainer.distiller.student.parameters())


def test_channels_last_applied(tmp_path):
    trainer, _ = run_trainer(tmp_path, make_cfg(tmp_path, EPOCHS=1))
    assert trainer.distiller.student.conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_refusals_have_clear_messages(tmp_path):
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match="fp16.*CUDA"):
        amp_dtype("fp16", cpu)
    cfg = make_cfg(tmp_path, SYNC_BN=True)
    distiller, train, val = make_parts(cfg)
    with pytest.raises(ValueError, match="SYNC_BN needs CUDA"):
        Trainer(cfg, distiller, train, val, tmp_path / "x", DistInfo())


def test_topk_correct_counts():
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0], [2.0, 3.0, 1.0]])
    target = torch.tensor([0, 1, 2])
    assert topk_correct(logits, target, (1, 2, 5)).tolist() == [1.0, 2.0, 3.0]


def test_metric_logger_tensorboard_and_resume_rows(tmp_path):
    pytest.importorskip("torch.utils.tensorboard", reason="tensorboard not installed")
    log = MetricLogger(tmp_path, tensorboard=True)
    log.log_epoch(1, {"a": 1.0})
    log.log_epoch(2, {"a": 2.0, "b": 3.0})
    log.close()
    assert list((tmp_path / "tb").glob("events.*"))
    log = MetricLogger(tmp_path, tensorboard=False)  # a resumed run re-logging epoch 2
    log.log_epoch(2, {"a": 5.0, "b": 6.0})
    rows = (tmp_path / "metrics.csv").read_text().strip().splitlines()
    assert rows == ["epoch,a,b", "1,1.0,", "2,5.0,6.0"]


def test_epoch_evaluation_uses_eval_mode_and_matches_the_saved_weights(tmp_path):
    """The logged test metrics of the last epoch are those of the saved student evaluated in
    eval mode (running BN statistics, untouched by validation data)."""
    from sldistill.engine.metrics import evaluate

    cfg = make_cfg(tmp_path)
    trainer, res = run_trainer(tmp_path, cfg)
    ck = load_checkpoint(tmp_path / "run" / "latest.pth")
    student = TinyNet()
    student.load_state_dict(ck["model"])
    student.eval()
    val = DataLoader(RandomImages(20, train=False, seed=1), batch_size=8)
    fresh = evaluate(lambda x: student(x)[0], val, torch.device("cpu"))
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().strip().splitlines()[-1])
    assert last["test_acc"] == pytest.approx(fresh["top1"]) and last["test_loss"] == pytest.approx(fresh["loss"], rel=1e-5)
    # evaluating did not move the running statistics: they are those saved after training
    assert torch.equal(trainer.distiller.student.bn.running_mean, ck["model"]["bn.running_mean"])
    assert trainer.distiller.training  # back in train mode after the evaluation


def test_an_out_of_range_label_is_refused_on_the_host_before_the_device(tmp_path):
    """On CUDA a bad label would be a device-side assert; the trainer checks the CPU batch first."""
    cfg = make_cfg(tmp_path, EPOCHS=1)
    distiller, _, val = make_parts(cfg)
    ds = RandomImages(8)
    bad = [{"views": [ds.x], "target": torch.tensor([0, 1, 2, 3, 4, 0, 1, 7]), "index": torch.arange(8)}]
    trainer = Trainer(cfg, distiller, bad, val, tmp_path / "bad", DistInfo(), num_classes=NUM_CLASSES)
    with pytest.raises(ValueError, match=r"outside \[0, 5\) \(got 0\.\.7\)"):
        trainer.fit()
