"""Feature distillers: the config declarations, OFD's teacher mode and the FitNet/VID probe
mode (the released side effects on BatchNorm statistics and their keys)."""
from __future__ import annotations

import pytest
import torch
from test_distillers_feature import FEATURE_TYPES, SIZE, TinyNet, make, step_loss, tiny_cfg

from sldistill.distillers import get_distiller_class
from sldistill.distillers.connectors import probe_pair

#: the keys each distiller declares (the published keys plus the added ones)
DECLARED = {
    "FITNET": ["HINT_LAYER", "INPUT_SIZE", "PROBE_TRAIN_MODE", "LOSS.CE_WEIGHT", "LOSS.FEAT_WEIGHT"],
    "AT": ["P", "LOSS.CE_WEIGHT", "LOSS.FEAT_WEIGHT"],
    "NST": ["LOSS.CE_WEIGHT", "LOSS.FEAT_WEIGHT"],
    "PKT": ["LOSS.CE_WEIGHT", "LOSS.FEAT_WEIGHT"],
    "KDSVD": ["K", "LOSS.CE_WEIGHT", "LOSS.FEAT_WEIGHT"],
    "OFD": ["CONNECTOR.KERNEL_SIZE", "TEACHER_EVAL", "LOSS.CE_WEIGHT", "LOSS.FEAT_WEIGHT"],
    "RKD": ["DISTANCE_WEIGHT", "ANGLE_WEIGHT", "PDIST.EPSILON", "PDIST.SQUARED", "LOSS.CE_WEIGHT",
            "LOSS.FEAT_WEIGHT"],
    "VID": ["EPS", "INIT_PRED_VAR", "INPUT_SIZE", "PROBE_TRAIN_MODE", "LOSS.CE_WEIGHT", "LOSS.FEAT_WEIGHT"],
    "SP": ["LOSS.CE_WEIGHT", "LOSS.FEAT_WEIGHT"],
    "CRD": ["MODE", "FEAT.DIM", "FEAT.STUDENT_DIM", "FEAT.TEACHER_DIM", "NCE.K", "NCE.MOMENTUM",
            "NCE.TEMPERATURE", "LOSS.CE_WEIGHT", "LOSS.FEAT_WEIGHT"],
    "REVIEWKD": ["CE_WEIGHT", "REVIEWKD_WEIGHT", "WARMUP_EPOCHS", "SHAPES", "OUT_SHAPES", "IN_CHANNELS",
                 "OUT_CHANNELS", "MAX_MID_CHANNEL", "STU_PREACT"],
}

#: released feature weights (the CE weight is 1.0 everywhere)
FEAT_WEIGHTS = {"FITNET": 100.0, "AT": 1000.0, "NST": 50.0, "PKT": 30000.0, "KDSVD": 1.0, "OFD": 0.001,
                "RKD": 1.0, "VID": 1.0, "SP": 3000.0, "CRD": 0.8}


# ------------------------------------------------------------------ declarations
@pytest.mark.parametrize("kind", FEATURE_TYPES)
def test_declared_keys_valid_and_in_own_section(kind):
    config = get_distiller_class(kind).config
    assert sorted(config) == sorted(f"{kind}.{k}" for k in DECLARED[kind])
    for name, key in config.items():
        assert key.help and "\n" not in key.help, name
        assert key.problem(key.coerce(key.default)) is None, name
    if kind in FEAT_WEIGHTS:
        assert config[f"{kind}.LOSS.CE_WEIGHT"].default == 1.0
        assert config[f"{kind}.LOSS.FEAT_WEIGHT"].default == FEAT_WEIGHTS[kind]
        assert config[f"{kind}.LOSS.FEAT_WEIGHT"].kind == "float"


