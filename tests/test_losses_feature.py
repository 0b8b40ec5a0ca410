"""Feature losses: released values/gradients (reference vectors), minima, error paths."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sldistill import losses
from sldistill.losses import feature as L


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread avoids oversubscribing CI's 2 cores (conftest restores it)."""
    torch.set_num_threads(1)



def _t(x, grad: bool = False) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64).requires_grad_(grad)


def _functional_loss(case: dict, sf: list, sp: torch.Tensor, tf: list, tp: torch.Tensor) -> torch.Tensor:
    p, d = case["params"], case["distiller"]
    if d == "AT":
        return losses.at(sf[1:], tf[1:], p["P"])
    if d == "NST":
        return losses.nst(sf[1:], tf[1:])
    if d == "SP":
        return losses.sp(sf[-1:], tf[-1:])
    if d == "KDSVD":
        return losses.kdsvd(sf[1:], tf[1:], p["K"])
    if d == "PKT":
        return losses.pkt(sp, tp)
    if d == "RKD":
        return losses.rkd(sp, tp, p["DISTANCE_WEIGHT"], p["ANGLE_WEIGHT"], p["PDIST"]["SQUARED"], p["PDIST"]["EPSILON"])
    raise AssertionError(d)


def tolerance(case: dict) -> dict:
    """README: KDSVD at 1e-4 relative (float32 SVD in the release), the others 1e-8."""
    return dict(rtol=1e-4, atol=1e-6) if case["distiller"] == "KDSVD" else dict(rtol=1e-8, atol=1e-10)


def check_against_expected(case: dict, total: torch.Tensor, g_logits, g_feats, g_pooled) -> None:
    exp = case["expected"]
    tol = tolerance(case)
    torch.testing.assert_close(total.detach(), _t(exp["total"]), **tol)
    scale = lambda ref: dict(rtol=tol["rtol"], atol=tol["rtol"] * float(_t(ref).abs().max()) + 1e-12)  # noqa: E731
    torch.testing.assert_close(g_logits, _t(exp["grad_student_logits"]), **scale(exp["grad_student_logits"]))
    for g, ref in zip(g_feats, exp["grad_student_feats"]):
        g = torch.zeros_like(_t(ref)) if g is None else g
        torch.testing.assert_close(g, _t(ref), **scale(ref))
    g = torch.zeros_like(_t(exp["grad_student_pooled"])) if g_pooled is None else g_pooled
    torch.testing.assert_close(g, _t(exp["grad_student_pooled"]), **scale(exp["grad_student_pooled"]))


def test_reference_cases_functional(feature_vectors):
    assert len(feature_vectors) >= 12
    seen = set()
    for case in feature_vectors:
        i, p = case["inputs"], case["params"]
        logits = _t(i["student_logits"], True)
        sf = [_t(x, True) for x in i["student_feats"]]
        sp = _t(i["student_pooled"], True)
        tf = [_t(x) for x in i["teacher_feats"]]
        tp = _t(i["teacher_pooled"])
        feat = _functional_loss(case, sf, sp, tf, tp)
        total = p["LOSS.CE_WEIGHT"] * F.cross_entropy(logits, torch.tensor(i["target"])) + p["LOSS.FEAT_WEIGHT"] * feat
        total.backward()
        check_against_expected(case, total, logits.grad, [f.grad for f in sf], sp.grad)
        seen.add(case["distiller"])
    assert seen == {"AT", "NST", "SP", "KDSVD", "PKT", "RKD"}


def _feats(seed: int, shapes=((4, 8, 8, 8), (4, 16, 4, 4), (4, 32, 2, 2))) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=torch.float64) for s in shapes]


@pytest.mark.parametrize("name", ["at", "nst", "sp", "kdsvd"])
def test_stage_losses_zero_on_identical_features(name):
    f = _feats(0)
    fn = getattr(losses, name)
    assert float(fn(f, [x.clone() for x in f])) == pytest.approx(0.0, abs=1e-12)
    assert float(fn(f, _feats(1))) > 1e-6


@pytest.mark.parametrize("name", ["pkt", "rkd"])
def test_embedding_losses_zero_on_identical_embeddings(name):
    e = torch.randn(6, 10, dtype=torch.float64)
    fn = getattr(losses, name)
    assert float(fn(e, e.clone())) == pytest.approx(0.0, abs=1e-12)
    assert float(fn(e, torch.randn(6, 10, dtype=torch.float64))) > 1e-6


