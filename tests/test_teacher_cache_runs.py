"""The teacher cache through the engine: KD and SLD runs give the same losses and test top-1
with and without it; a mismatching cache and feature distillers are refused; resume works."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from datagen import write_cifar100, write_published_teacher
from sldistill.engine.config import load_config
from sldistill.engine.run import train


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("tc")
    data = write_cifar100(root / "data", n_train=16, n_test=8)
    teacher = write_published_teacher(root / "teachers", "resnet8")
    return {"root": root, "data": data, "teacher": teacher}


def _cfg(setup, method: str, name: str, *extra: str):
    return load_config(None, [
        "DISTILLER.TYPE", method, "DISTILLER.TEACHER", "resnet8", "DISTILLER.STUDENT", "resnet8",
        "DISTILLER.TEACHER_CKPT", str(setup["teacher"]), "DATASET.ROOT", str(setup["data"]),
        "DATASET.NUM_WORKERS", "0", "DATASET.TEST.BATCH_SIZE", "8", "SOLVER.BATCH_SIZE", "8",
        "SOLVER.EPOCHS", "2", "LOG.PREFIX", str(setup["root"] / "out"), "LOG.TENSORBOARD", "false",
        "LOG.PROGRESS", "false", "EXPERIMENT.DEVICE", "cpu", "EXPERIMENT.NAME", name,
        "EXPERIMENT.DETERMINISTIC", "true", "SLD.GAMMA", "1", *extra])


@pytest.fixture(scope="module")
def cache(setup):
    from sldistill.teacher_cache import build_cache

    return build_cache(_cfg(setup, "KD", "build"), setup["root"] / "teacher.tcache", progress=False)


def _rows(setup, name: str) -> list[dict]:
    path = setup["root"] / "out" / "distill" / name / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("method", ["KD", "SLD"])
def test_runs_with_and_without_the_cache_agree(setup, cache, method):
    live = train(_cfg(setup, method, f"{method}_live"))
    cached = train(_cfg(setup, method, f"{method}_cached", "DISTILLER.TEACHER_CACHE", str(cache)))
    assert live.status == cached.status == "finished"
    a, b = _rows(setup, f"{method}_live"), _rows(setup, f"{method}_cached")
    assert [r["test_acc"] for r in a] == [r["test_acc"] for r in b]
    for ra, rb in zip(a, b):
        for key in [k for k in ra if k.startswith("train_loss")]:
            assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=1e-6), (method, ra["epoch"], key)
    log = (setup["root"] / "out" / "distill" / f"{method}_cached" / "log.txt").read_text()
    assert "teacher cache:" in log


def test_a_cache_of_another_configuration_is_refused(setup, cache):
    with pytest.raises(ValueError, match="TRAIN_SUBSET|train_subset|subset"):
        train(_cfg(setup, "KD", "other", "DISTILLER.TEACHER_CACHE", str(cache), "DATASET.TRAIN_SUBSET", "8"))
    assert not (setup["root"] / "out" / "distill" / "other").exists()


def test_feature_distillers_say_the_cache_does_not_apply(setup, cache):
    with pytest.raises(ValueError, match="reads the teacher's features: the cache does not apply"):
        train(_cfg(setup, "AT", "at", "DISTILLER.TEACHER_CACHE", str(cache)))


def test_resume_with_the_cache(setup, cache):
    full = train(_cfg(setup, "KD", "resume_full", "DISTILLER.TEACHER_CACHE", str(cache)))
    part = train(_cfg(setup, "KD", "resume_part", "DISTILLER.TEACHER_CACHE", str(cache)), stop_after_epoch=1)
    assert part.status == "stopped"
    resumed = train(_cfg(setup, "KD", "resume_part", "DISTILLER.TEACHER_CACHE", str(cache)), resume=True)
    assert resumed.best_acc == full.best_acc
    assert [r["test_acc"] for r in _rows(setup, "resume_part")] == [r["test_acc"] for r in _rows(setup, "resume_full")]


def test_sweep_builds_a_cache_where_it_pays_and_reuses_it(setup, tmp_path, capsys):
    """2 methods x 100 epochs read 200 weak-view epochs: more than the 162 a cache costs."""
    from types import SimpleNamespace

    from sldistill.engine.config import save_config
    from sldistill.sweep import run_sweep

    cfg_file = tmp_path / "kd.yaml"
    save_config(_cfg(setup, "KD", "unused"), cfg_file)
    seen = []

    def fake_train(cfg, **flags):
        seen.append(str(cfg.DISTILLER.TEACHER_CACHE))
        return SimpleNamespace(status="finished")

    common = ["SOLVER.EPOCHS", "100", "DISTILLER.TEACHER_ROOT", str(tmp_path / "teachers"), "EXPERIMENT.NAME", ""]
    out = tmp_path / "sweep"
    with pytest.raises(FileNotFoundError, match="metrics"):  # the fake runs write no metrics: the report fails
        run_sweep([cfg_file, cfg_file], 1, [*common], out=out, labels=["a", "b"], train_fn=fake_train)
    text = capsys.readouterr().out
    assert "teacher cache built" in text and "saving" in text
    assert len(seen) == 2 and seen[0] == seen[1] and seen[0].endswith(".tcache") and Path(seen[0]).is_file()
    seen.clear()
    with pytest.raises(FileNotFoundError, match="metrics"):
        run_sweep([cfg_file, cfg_file], 1, [*common], out=out, labels=["a", "b"], train_fn=fake_train)
    assert "teacher cache reused" in capsys.readouterr().out and len(set(seen)) == 1
    # a short sweep: not worth it, and it says so
    seen.clear()
    with pytest.raises(FileNotFoundError, match="metrics"):
        run_sweep([cfg_file], 1, ["SOLVER.EPOCHS", "2", "EXPERIMENT.NAME", ""], out=tmp_path / "short",
                  labels=["a"], train_fn=fake_train)
    assert "no teacher cache" in capsys.readouterr().out and seen == [""]
