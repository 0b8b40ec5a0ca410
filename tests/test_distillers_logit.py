"""Logit distillers: reference vectors through the classes, config keys, contract."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import loss_vector_cases
from sldistill.distillers import available_distillers, build_distiller, get_distiller_class
from sldistill.engine.config import get_defaults


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread avoids OpenMP contention on the shared 2-core runners
    (tests/conftest.py restores the previous setting)."""
    torch.set_num_threads(1)

CASES = loss_vector_cases()


class StandIn(nn.Module):
    """Returns the given logits, in turn, on each call (ignoring the input image)."""

    def __init__(self, outputs: list[torch.Tensor]) -> None:
        super().__init__()
        self.outputs = outputs
        self.calls = 0

    def forward(self, x: torch.Tensor):
        out = self.outputs[self.calls % len(self.outputs)]
        self.calls += 1
        return out, {}


class Tiny(nn.Module):
    def __init__(self, c: int = 5) -> None:
        super().__init__()
        self.fc = nn.Linear(3, c)
        self.bn = nn.BatchNorm1d(c)

    def forward(self, x: torch.Tensor):
        return self.bn(self.fc(x)), {}


def _t(x, grad=False):
    return torch.tensor(x, dtype=torch.float64, requires_grad=grad)


def cfg_for(case: dict):
    cfg = get_defaults()
    p, m = case["params"], case["method"]
    cfg.DISTILLER.TYPE = {"kd": "KD", "dkd": "DKD", "mlkd": "MLKD", "sld": "SLD"}[m]
    proc = p.get("processor", "none")
    if proc == "zscore":
        cfg.EXPERIMENT.LOGIT_STAND = True  # the published key
    elif m != "sld":
        cfg.DISTILLER.LOGIT_PROCESSOR = proc
    if m in ("kd", "mlkd"):
        cfg.KD.TEMPERATURE = p["temperature"]
        cfg.KD.LOSS.CE_WEIGHT = p["ce_weight"]
        cfg.KD.LOSS.KD_WEIGHT = p["kd_weight"]
    elif m == "dkd":
        cfg.DKD.update(CE_WEIGHT=p["ce_weight"], ALPHA=p["alpha"], BETA=p["beta"], T=p["temperature"], WARMUP=p["warmup"])
    else:
        cfg.KD.LOSS.CE_WEIGHT = p["ce_weight"]
        cfg.KD.LOSS.KD_WEIGHT = p["kd_weight"]
        cfg.SLD.TEMPERATURES = list(p["temperatures"])
        cfg.SLD.GAMMA = p["gamma"]
    return cfg


def run_case(case: dict, fuse: bool = False):
    inp = case["inputs"]
    y = torch.tensor(inp["target"])
    cfg = cfg_for(case)
    cfg.SOLVER.FUSE_STUDENT_VIEWS = fuse
    if case["method"] in ("kd", "dkd"):
        s = _t(inp["student"], True)
        students, teacher_out, grads = [s], [_t(inp["teacher"])], [(s, "grad_student")]
    else:
        sw, ss = _t(inp["student_weak"], True), _t(inp["student_strong"], True)
        students = [torch.cat([sw, ss])] if fuse else [sw, ss]
        teacher_out = [torch.cat([_t(inp["teacher_weak"]), _t(inp["teacher_strong"])])]
        grads = [(sw, "grad_student_weak"), (ss, "grad_student_strong")]
    distiller = build_distiller(cfg, StandIn(students), StandIn(teacher_out))
    distiller.train()
    b = len(inp["target"])
    views = [torch.zeros(b, 3, 4, 4) for _ in range(distiller.num_views)]
    logits, terms = distiller(views, y, case["epoch"])
    assert torch.equal(logits.detach(), grads[0][0].detach())
    assert all(k.startswith("loss_") for k in terms) and "loss_ce" in terms
    total = sum(terms.values())
    total.backward()
    return total, grads


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_reference_vectors_through_distillers(case):
    total, grads = run_case(case)
    exp = case["expected"]
    assert abs(total.item() - exp["total"]) <= 1e-8 * abs(exp["total"])
    for tensor, key in grads:
        ref = _t(exp[key])
        assert (tensor.grad - ref).abs().max() <= 1e-8 * ref.abs().max(), key


