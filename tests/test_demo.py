"""sldistill demo end to end on a few hundred written Fashion-MNIST images, one epoch: the
teacher cache, the students of every method, the table, report and plot."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from datagen import write_fashion_mnist
from sldistill.cli import main
from sldistill.demo import (
    METHODS,
    DemoOptions,
    ensure_teacher,
    lr_stages,
    method_config,
    teacher_config,
    teacher_key,
)


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_train=300, n_test=60)


def _opts(out: Path, root: Path, **kw) -> DemoOptions:
    base = dict(out=out, data_root=str(root), epochs=1, teacher_epochs=1, subset=200, num_workers=0,
                device="cpu", progress=False, batch_size=32)
    base.update(kw)
    return DemoOptions(**base)


@pytest.fixture(scope="module")
def demo_run(fmnist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One full CLI demo: one method of each kind (no teacher, one view + sort, DKD, two views),
    one epoch, 200 training images."""
    out = tmp_path_factory.mktemp("demo")
    rc = main(["demo", "--out", str(out), "--data-root", str(fmnist), "--methods", "ce,kd_sort,dkd,sld", "--epochs", "1",
               "--teacher-epochs", "1", "--subset", "200", "--workers", "0", "--device", "cpu",
               "--batch-size", "32", "--no-progress"])
    assert rc == 0
    return out


def test_demo_writes_table_report_plot(demo_run: Path) -> None:
    rows = list(csv.DictReader(open(demo_run / "results.csv")))
    assert [r["method"] for r in rows] == ["CE", "KD+sort", "DKD", "SLD"]
    for r in rows:
        label = r["method"]
        name = next(k for k, (lab, _) in METHODS.items() if lab == label)
        metrics = list(csv.DictReader(open(demo_run / "students" / f"{name}-seed0" / "metrics.csv")))
        assert len(metrics) == 1  # one epoch
        acc = float(metrics[0]["test_acc"])
        assert float(r["best_mean"]) == pytest.approx(acc, abs=1e-3)
        assert float(r["last_mean"]) == pytest.approx(acc, abs=1e-3)
        assert "1 epochs" in r["budget"] and "200 train images" in r["budget"]
        assert ("2 views" in r["budget"]) == (name in ("mlkd", "sld", "sld_sort"))
    report = (demo_run / "report.md").read_text()
    assert "| KD+sort | 1 |" in report and "![test top-1 per epoch](accuracy.png)" in report
    assert "test error" in report and "swapped / sorted" in report
    assert (demo_run / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_teacher_statistics(demo_run: Path) -> None:
    t = json.loads((demo_run / "teacher.json").read_text())
    assert t["train_images"] == 200 and t["epochs"] == 1
    assert t["test_error"] == pytest.approx(100.0 - t["test_top1"])
    # swap and sort change exactly the rows whose arg-max is not the label
    assert t["train_swapped_fraction"] == pytest.approx(t["train_wrong_fraction"])
    assert t["train_sorted_fraction"] == pytest.approx(t["train_wrong_fraction"])
    assert 0.0 < t["train_wrong_fraction"] < 1.0  # random images: a 1-epoch teacher gets many wrong
    summary = json.loads(next((demo_run / "teacher").glob("*/summary.json")).read_text())
    assert t["test_top1"] == pytest.approx(summary["last_acc"])


def test_students_use_cached_teacher_and_scaled_schedules(demo_run: Path, fmnist: Path) -> None:
    opts = _opts(demo_run, fmnist, epochs=8)
    cfg = method_config("sld", opts, 0, "T.pth")
    assert cfg.SLD.GAMMA_FRACTION == pytest.approx(0.625)
    assert cfg.SOLVER.LR_DECAY_STAGES == [5, 6, 7]
    assert cfg.DISTILLER.TEACHER_CKPT == "T.pth" and cfg.DATASET.SUBSET_SEED == 0
    assert method_config("dkd", opts, 0, "T.pth").DKD.WARMUP == 1
    assert method_config("dkd", _opts(demo_run, fmnist, epochs=240), 0, "T.pth").DKD.WARMUP == 20
    assert method_config("sld_sort", opts, 0, "T.pth").SLD.TEACHER_PROCESSOR == "sort"
    assert lr_stages(240) == [150, 180, 210] and lr_stages(1) == [1]
    for name in METHODS:  # every method's shipped config resolves with the demo's budget
        c = method_config(name, opts, 1, "T.pth")
        assert c.SOLVER.EPOCHS == 8 and c.EXPERIMENT.SEED == 1 and c.DATASET.TRAIN_SUBSET == 200
        assert c.SOLVER.TRAINER == ("ours" if name in ("mlkd", "sld", "sld_sort") else "base")
    used = (demo_run / "students" / "kd_sort-seed0" / "config.yaml").read_text()
    teacher_dir = next((demo_run / "teacher").iterdir())
    assert str(teacher_dir / "latest.pth") in used


def test_teacher_cache_reused_and_retrained(demo_run: Path, fmnist: Path) -> None:
    opts = _opts(demo_run, fmnist, methods=["ce"])
    folder = demo_run / "teacher" / teacher_key(teacher_config(opts))
    assert folder.is_dir()
    ckpt = folder / "latest.pth"
    os.utime(ckpt, (1_000_000, 1_000_000))
    assert ensure_teacher(opts)[0] == folder
    assert ckpt.stat().st_mtime == 1_000_000  # reused
    other = teacher_key(teacher_config(_opts(demo_run, fmnist, teacher_epochs=2)))
    assert other != folder.name  # a different teacher config, a different cache entry
    assert teacher_key(teacher_config(_opts(demo_run, fmnist, num_workers=3, progress=True))) == folder.name
    ensure_teacher(_opts(demo_run, fmnist, retrain_teacher=True))
    assert ckpt.stat().st_mtime != 1_000_000  # trained again


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="unknown demo method"):
        DemoOptions(methods=["kd", "nope"]).check()
    with pytest.raises(ValueError, match="--epochs must be >= 1"):
        DemoOptions(epochs=0).check()
    with pytest.raises(ValueError, match="--subset"):
        DemoOptions(subset=-1).check()
    assert main(["demo", "--methods", "kd,bogus"]) == 2
