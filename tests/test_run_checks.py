"""What a user review found: a failed start's parent folders, the compatibility notice, a crashed
first run, evaluation warning about training batches, training subsets, SLD's GAMMA beyond the
run, top-5 on few classes, report intervals outside [0, 100], report labels of overridden runs."""
from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

import pytest
import torch
from conftest import run_subcommand
from datagen import write_cifar100, write_image_folder, write_published_teacher
from runfiles import write_run_folder
from torch import nn

from sldistill.cli import main
from sldistill.engine.config import get_defaults, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("checks")
    return {"data": write_cifar100(root / "data", n_train=17, n_test=8),
            "folder": write_image_folder(root / "folder", n_classes=3, per_class=4, size=8),
            "teacher": write_published_teacher(root / "teachers", "resnet8")}


def _args(env, out: Path, *extra: str) -> list[str]:
    return ["train", "DISTILLER.TYPE", "NONE", "DISTILLER.STUDENT", "resnet8", "DATASET.ROOT", str(env["data"]),
            "DATASET.NUM_WORKERS", "0", "DATASET.TEST.BATCH_SIZE", "8", "SOLVER.BATCH_SIZE", "8",
            "SOLVER.EPOCHS", "1", "LOG.PREFIX", str(out), "LOG.TENSORBOARD", "false", "EXPERIMENT.DEVICE", "cpu",
            "EXPERIMENT.NAME", "run", *extra]


# ------------------------------------------------------------------ 1. failed start, parents


def test_a_failed_start_removes_the_parents_it_created(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["train", "DATASET.TYPE", "folder", "DATASET.ROOT", str(tmp_path / "nonexist"), "EXPERIMENT.DEVICE", "cpu"]
    assert main(argv) == 2
    assert "nonexist" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no output/distill/ left
    (tmp_path / "output").mkdir()  # a folder that was there before is kept
    assert main(argv) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["output"] and not any((tmp_path / "output").iterdir())


# ------------------------------------------------------------------ 2. compatibility notice


def test_compat_notice_lists_only_keys_that_were_set():
    from sldistill.engine.run import config_summary

    assert not any("compatibility" in line for line in config_summary(load_config(None, [])))
    lines = config_summary(load_config(None, ["LOG.TENSORBOARD_FREQ", "50"]))
    assert lines[-1] == "accepted for compatibility, not acted on: LOG.TENSORBOARD_FREQ"


# ------------------------------------------------------------------ 3. crashed first run


def test_a_crashed_first_run_is_not_offered_resume(env, tmp_path, monkeypatch, capsys):
    from sldistill.distillers.logit import Vanilla

    def crash(self, *args, **kwargs):
        raise RuntimeError("crash in the first iteration")

    out = tmp_path / "out"
    run = out / "distill" / "run"
    with monkeypatch.context() as m:
        m.setattr(Vanilla, "forward_train", crash)
        with pytest.raises(RuntimeError, match="crash in the first"):
            main(_args(env, out))
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "log.txt"]  # what a crash leaves
    capsys.readouterr()
    assert main(_args(env, out)) == 2
    err = capsys.readouterr().err
    assert "before writing any checkpoint" in err and "nothing to resume" in err and "--overwrite" in err
    assert "--resume" not in err
    assert main(_args(env, out, "--resume")) == 2
    err = capsys.readouterr().err
    assert "nothing to resume" in err and "--overwrite" in err and "without --resume" not in err
    assert main(_args(env, out, "--overwrite")) == 0


# ------------------------------------------------------------------ 4. evaluation and the training loader


def test_evaluation_does_not_warn_about_training_batches(env):
    from sldistill.engine.run import evaluate_checkpoint

    cfg = load_config(None, ["DATASET.ROOT", str(env["data"]), "DATASET.NUM_WORKERS", "0", "SOLVER.BATCH_SIZE", "8",
                             "DATASET.TEST.BATCH_SIZE", "8", "EXPERIMENT.DEVICE", "cpu"])
    with warnings.catch_warnings(record=True) as caught:  # 17 images, batch 8: a last batch of one
        warnings.simplefilter("always")
        res = evaluate_checkpoint(cfg, "resnet8", env["teacher"])
    assert not [w for w in caught if "training batch" in str(w.message)]
    assert 0 <= res["top1"] <= 100 and math.isfinite(res["top5"])


# ------------------------------------------------------------------ 5. training subsets


def test_a_subset_as_large_as_the_training_set_is_logged_once(env, tmp_path):
    assert main(_args(env, tmp_path / "out", "DATASET.TRAIN_SUBSET", "200")) == 0
    log = (tmp_path / "out" / "distill" / "run" / "log.txt").read_text().splitlines()
    hits = [line for line in log if "TRAIN_SUBSET" in line and "200" in line and "17" in line]
    assert len(hits) == 1 and hits[0].startswith("warning:")


