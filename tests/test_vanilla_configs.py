"""configs/cifar100/vanilla/: one teacher recipe per CIFAR zoo architecture, with the recipe the
published teachers were trained with (240 epochs, batch 64, LR 0.05 or 0.01 for ShuffleNet /
MobileNet, x0.1 at 150/180/210, weight decay 5e-4, momentum 0.9)."""
from __future__ import annotations

from pathlib import Path

import pytest

from sldistill import models
from sldistill.engine.config import load_config
from sldistill.published import experiment_key, lookup

VANILLA = Path(__file__).resolve().parents[1] / "configs" / "cifar100" / "vanilla"
FILES = sorted(VANILLA.glob("*.yaml"))


def test_every_cifar_model_has_a_recipe() -> None:
    assert sorted(p.stem for p in FILES) == sorted(models.available_models("cifar100"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_recipe_values(path: Path) -> None:
    cfg = load_config(path)
    arch = path.stem
    assert cfg.DISTILLER.TYPE == "NONE" and cfg.DISTILLER.STUDENT == arch
    assert arch in models.available_models("cifar100")
    assert cfg.DATASET.TYPE == "cifar100"
    s = cfg.SOLVER
    assert (s.EPOCHS, s.BATCH_SIZE, s.LR_DECAY_STAGES, s.LR_DECAY_RATE) == (240, 64, [150, 180, 210], 0.1)
    assert (s.WEIGHT_DECAY, s.MOMENTUM, s.TYPE, s.SCHEDULER) == (0.0005, 0.9, "SGD", "step")
    assert s.LR == (0.01 if arch.startswith(("Shuffle", "MobileNet")) else 0.05)
    assert cfg.EXPERIMENT.PROJECT == "cifar100" and cfg.EXPERIMENT.TAG == f"vanilla,{arch}"
    assert "published: none" in path.read_text().splitlines()[0] or arch == "resnet8x4"


def test_published_teachers_have_their_number_for_the_report() -> None:
    for name in ("resnet56", "resnet110", "resnet32x4", "wrn_40_2", "vgg13", "ResNet50"):
        key = experiment_key(load_config(VANILLA / f"{name}.yaml"))
        assert key == ("vanilla", "", name, "cifar100")
        entry = lookup(*key)
        assert entry is not None and entry.source == "teachers"
        assert entry.top1 == models.CIFAR_TEACHERS[name].top1