def test_fused_student_views_same_result():
    case = next(c for c in CASES if c["method"] == "sld" and c["epoch"] > 150)
    total, grads = run_case(case, fuse=True)
    assert abs(total.item() - case["expected"]["total"]) <= 1e-8 * abs(case["expected"]["total"])
    assert torch.allclose(grads[1][0].grad, _t(case["expected"]["grad_student_strong"]), rtol=1e-8)


def test_registry_names_and_views():
    names = set(available_distillers())
    assert {"NONE", "KD", "DKD", "MLKD", "KD_ours", "SLD"} <= names
    assert get_distiller_class("KD_ours") is get_distiller_class("MLKD")
    views = {n: get_distiller_class(n).num_views for n in ("NONE", "KD", "DKD", "MLKD", "SLD")}
    assert views == {"NONE": 1, "KD": 1, "DKD": 1, "MLKD": 2, "SLD": 2}


@pytest.mark.parametrize("name", ["KD", "DKD", "MLKD", "SLD"])
def test_teacher_frozen_in_eval_and_learnable_parameters(name):
    cfg = get_defaults()
    cfg.DISTILLER.TYPE = name
    student, teacher = Tiny(), Tiny()
    d = build_distiller(cfg, student, teacher)
    d.train()
    assert d.student.training and not d.teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    ids = {id(p) for p in d.learnable_parameters()}
    assert ids == {id(p) for p in student.parameters()}
    torch.manual_seed(0)
    views = [torch.randn(6, 3) for _ in range(d.num_views)]
    logits, terms = d(views, torch.randint(0, 5, (6,)), 200)
    assert logits.shape == (6, 5)
    sum(terms.values()).backward()
    assert student.fc.weight.grad is not None and teacher.fc.weight.grad is None
    assert teacher.bn.num_batches_tracked.item() == 0  # eval mode: running stats untouched


def test_none_is_cross_entropy_only_without_teacher():
    cfg = get_defaults()
    s = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3])
    d = build_distiller(cfg, StandIn([s]), None)
    logits, terms = d.train()([torch.zeros(4, 3)], y, 1)
    assert list(terms) == ["loss_ce"] and torch.allclose(terms["loss_ce"], F.cross_entropy(s, y))


def test_dkd_warmup_and_zero_warmup():
    cfg = get_defaults()
    cfg.DISTILLER.TYPE = "DKD"
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    y = torch.tensor([0, 1, 2, 3])
    d = build_distiller(cfg, StandIn([s]), StandIn([t])).train()
    k5 = d([torch.zeros(4, 3)], y, 5)[1]["loss_kd"]
    k40 = d([torch.zeros(4, 3)], y, 40)[1]["loss_kd"]
    assert torch.allclose(k5 * 4, k40)
    cfg.DKD.WARMUP = 0
    d0 = build_distiller(cfg, StandIn([s]), StandIn([t])).train()
    assert torch.allclose(d0([torch.zeros(4, 3)], y, 1)[1]["loss_kd"], k40)


def _sld_terms(cfg, epoch):
    g = torch.Generator().manual_seed(2)
    sw, ss, tw, ts = (torch.randn(6, 8, generator=g) for _ in range(4))
    d = build_distiller(cfg, StandIn([sw, ss]), StandIn([torch.cat([tw, ts])])).train()
    return d([torch.zeros(6, 3)] * 2, torch.arange(6), epoch)[1]


