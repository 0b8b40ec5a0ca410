"""Optimizer and LR-schedule builders, and the DOT optimizer."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from sldistill.engine.config import get_defaults
from sldistill.optim import DOT, LRSchedule, build_optimizer, build_scheduler, split_terms


def _cfg(**solver):
    cfg = get_defaults()
    for k, v in solver.items():
        cfg.SOLVER[k] = v
    return cfg


def _lrs(sched: LRSchedule, n: int) -> list[float]:
    out = []
    for _ in range(n):
        out.append(sched.get_last_lr()[0])
        sched.step()
    return out


def test_step_schedule_decays_after_the_stage_epoch():
    # published rule: epochs count from 1, decay when epoch > stage
    cfg = _cfg(LR=0.1, LR_DECAY_STAGES=[2, 3], LR_DECAY_RATE=0.1, EPOCHS=4)
    opt = build_optimizer(cfg, [nn.Parameter(torch.zeros(1))])
    lrs = _lrs(build_scheduler(cfg, opt, steps_per_epoch=2), 8)
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_warmup_then_cosine():
    cfg = _cfg(LR=1.0, SCHEDULER="cosine", WARMUP_EPOCHS=1, EPOCHS=3)
    opt = build_optimizer(cfg, [nn.Parameter(torch.zeros(1))])
    lrs = _lrs(build_scheduler(cfg, opt, steps_per_epoch=4), 12)
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    # cosine over the 8 post-warm-up steps, starting at step 4 from the full rate
    assert lrs[4] == pytest.approx(1.0)
    assert lrs[8] == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))


def test_warmup_with_step_schedule_multiplies():
    cfg = _cfg(LR=0.2, WARMUP_EPOCHS=0.5, EPOCHS=2, LR_DECAY_STAGES=[1])
    opt = build_optimizer(cfg, [nn.Parameter(torch.zeros(1))])
    lrs = _lrs(build_scheduler(cfg, opt, steps_per_epoch=4), 8)
    assert lrs == pytest.approx([0.1, 0.2, 0.2, 0.2, 0.02, 0.02, 0.02, 0.02])


def test_scheduler_state_roundtrip():
    cfg = _cfg(LR=0.1, SCHEDULER="cosine", EPOCHS=2)
    p = nn.Parameter(torch.zeros(1))
    s1 = build_scheduler(cfg, build_optimizer(cfg, [p]), 5)
    _lrs(s1, 7)
    opt2 = build_optimizer(cfg, [nn.Parameter(torch.zeros(1))])
    s2 = build_scheduler(cfg, opt2, 5)
    s2.load_state_dict(s1.state_dict())
    assert s2.get_last_lr() == pytest.approx(s1.get_last_lr())
    assert opt2.param_groups[0]["lr"] == pytest.approx(s1.get_last_lr()[0])


def test_bad_solver_values_are_refused():
    p = [nn.Parameter(torch.zeros(1))]
    with pytest.raises(ValueError, match="SOLVER.TYPE 'ADAM'.*SGD, DOT"):
        build_optimizer(_cfg(TYPE="Adam"), p)
    opt = build_optimizer(_cfg(), p)
    with pytest.raises(ValueError, match="SCHEDULER 'poly'"):
        LRSchedule(opt, 3, 2, kind="poly")
    with pytest.raises(ValueError, match="NESTEROV.*DOT"):
        build_optimizer(_cfg(TYPE="DOT", NESTEROV=True), p)


def test_sgd_built_as_configured():
    opt = build_optimizer(_cfg(LR=0.3, MOMENTUM=0.8, WEIGHT_DECAY=5e-4, NESTEROV=True), [nn.Parameter(torch.zeros(1))])
    assert isinstance(opt, torch.optim.SGD)
    g = opt.param_groups[0]
    assert (g["lr"], g["momentum"], g["weight_decay"], g["nesterov"]) == (0.3, 0.8, 5e-4, True)
    dot = build_optimizer(_cfg(TYPE="DOT", MOMENTUM=0.9, DOT={"DELTA": 0.05}), [nn.Parameter(torch.zeros(1))])
    assert isinstance(dot, DOT) and dot.param_groups[0]["delta"] == 0.05


def test_split_terms():
    t = {"loss_ce": torch.tensor(1.0), "loss_kd": torch.tensor(2.0), "loss_pseudo": torch.tensor(3.0)}
    ce, kd = split_terms(t)
    assert ce.item() == 1.0 and kd.item() == 5.0
    with pytest.raises(ValueError, match="loss_ce"):
        split_terms({"loss_kd": torch.tensor(1.0)})


class _Two(nn.Module):
    """Shared layer reached by both losses, a head only the CE loss reaches, one only KD reaches."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.shared = nn.Linear(4, 3)
        self.ce_head = nn.Linear(3, 2)
        self.kd_head = nn.Linear(3, 2)

    def losses(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.tanh(self.shared(x))
        return self.ce_head(h).pow(2).mean(), (self.kd_head(h) - 1).pow(2).mean()


def test_dot_with_zero_delta_equals_sgd_on_the_sum():
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    a, b = _Two(), _Two()
    sgd = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    dot = DOT(b.parameters(), lr=0.1, momentum=0.9, delta=0.0, weight_decay=1e-2)
    for _ in range(4):
        sgd.zero_grad()
        ce, kd = a.losses(x)
        (ce + kd).backward()
        sgd.step()
        ce, kd = b.losses(x)
        dot.step_terms(ce, kd)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-7)


def test_dot_momenta_follow_the_published_rule():
    # one scalar weight reached by both losses: task buffer with m - delta, KD buffer with m + delta
    w = nn.Parameter(torch.tensor(1.0))
    only_kd = nn.Parameter(torch.tensor(2.0))
    lr, m, d, wd = 0.1, 0.9, 0.075, 0.01
    opt = DOT([w, only_kd], lr=lr, momentum=m, delta=d, weight_decay=wd)
    wv, kv = 1.0, 2.0
    tb = kb = kb2 = None
    for _ in range(3):
        ce = 3 * w  # d/dw = 3
        kd = w * w + only_kd * only_kd  # d/dw = 2w, d/dk = 2k
        g_ce, g_kd, g_k = 3 + wd * wv, 2 * wv, 2 * kv + wd * kv
        tb = g_ce if tb is None else (m - d) * tb + g_ce
        kb = g_kd if kb is None else (m + d) * kb + g_kd
        kb2 = g_k if kb2 is None else m * kb2 + g_k
        wv -= lr * (tb + kb)
        kv -= lr * kb2
        opt.step_terms(ce, kd)
        assert w.item() == pytest.approx(wv, rel=1e-6)
        assert only_kd.item() == pytest.approx(kv, rel=1e-6)


def test_dot_state_dict_roundtrip():
    x = torch.randn(5, 4)
    a = _Two()
    opt = DOT(a.parameters(), lr=0.1, momentum=0.9, delta=0.075)
    opt.step_terms(*a.losses(x))
    b = _Two()
    b.load_state_dict(a.state_dict())
    opt2 = DOT(b.parameters(), lr=0.1, momentum=0.9, delta=0.075)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))  # as if read from disk
    opt.step_terms(*a.losses(x))
    opt2.step_terms(*b.losses(x))
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
