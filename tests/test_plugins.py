"""A distiller and a model registered in the user's own module train from the CLI (subprocess),
validate their keys like built-ins, and show in `sldistill methods` and the key reference."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from datagen import write_cifar100, write_published_teacher

PLUGIN = textwrap.dedent('''
    """A user's own method and model, outside the sldistill package."""
    import torch.nn.functional as F
    from torch import nn

    from sldistill import losses
    from sldistill.distillers import Distiller, Key, register
    from sldistill.models import register_model


    @register("TINYKD")
    class TinyKD(Distiller):
        """KD at a fixed temperature (a plugin of the tests)."""

        config = {
            "TINYKD.T": Key(2.0, "Temperature of the plugin's KD term.", gt=0),
            "TINYKD.WEIGHT": Key(0.5, "Weight of the plugin's KD term.", ge=0),
        }

        def forward_train(self, views, target, epoch, **extras):
            logits, _ = self.student(views[0])
            (t_logits, _), = self.teacher_forward(views[:1], features=False)
            kd = losses.kd(logits, t_logits, self.cfg.TINYKD.T)
            return logits, {"loss_ce": F.cross_entropy(logits, target), "loss_kd": self.cfg.TINYKD.WEIGHT * kd}


    class _Tiny(nn.Module):
        def __init__(self, num_classes):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.fc = nn.Linear(8, num_classes)

        def forward(self, x):
            f = self.conv(x).relu()
            pooled = f.mean((2, 3))
            return self.fc(pooled), {"feats": [f], "preact_feats": [f], "pooled_feat": pooled}


    @register_model("tiny_plugin_net")
    def tiny_plugin_net(num_classes=100):
        return _Tiny(num_classes)
''')


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("plugin")
    pkg = root / "userpkg"
    pkg.mkdir()
    (pkg / "my_methods.py").write_text(PLUGIN)
    data = write_cifar100(root / "data", n_train=16, n_test=8)
    teacher = write_published_teacher(root / "teachers", "resnet8")
    env = {**os.environ, "PYTHONPATH": str(pkg), "SLDISTILL_DEBUG": ""}
    return {"root": root, "data": data, "teacher": teacher, "env": env}


def _run(setup, *args):
    return subprocess.run([sys.executable, "-m", "sldistill", *args], capture_output=True, text=True,
                          env=setup["env"], cwd=setup["root"], timeout=300)


def _train_args(setup, out: Path) -> list[str]:
    return ["DISTILLER.TYPE", "TINYKD", "DISTILLER.TEACHER", "resnet8", "DISTILLER.TEACHER_CKPT",
            str(setup["teacher"]), "DISTILLER.STUDENT", "tiny_plugin_net", "DATASET.ROOT", str(setup["data"]),
            "DATASET.NUM_WORKERS", "0", "SOLVER.BATCH_SIZE", "8", "DATASET.TEST.BATCH_SIZE", "8",
            "SOLVER.EPOCHS", "1", "LOG.PREFIX", str(out), "LOG.TENSORBOARD", "false", "EXPERIMENT.DEVICE", "cpu",
            "EXPERIMENT.NAME", "run", "TINYKD.WEIGHT", "0.25"]


def test_plugin_method_and_model_train_from_the_cli(setup):
    out = setup["root"] / "out_flag"
    res = _run(setup, "train", "--plugin", "my_methods", *_train_args(setup, out))
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "distill" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and "train_loss_kd" in rows[0]
    saved = (out / "distill" / "run" / "config.yaml").read_text()
    assert "TINYKD:" in saved and "WEIGHT: 0.25" in saved and "my_methods" in saved


def test_plugin_from_the_config_key(setup):
    cfg = setup["root"] / "plugin.yaml"
    cfg.write_text("EXPERIMENT:\n  PLUGINS: [my_methods]\nDISTILLER:\n  TYPE: TINYKD\n")
    out = setup["root"] / "out_key"
    res = _run(setup, "train", "--cfg", str(cfg), *_train_args(setup, out)[2:])
    assert res.returncode == 0, res.stderr[-3000:]
    assert (out / "distill" / "run" / "best.pth").is_file()


def test_plugin_keys_are_validated_like_builtins(setup):
    res = _run(setup, "train", "--plugin", "my_methods", *_train_args(setup, setup["root"] / "bad")[:-2],
               "TINYKD.WEIGHT", "-1")
    assert res.returncode == 2
    assert "TINYKD.WEIGHT" in res.stderr and ">= 0" in res.stderr
    res = _run(setup, "train", "--plugin", "my_methods", *_train_args(setup, setup["root"] / "bad"),
               "TINYKD.WIEGHT", "1")
    assert res.returncode == 2 and "closest valid keys: TINYKD.WEIGHT" in res.stderr


def test_without_the_plugin_the_name_is_unknown_and_the_message_says_how(setup):
    res = _run(setup, "train", *_train_args(setup, setup["root"] / "none"))
    assert res.returncode == 2
    assert "TINYKD" in res.stderr and "--plugin" in res.stderr


def test_a_missing_plugin_module_is_named(setup):
    res = _run(setup, "train", "--plugin", "no_such_module_here", *_train_args(setup, setup["root"] / "x"))
    assert res.returncode == 2 and "no_such_module_here" in res.stderr


def test_plugin_shows_in_methods_listing_and_reference(setup):
    res = _run(setup, "methods", "--plugin", "my_methods", "--keys")
    assert res.returncode == 0, res.stderr
    assert "TINYKD" in res.stdout and "TINYKD.T = 2.0" in res.stdout and "SLD" in res.stdout
    code = ("import my_methods; from sldistill.engine.config.reference import render_method_keys; "
            "print(render_method_keys('TINYKD'))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=setup["env"], timeout=120)
    assert "| `TINYKD.WEIGHT` | float | `0.5` | >= 0 |" in res.stdout