def test_teacher_side_gets_no_gradient():
    s, t = [x.requires_grad_() for x in _feats(0)], [x.requires_grad_() for x in _feats(1)]
    (losses.nst(s, t) + losses.kdsvd(s, t)).backward()
    assert all(x.grad is None for x in t) and all(x.grad is not None for x in s)
    e_s, e_t = torch.randn(5, 8, requires_grad=True), torch.randn(5, 8, requires_grad=True)
    losses.rkd(e_s, e_t).backward()
    assert e_t.grad is None and e_s.grad is not None


def test_mismatched_stage_lists_raise():
    with pytest.raises(ValueError, match="stage features"):
        losses.at(_feats(0), _feats(0)[:2])
    with pytest.raises(ValueError, match="4-d"):
        losses.kdsvd([torch.randn(2, 3)], [torch.randn(2, 3)])


def test_at_pools_larger_map():
    s = [torch.randn(2, 4, 4, 4)]
    t = [torch.randn(2, 8, 8, 8)]
    expected = losses.at(s, [F.adaptive_avg_pool2d(t[0], 4)])
    torch.testing.assert_close(losses.at(s, t), expected)


def test_ofd_margins_match_gaussian_formula():
    w = torch.tensor([1.0, -2.0, 0.5, 0.1])
    b = torch.tensor([0.0, 1.0, -0.3, 1.0])  # last: Phi(-10) < 0.001 -> -3s
    got = L.ofd_margins(w, b).flatten()
    assert got.shape == (4,) and got.dtype == torch.float32
    for k in range(4):
        s, m = abs(float(w[k])), float(b[k])
        cdf = 0.5 * (1 + math.erf(-m / s / math.sqrt(2)))
        want = (-s * math.exp(-((m / s) ** 2) / 2) / math.sqrt(2 * math.pi) / cdf + m) if cdf > 0.001 else -3 * s
        assert float(got[k]) == pytest.approx(want, rel=1e-6)


def test_ofd_margin_loss_cases():
    margin = torch.tensor([-1.0]).reshape(1, 1, 1, 1)
    t = torch.tensor([-2.0, -0.5, 1.0, -2.0]).reshape(1, 1, 1, 4)
    s = torch.tensor([0.0, 0.0, 3.0, -3.0]).reshape(1, 1, 1, 4)
    # (0-(-1))^2 [t<=m, s>m] + (0-(-0.5))^2 [s>t, m<t<=0] + (3-1)^2 [t>0] + 0 [s<=m, t<=m]
    assert float(L.ofd_margin_loss(s, t, margin)) == pytest.approx(1.0 + 0.25 + 4.0)


def test_hcl_levels_and_identity():
    f = torch.randn(2, 3, 8, 8)
    assert float(L.hcl([f], [f])) == 0.0
    g = torch.randn(2, 3, 8, 8)
    want = (F.mse_loss(f, g) + 0.5 * F.mse_loss(F.adaptive_avg_pool2d(f, 4), F.adaptive_avg_pool2d(g, 4))
            + 0.25 * F.mse_loss(F.adaptive_avg_pool2d(f, 2), F.adaptive_avg_pool2d(g, 2))
            + 0.125 * F.mse_loss(F.adaptive_avg_pool2d(f, 1), F.adaptive_avg_pool2d(g, 1))) / 1.875
    torch.testing.assert_close(L.hcl([f], [g]), want)


def test_vid_nll_minimum_at_teacher():
    t = torch.randn(2, 3, 4, 4)
    log_scale = torch.zeros(3)
    at_teacher = L.vid_nll(t.clone(), t, log_scale)
    var = math.log(2.0) + 1e-5
    assert float(at_teacher) == pytest.approx(0.5 * math.log(var), rel=1e-5)
    assert float(L.vid_nll(t + 0.1, t, log_scale)) > float(at_teacher)


def test_crd_nce_formula():
    scores = torch.tensor([[0.5, 0.1, 0.2], [0.3, 0.4, 0.05]], dtype=torch.float64)
    n, m, eps = 10, 2, 1e-7
    pn = m / n
    want = 0.0
    for row in scores.tolist():
        want -= math.log(row[0] / (row[0] + pn + eps))
        want -= sum(math.log(pn / (x + pn + eps)) for x in row[1:])
    assert float(L.crd_nce(scores, n)) == pytest.approx(want / 2, rel=1e-12)


