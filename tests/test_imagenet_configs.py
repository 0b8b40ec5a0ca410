"""The published ImageNet configs (mdistiller's and SLD's) build with the real ImageNet zoo
and take one training step: right models, connectors sized from them, finite losses.

Teachers get random weights written as checkpoint files (no ImageNet weights here); the
batch is two 224x224 images, so this checks wiring and shapes, not accuracy.
"""
import math

import pytest
import torch

from conftest import SHARED, needs_shared
from sldistill import models
from sldistill.engine.config import load_config
from sldistill.engine.run import build_distiller_for

pytestmark = needs_shared

CASES = [
    ("mdistiller", "r34_r18", "at"), ("mdistiller", "r34_r18", "crd"), ("mdistiller", "r34_r18", "reviewkd"),
    ("mdistiller", "r34_r18", "dkd"), ("mdistiller", "r50_mv1", "ofd"), ("mdistiller", "r50_mv1", "reviewkd"),
    ("mdistiller", "r50_mv1", "crd"), ("sld", "r34_r18", "sld"), ("sld", "r50_mv2", "sld"), ("sld", "r50_mv2", "mlkd"),
]


@pytest.fixture(scope="module")
def teacher_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet_teachers")
    files = {}
    for name in ("ResNet34", "ResNet50"):
        torch.manual_seed(0)
        path = root / f"{name}.pth"
        torch.save(models.create(name, num_classes=1000, dataset="imagenet").state_dict(), path)
        files[name] = path
    return files


@pytest.mark.parametrize("codebase,pair,method", CASES, ids=["/".join(c) for c in CASES])
def test_published_imagenet_config_builds_and_steps(codebase, pair, method, teacher_files):
    torch.set_num_threads(2)
    path = SHARED / "seed_configs" / codebase / "imagenet" / pair / f"{method}.yaml"
    cfg = load_config(path)
    assert cfg.DATASET.TYPE == "imagenet"
    cfg.DISTILLER.TEACHER_CKPT = str(teacher_files[cfg.DISTILLER.TEACHER])
    distiller = build_distiller_for(cfg, num_classes=1000, num_train=64)
    if cfg.DISTILLER.STUDENT == "MobileNetV2":  # the published name of the MobileNetV1 student
        assert type(distiller.student).__name__ == "MobileNetV1"
    distiller.train()
    assert distiller.teacher.training == (not distiller.teacher_eval)  # the released OFD trains its teacher's BN
    torch.manual_seed(1)
    views = [torch.randn(2, 3, 224, 224) for _ in range(distiller.num_views)]
    target = torch.tensor([3, 7])
    extras = {}
    if "index" in distiller.needs:
        extras["index"] = torch.tensor([0, 1])
    if "contrast_index" in distiller.needs:
        extras["contrast_index"] = torch.randint(0, 64, (2, int(cfg.CRD.NCE.K) + 1))
    logits, terms = distiller(views, target, epoch=1, **extras)
    assert logits.shape == (2, 1000)
    total = sum(terms.values())
    assert math.isfinite(float(total.detach()))
    total.backward()
    assert all(p.grad is None for p in distiller.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in distiller.student.parameters())