def test_sld_gamma_fraction_and_processor_keys():
    cfg = get_defaults()
    cfg.DISTILLER.TYPE = "SLD"
    cfg.SOLVER.EPOCHS = 10
    cfg.SLD.GAMMA_FRACTION = 0.5  # gamma = 5
    assert _sld_terms(cfg, 5)["loss_pseudo"] == 0
    on = _sld_terms(cfg, 6)
    assert on["loss_pseudo"] > 0
    cfg.SLD.STUDENT_PROCESSOR = "none"
    assert _sld_terms(cfg, 6)["loss_pseudo"] == 0
    cfg.SLD.TEACHER_PROCESSOR = "sort"
    assert not torch.allclose(_sld_terms(cfg, 6)["loss_kd"], on["loss_kd"])


def test_config_processor_rules():
    cfg = get_defaults()
    cfg.DISTILLER.TYPE = "KD"
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    y = torch.tensor([0, 1, 2, 3])
    cfg.DISTILLER.LOGIT_PROCESSOR = "sort"
    cfg.EXPERIMENT.LOGIT_STAND = True
    with pytest.raises(ValueError, match="LOGIT_STAND.*'sort'"):
        build_distiller(cfg, StandIn([s]), StandIn([t]))
    cfg.DISTILLER.LOGIT_PROCESSOR = "zscore"
    assert build_distiller(cfg, StandIn([s]), StandIn([t])).processor == "zscore"
    cfg.EXPERIMENT.LOGIT_STAND = False
    cfg.DISTILLER.LOGIT_PROCESSOR = "flip"
    with pytest.raises(ValueError, match="DISTILLER.LOGIT_PROCESSOR must be one of none, sort, swap, zscore"):
        build_distiller(cfg, StandIn([s]), StandIn([t]))
    cfg.DISTILLER.LOGIT_PROCESSOR = "swap"
    d = build_distiller(cfg, StandIn([s]), StandIn([t])).train()
    sorted_kd = d([torch.zeros(4, 3)], y, 1)[1]["loss_kd"]
    cfg.DISTILLER.LOGIT_PROCESSOR = "none"
    plain_kd = build_distiller(cfg, StandIn([s]), StandIn([t])).train()([torch.zeros(4, 3)], y, 1)[1]["loss_kd"]
    assert not torch.allclose(sorted_kd, plain_kd)
    cfg.DISTILLER.TYPE = "SLD"
    cfg.DISTILLER.LOGIT_PROCESSOR = "sort"
    with pytest.raises(ValueError, match="SLD.TEACHER_PROCESSOR"):
        build_distiller(cfg, StandIn([s]), StandIn([t]))
    cfg.DISTILLER.LOGIT_PROCESSOR = "none"
    cfg.SLD.TEACHER_PROCESSOR = "swapped"  # a config that skipped validation: the loss refuses it
    d = build_distiller(cfg, StandIn([s, s]), StandIn([torch.cat([t, t])])).train()
    with pytest.raises(ValueError, match="teacher_processor must be one of"):
        d([torch.zeros(4, 3)] * 2, y, 1)


def test_mlkd_clean_key_and_missing_view():
    cfg = get_defaults()
    cfg.DISTILLER.TYPE = "KD_ours"
    g = torch.Generator().manual_seed(3)
    sw, ss, tw, ts = (torch.randn(6, 8, generator=g) for _ in range(4))
    y = torch.arange(6)

    def total(clean):
        cfg.MLKD.CLEAN = clean
        d = build_distiller(cfg, StandIn([sw, ss]), StandIn([torch.cat([tw, ts])])).train()
        return sum(d([torch.zeros(6, 3)] * 2, y, 1)[1].values())

    assert not torch.allclose(total(True), total(False))
    d = build_distiller(cfg, StandIn([sw, ss]), StandIn([torch.cat([tw, ts])])).train()
    with pytest.raises(ValueError, match="needs a list of 2 view"):
        d([torch.zeros(6, 3)], y, 1)
