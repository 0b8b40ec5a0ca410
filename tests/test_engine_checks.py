"""Checks the engine runs before training starts."""
import pytest

from sldistill.engine.config import get_defaults
from sldistill.engine.run import build_distiller_for


def test_class_count_mismatch_of_a_user_model_is_caught_before_training():
    cfg = get_defaults()
    cfg.DISTILLER.TYPE = "NONE"
    cfg.DISTILLER.STUDENT = "user_models:ten_class_net"
    with pytest.raises(ValueError, match=r"outputs 10 classes but the dataset has 100"):
        build_distiller_for(cfg, num_classes=100)
    d = build_distiller_for(cfg, num_classes=10)  # the matching count builds
    assert d.teacher is None