def test_fitnet_hint_shape_check():
    with pytest.raises(ValueError, match="teacher hint"):
        L.fitnet_hint(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 2, 2))


# ----------------------------------------------------------------- deterministic pooling


@pytest.mark.parametrize(
    "shape,size",
    [((2, 3, 8, 8), 4), ((2, 3, 8, 8), (2, 4)), ((2, 3, 8, 8), 1), ((2, 3, 7, 7), 3), ((2, 3, 7, 7), 4),
     ((1, 2, 5, 6), (3, 4)), ((2, 3, 6, 6), 4), ((3, 3, 5), 2), ((1, 2, 3, 3), 5)],
)
def test_adaptive_pool_equals_adaptive_avg_pool2d(shape, size):
    """Values and gradients of adaptive_pool equal F.adaptive_avg_pool2d's, for sizes that
    divide (avg_pool2d path) and sizes that do not (bin means), also channels_last."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    inputs = [x] + ([x.contiguous(memory_format=torch.channels_last)] if x.dim() == 4 else [])
    for xi in inputs:
        a, b = xi.clone().requires_grad_(True), xi.clone().requires_grad_(True)
        got, want = L.adaptive_pool(a, size), F.adaptive_avg_pool2d(b, size)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
        w = torch.randn(want.shape, generator=g, dtype=torch.float64)
        (got * w).sum().backward()
        (want * w).sum().backward()
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-14)


def test_adaptive_pool_keeps_dtype_under_autocast():
    x = torch.randn(2, 3, 7, 7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = L.adaptive_pool(x, 3)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, F.adaptive_avg_pool2d(x, 3))
    assert L.adaptive_pool(x.to(torch.bfloat16), 3).dtype == torch.bfloat16


def test_losses_do_not_call_adaptive_avg_pool2d(monkeypatch):
    """Resizing in at/nst/hcl goes through adaptive_pool (deterministic CUDA backward)."""
    s = [torch.randn(2, 4, 4, 4), torch.randn(2, 4, 7, 7)]
    t = [torch.randn(2, 4, 8, 8), torch.randn(2, 4, 10, 10)]  # 8 -> 4 divides, 10 -> 7 does not
    h = [torch.randn(2, 4, 8, 8), torch.randn(2, 4, 7, 7)]  # hcl: equal shapes, pooled to 4, 2, 1
    calls = {"at": (s, t), "nst": (s, t), "hcl": (h, [x.flip(0) for x in h])}
    want = {name: getattr(L, name)(*args) for name, args in calls.items()}

    def forbidden(*args, **kwargs):
        raise AssertionError("F.adaptive_avg_pool2d called")

    monkeypatch.setattr(F, "adaptive_avg_pool2d", forbidden)
    monkeypatch.setattr(torch.nn.functional, "adaptive_avg_pool2d", forbidden)
    for name, value in want.items():
        torch.testing.assert_close(getattr(L, name)(*calls[name]), value)


def test_hcl_non_divisible_map():
    f, g = torch.randn(2, 3, 7, 7, dtype=torch.float64), torch.randn(2, 3, 7, 7, dtype=torch.float64)
    pool = F.adaptive_avg_pool2d
    want = (F.mse_loss(f, g) + 0.5 * F.mse_loss(pool(f, 4), pool(g, 4)) + 0.25 * F.mse_loss(pool(f, 2), pool(g, 2))
            + 0.125 * F.mse_loss(pool(f, 1), pool(g, 1))) / 1.875
    torch.testing.assert_close(L.hcl([f], [g]), want, rtol=1e-12, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_adaptive_pool_backward_is_deterministic_on_cuda():
    """Under torch.use_deterministic_algorithms(True) the CUDA backward of adaptive_pool runs
    (that of F.adaptive_avg_pool2d raises) and gives the CPU gradients."""
    x = torch.randn(2, 3, 7, 10, dtype=torch.float64)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        for size in (4, (7, 5), (3, 3)):
            xc = x.cuda().requires_grad_(True)
            L.adaptive_pool(xc, size).pow(2).sum().backward()
            xr = x.clone().requires_grad_(True)
            F.adaptive_avg_pool2d(xr, size).pow(2).sum().backward()
            torch.testing.assert_close(xc.grad.cpu(), xr.grad, rtol=1e-12, atol=1e-14)
    finally:
        torch.use_deterministic_algorithms(previous)