def test_declared_constraints():
    crd = get_distiller_class("CRD")
    assert crd.needs == ("index", "contrast_index")
    assert crd.config["CRD.MODE"].choices == ("exact", "relax")
    assert crd.config["CRD.MODE"].problem("other") is not None
    for name in ("CRD.NCE.K", "CRD.NCE.TEMPERATURE", "CRD.FEAT.DIM"):
        assert crd.config[name].problem(0) is not None and crd.config[name].problem(1) is None, name
    rkd = get_distiller_class("RKD").config
    assert rkd["RKD.DISTANCE_WEIGHT"].kind == rkd["RKD.ANGLE_WEIGHT"].kind == "float"
    assert rkd["RKD.DISTANCE_WEIGHT"].coerce(25) == 25.0
    review = get_distiller_class("REVIEWKD").config
    for name in ("SHAPES", "OUT_SHAPES", "IN_CHANNELS", "OUT_CHANNELS"):
        assert review[f"REVIEWKD.{name}"].problem([1, 0, 4]) is not None, name
    for kind in ("FITNET", "VID"):
        size = get_distiller_class(kind).config[f"{kind}.INPUT_SIZE"]
        assert size.default == [32, 32] and size.problem([32, 32]) is None
        assert size.problem([32, 0]) is not None and size.problem([32]) is not None
        assert get_distiller_class(kind).config[f"{kind}.PROBE_TRAIN_MODE"].default is False
    assert get_distiller_class("OFD").config["OFD.TEACHER_EVAL"].default is False


# ------------------------------------------------------------------ OFD teacher mode
def _bn_running_means(model):
    return [bn.running_mean.clone() for bn in model.bns]


@pytest.mark.parametrize("teacher_eval", [False, True])
def test_ofd_teacher_mode(teacher_eval):
    cfg = tiny_cfg("OFD")
    cfg.OFD.TEACHER_EVAL = teacher_eval
    d = make("OFD", cfg=cfg)
    assert d.teacher_eval is teacher_eval
    d.train()
    assert d.student.training and d.teacher.training == (not teacher_eval)
    before = _bn_running_means(d.teacher)
    _, terms = step_loss(d)
    sum(terms.values()).backward()
    after = _bn_running_means(d.teacher)
    moved = [not torch.equal(a, b) for a, b in zip(before, after)]
    assert all(moved) if not teacher_eval else not any(moved)
    assert all(p.grad is None and not p.requires_grad for p in d.teacher.parameters())  # frozen either way
    d.eval()
    assert not d.teacher.training and not d.student.training


def test_ofd_teacher_mode_changes_the_loss_as_released():
    """A teacher in train mode normalises with batch statistics: a different feature term."""
    losses = []
    for teacher_eval in (False, True):
        cfg = tiny_cfg("OFD")
        cfg.OFD.TEACHER_EVAL = teacher_eval
        d = make("OFD", cfg=cfg)
        d.train()
        losses.append(float(step_loss(d)[1]["loss_kd"].detach()))
    assert losses[0] != pytest.approx(losses[1], rel=1e-6)


# ------------------------------------------------------------------ FitNet / VID probe mode
@pytest.mark.parametrize("kind", ["FITNET", "VID"])
@pytest.mark.parametrize("train_mode", [False, True])
def test_probe_train_mode_moves_bn_statistics(kind, train_mode):
    cfg = tiny_cfg(kind)
    cfg[kind].PROBE_TRAIN_MODE = train_mode
    torch.manual_seed(0)
    student, teacher = TinyNet((4, 8, 16, 16)), TinyNet((8, 16, 32, 32))
    teacher.eval()
    s_before, t_before = _bn_running_means(student), _bn_running_means(teacher)
    d = get_distiller_class(kind)(student, teacher, cfg)
    for before, model in ((s_before, d.student), (t_before, d.teacher)):
        moved = [not torch.equal(a, b) for a, b in zip(before, _bn_running_means(model))]
        assert all(moved) if train_mode else not any(moved)
    assert d.student.training and not d.teacher.training  # modes restored after the probe
    # same connector shapes either way
    ref = make(kind)
    assert [p.shape for p in d.learnable_parameters()] == [p.shape for p in ref.learnable_parameters()]


def test_probe_pair_shares_one_random_image():
    torch.manual_seed(0)
    a, b = TinyNet((4, 8, 16, 16)), TinyNet((4, 8, 16, 16))
    b.load_state_dict(a.state_dict())
    torch.manual_seed(1)
    probe_pair(a, b, (SIZE, SIZE), train_mode=True)
    for bn_a, bn_b in zip(a.bns, b.bns):  # identical models, one image: identical statistics
        torch.testing.assert_close(bn_a.running_mean, bn_b.running_mean)
    assert not torch.equal(a.bns[0].running_mean, torch.zeros_like(a.bns[0].running_mean))
    assert a.training and b.training  # modes restored