def test_a_subset_smaller_than_the_classes_is_logged(env):
    from sldistill.data import build_datasets

    cfg = load_config(None, ["DATASET.TYPE", "folder", "DATASET.ROOT", str(env["folder"]),
                             "DATASET.TRAIN_SUBSET", "2"])
    ds = build_datasets(cfg)
    assert len(ds.train) == 2
    assert [n for n in ds.notes if "TRAIN_SUBSET 2 is smaller than the number of classes (3): 1 classes" in n]
    cfg.DATASET.TRAIN_SUBSET = 3
    ds = build_datasets(cfg)
    assert sorted(ds.train.targets.tolist()) == [0, 1, 2] and not ds.notes


# ------------------------------------------------------------------ 6. SLD.GAMMA beyond the run


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 5)

    def forward(self, x):
        return self.fc(x), {}


def test_sld_warns_when_the_pseudo_teacher_never_switches_on():
    from sldistill.distillers import build_distiller

    cfg = get_defaults()
    cfg.DISTILLER.TYPE = "SLD"
    cfg.SOLVER.EPOCHS = 10
    with pytest.warns(UserWarning, match=r"SLD.GAMMA = 150 >= SOLVER.EPOCHS 10: .*never switches on") as rec:
        build_distiller(cfg, _Tiny(), _Tiny())
    assert len(rec) == 1 and "\n" not in str(rec[0].message)
    cfg.SLD.GAMMA = 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_distiller(cfg, _Tiny(), _Tiny())


# ------------------------------------------------------------------ 7. top-5 with few classes


@pytest.mark.parametrize("classes", [3, 10])
def test_top5_is_not_reported_as_100_for_few_classes(classes):
    from sldistill.engine.metrics import evaluate

    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(20, classes, generator=g), torch.randint(0, classes, (20,), generator=g)
    batches = [{"image": logits, "target": target}]
    res = evaluate(lambda x: x, batches, torch.device("cpu"))
    if classes < 6:
        assert math.isnan(res["top5"])
    else:
        top5 = logits.topk(5, dim=1).indices.eq(target[:, None]).any(1).float().mean().item() * 100
        assert res["top5"] == pytest.approx(top5)
    assert res["top1"] == pytest.approx((logits.argmax(1) == target).float().mean().item() * 100)


# ------------------------------------------------------------------ 8./9. report


def test_report_interval_is_clipped_to_the_accuracy_range(tmp_path, capsys):
    from sldistill.report import MethodSummary

    s = MethodSummary("kd", 2, 50.0, 56.6, 50.0, 56.6, "", best_values=[10.0, 90.0])
    assert s.best_ci == (0.0, 100.0)
    write_run_folder(tmp_path / "runs" / "s0", 0, [5.0, 10.0])
    write_run_folder(tmp_path / "runs" / "s1", 1, [80.0, 90.0])
    assert run_subcommand(["report", str(tmp_path / "runs"), "--csv", str(tmp_path / "r.csv")]) == 0
    assert "[0.00, 100.00]" in capsys.readouterr().out
    row = next(csv.DictReader(open(tmp_path / "r.csv")))
    assert (row["best_ci_low"], row["best_ci_high"]) == ("0.0000", "100.0000")


def test_report_labels_runs_by_the_models_they_trained(tmp_path, capsys):
    for seed in range(2):
        write_run_folder(tmp_path / "runs" / f"x4_{seed}", seed, [70.0, 71.0 + seed])
        write_run_folder(tmp_path / "runs" / f"r8_{seed}", seed, [60.0, 61.0 + seed], "DISTILLER.STUDENT", "resnet8")
    assert run_subcommand(["report", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "| kd,resnet32x4,resnet8x4 | 2 | 71.50" in out  # the TAG, where it is right
    assert "| kd,resnet32x4,resnet8 | 2 | 61.50" in out
    assert "#1" not in out and "#2" not in out


# ------------------------------------------------------------------ warnings of the start go to the log


def test_warnings_while_building_are_logged_once_as_warning_lines(env, tmp_path, capfd):
    args = [*_args(env, tmp_path / "out"), "DISTILLER.TYPE", "SLD", "DISTILLER.TEACHER", "resnet8",
            "DISTILLER.TEACHER_CKPT", str(env["teacher"])]
    assert main(args) == 0
    out, err = capfd.readouterr()
    log = (tmp_path / "out" / "distill" / "run" / "log.txt").read_text()
    for text in (out, log):
        assert text.count("warning: SLD.GAMMA = 150 >= SOLVER.EPOCHS 1") == 1, text
        assert text.count("warning: dropping the last training batch") == 1  # 17 images, batch 8
    assert "UserWarning" not in err and "never switches on" not in err  # not as a Python warning


def test_image_size_is_refused_where_the_views_have_fixed_sizes(env):
    from sldistill.data import build_datasets

    cfg = load_config(None, ["DATASET.TYPE", "cifar100", "DATASET.ROOT", str(env["data"]), "DATASET.IMAGE_SIZE", "64"])
    with pytest.raises(ValueError, match=r"DATASET.IMAGE_SIZE 64 does not apply to DATASET.TYPE 'cifar100'.*folder"):
        build_datasets(cfg)
    cfg = load_config(None, ["DATASET.TYPE", "folder", "DATASET.ROOT", str(env["folder"]), "DATASET.IMAGE_SIZE", "16"])
    views, _label, _index = build_datasets(cfg).train[0]
    assert views[0].shape == (16, 16, 3)  # H x W x 3 at the asked size
