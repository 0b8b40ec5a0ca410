"""The command line: every distiller trains two iterations through ``sldistill train`` on tiny
generated CIFAR-100 files; eval, configs, error surfacing, SIGTERM through a real process."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import SHARED
from datagen import write_cifar100, write_published_teacher
from sldistill.cli import build_parser, main
from sldistill.distillers import Unreleased, available_distillers, get_distiller_class
from sldistill.engine.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
SEED_CFG = (SHARED or REPO.parent / "shared") / "seed_configs" / "sld" / "cifar100" / "sld" / "res32x4_res8x4.yaml"



@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # the conftest fixture restores the count afterwards


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = write_cifar100(root / "data", n_train=16, n_test=8)
    ckpt = write_published_teacher(root / "teachers", "resnet8")
    return {"root": root, "data": data, "teacher": ckpt}


def _common(env, out: Path, epochs: int = 1) -> list[str]:
    return ["DISTILLER.TEACHER", "resnet8", "DISTILLER.STUDENT", "resnet8",
            "DISTILLER.TEACHER_CKPT", str(env["teacher"]), "DATASET.ROOT", str(env["data"]),
            "DATASET.NUM_WORKERS", "0", "DATASET.TEST.BATCH_SIZE", "8", "SOLVER.BATCH_SIZE", "8",
            "SOLVER.EPOCHS", str(epochs), "LOG.PREFIX", str(out), "LOG.TENSORBOARD", "false",
            "EXPERIMENT.DEVICE", "cpu", "EXPERIMENT.NAME", "run"]


TRAINABLE = [n for n in available_distillers() if not issubclass(get_distiller_class(n), Unreleased)]


@pytest.mark.parametrize("name", TRAINABLE)
def test_every_distiller_trains_two_iterations(env, tmp_path, name, capsys):
    """Over every registered distiller; the published SLD file says SOLVER.TRAINER 'ours', which
    is only an alias now: the views and CRD sampling come from the distiller."""
    out = tmp_path / "out"
    opts = _common(env, out) + ["DISTILLER.TYPE", name]
    if name == "CRD":
        opts += ["CRD.NCE.K", "4"]
    if name == "REVIEWKD":  # the published channels are resnet32x4's; resnet8 has 16/32/64/64
        opts += ["REVIEWKD.IN_CHANNELS", "[16,32,64,64]", "REVIEWKD.OUT_CHANNELS", "[16,32,64,64]"]
    rc = main(["train", "--cfg", str(SEED_CFG), *opts])
    err = capsys.readouterr().err
    assert rc == 0, err
    run = out / "sld_cifar100_baselines" / "run"
    ck = load_checkpoint(run / "latest.pth")
    assert ck["epoch"] == 1 and ck["scheduler"]["last_step"] == 2  # 16 images / batch 8 = two steps
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["epoch"] == 1 and all(v == v for v in rows[0].values() if isinstance(v, float))
    assert (run / "config.yaml").is_file()


def test_dot_trainer_through_cli_and_eval_commands(env, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["train", "--cfg", str(SEED_CFG), *_common(env, out, epochs=2), "DISTILLER.TYPE", "KD",
               "SOLVER.TRAINER", "dot"])
    assert rc == 0, capsys.readouterr().err
    run = out / "sld_cifar100_baselines" / "run"
    text = capsys.readouterr().out
    assert "teacher resnet8: top-1" in text and "best top-1" in text and "last top-1" in text
    summary = json.loads((run / "summary.json").read_text())

    assert main(["eval", "--run", str(run), "--which", "best", "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["top1"] == pytest.approx(summary["best_acc"])

    assert main(["eval", "--model", "resnet8", "--ckpt", str(env["teacher"]), "--cfg", str(SEED_CFG),
                 "DATASET.ROOT", str(env["data"]), "EXPERIMENT.DEVICE", "cpu", "DATASET.NUM_WORKERS", "0",
                 "--json"]) == 0
    res_t = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res_t["top1"] == pytest.approx(summary["teacher_acc"])


def test_resume_flag_continues(env, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["train", "--cfg", str(SEED_CFG), *_common(env, out, epochs=1), "DISTILLER.TYPE", "KD", "SOLVER.TRAINER", "base"]
    assert main(args) == 0
    args2 = ["train", "--cfg", str(SEED_CFG), *_common(env, out, epochs=2), "DISTILLER.TYPE", "KD", "SOLVER.TRAINER", "base", "--resume"]
    assert main(args2) == 0
    text = capsys.readouterr().out
    assert "continuing at epoch 2" in text
    assert load_checkpoint(out / "sld_cifar100_baselines" / "run" / "latest.pth")["epoch"] == 2


@pytest.mark.parametrize("extra, message", [
    (["SOLVER.LRR", "0.1"], "config error: .*SOLVER.LRR: unknown key; closest valid keys: SOLVER.LR"),
    (["SOLVER.AMP", "fp16"], "fp16.*needs a CUDA device"),
    (["SOLVER.SYNC_BN", "true"], "SYNC_BN needs CUDA"),
    (["DISTILLER.TYPE", "KD", "SOLVER.TRAINER", "aug"], "'aug'.*implemented by no release"),
    (["DISTILLER.TYPE", "DKD_aug"], "no published release implements it"),
])
def test_errors_are_one_line_with_nonzero_exit(env, tmp_path, capsys, extra, message):
    rc = main(["train", "--cfg", str(SEED_CFG), *_common(env, tmp_path / "o"), *extra])
    err = capsys.readouterr().err
    assert rc == 2
    assert "Traceback" not in err
    import re

    assert re.search(message, err), err


def test_missing_cfg_file_and_eval_arguments(tmp_path, capsys):
    assert main(["train", "--cfg", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err
    assert main(["eval", "--model", "resnet8"]) == 2
    assert "--ckpt" in capsys.readouterr().err
    assert main(["eval", "--run", str(tmp_path)]) == 2
    assert "config.yaml" in capsys.readouterr().err


def test_configs_lists_shipped_files(capsys):
    assert main(["configs"]) == 0
    out = capsys.readouterr().out
    assert "cifar100" in out and "sld" in out and "resnet32x4_resnet8x4" in out


def test_parser_has_one_function_per_subcommand():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"train", "eval", "configs"} <= set(sub.choices)
    for name in ("train", "eval", "configs"):
        assert sub.choices[name].get_default("func").__name__ == f"cmd_{name}"


def test_sigterm_to_a_real_process_saves_and_exits_cleanly(env, tmp_path):
    out = tmp_path / "out"
    data = write_cifar100(tmp_path / "bigdata", n_train=800, n_test=8)
    cmd = [sys.executable, "-m", "sldistill", "train", "--cfg", str(SEED_CFG), *_common(env, out, epochs=3),
           "DATASET.ROOT", str(data), "DISTILLER.TYPE", "KD", "SOLVER.TRAINER", "base", "--log-interval", "1"]
    envv = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=envv)
    run = out / "sld_cifar100_baselines" / "run"
    deadline = time.time() + 60
    while not (run / "log.txt").is_file() or "teacher resnet8" not in (run / "log.txt").read_text():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr
    assert "stopped by SIGTERM" in stdout
    ck = load_checkpoint(run / "latest.pth")
    assert ck.get("interrupted") or ck["epoch"] >= 1
