"""Functional logit losses: reference vectors of the released code, variants, validation."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import SHARED

from sldistill import losses
from sldistill.logits import get_processor, zscore


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread avoids OpenMP contention on the shared 2-core runners
    (tests/conftest.py restores the previous setting)."""
    torch.set_num_threads(1)

CASES = json.loads((SHARED / "reference" / "loss_vectors.json").read_text())["cases"] if SHARED else []


def _t(x, grad: bool = False) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64, requires_grad=grad)


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-8) -> bool:
    return bool((a - b).abs().max() <= rtol * b.abs().max())


def functional_total(case: dict) -> tuple[torch.Tensor, list[tuple[torch.Tensor, str]]]:
    """The case's total through the functional API, and (student tensor, expected grad key) pairs."""
    p, inp = case["params"], case["inputs"]
    y = torch.tensor(inp["target"])
    if case["method"] in ("kd", "dkd"):
        s, t = _t(inp["student"], True), _t(inp["teacher"])
        ce = p["ce_weight"] * F.cross_entropy(s, y)
        if case["method"] == "kd":
            total = ce + p["kd_weight"] * losses.kd(s, t, p["temperature"], target=y, processor=p["processor"])
        else:
            factor = min(case["epoch"] / p["warmup"], 1.0)
            total = ce + factor * losses.dkd(s, t, y, p["alpha"], p["beta"], p["temperature"], processor=p["processor"])
        return total, [(s, "grad_student")]
    sw, ss = _t(inp["student_weak"], True), _t(inp["student_strong"], True)
    args = (sw, ss, _t(inp["teacher_weak"]), _t(inp["teacher_strong"]), y)
    if case["method"] == "mlkd":
        terms = losses.mlkd(*args, temperature=p["temperature"], ce_weight=p["ce_weight"],
                            kd_weight=p["kd_weight"], processor=p["processor"])
    else:
        terms = losses.sld(*args, case["epoch"], ce_weight=p["ce_weight"], kd_weight=p["kd_weight"],
                           temperatures=p["temperatures"], gamma=p["gamma"])
    assert "loss_ce" in terms
    return sum(terms.values()), [(sw, "grad_student_weak"), (ss, "grad_student_strong")]


@pytest.mark.skipif(SHARED is None, reason="shared/ reference data folder not found (set SLDISTILL_SHARED)")
@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_reference_vectors_functional(case):
    total, grads = functional_total(case)
    expected = case["expected"]
    assert abs(total.item() - expected["total"]) <= 1e-8 * abs(expected["total"])
    total.backward()
    for tensor, key in grads:
        assert _close(tensor.grad, _t(expected[key])), key


def test_reference_covers_all_methods():
    if SHARED is None:
        pytest.skip("shared/ reference data folder not found")
    kinds = {(c["method"], c["params"].get("processor", "swap")) for c in CASES}
    assert {("kd", "none"), ("kd", "sort"), ("kd", "zscore"), ("dkd", "none"), ("dkd", "sort"),
            ("dkd", "zscore"), ("mlkd", "none"), ("sld", "swap")} <= kinds


# ----------------------------------------------------------------- plain implementations


def plain_kd(s, t, T):
    return F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="none").sum(1).mean() * T * T


def plain_sld(sw, ss, tw, ts, y, epoch, *, ce_weight=0.1, kd_weight=0.9, temps=(1, 2, 3, 4, 5, 6), gamma=150,
              detach=False, tproc="swap", sproc="swap"):
    total = ce_weight * (F.cross_entropy(sw, y) + F.cross_entropy(ss, y))
    for s, t in ((sw, tw), (ss, ts)):
        for T in temps:
            if tproc == "zscore":
                total = total + kd_weight * plain_kd(zscore(s), zscore(t), T)
            else:
                total = total + kd_weight * plain_kd(s, get_processor(tproc)(t, y), T)
            if epoch > gamma:
                pseudo = get_processor(sproc)(s, y)
                total = total + kd_weight * plain_kd(s, pseudo.detach() if detach else pseudo, T)
    return total


def _views(b=12, c=20, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    sw, ss, tw, ts = (torch.randn(b, c, generator=g, dtype=dtype) * 2 for _ in range(4))
    y = torch.randint(0, c, (b,), generator=g)
    y[::2] = tw[::2].argmax(1)
    return sw.requires_grad_(True), ss.requires_grad_(True), tw, ts, y


@pytest.mark.parametrize(
    "tproc,sproc,detach",
    [("swap", "swap", True), ("sort", "sort", False), ("sort", "swap", True), ("none", "sort", True),
     ("zscore", "swap", False), ("swap", "zscore", False), ("swap", "none", False)],
)
def test_sld_processor_variants_match_plain(tproc, sproc, detach):
    sw, ss, tw, ts, y = _views()
    out = losses.sld(sw, ss, tw, ts, y, 151, detach_pseudo_teacher=detach, teacher_processor=tproc,
                     student_processor=sproc)
    ours = sum(out.values())
    g_ours = torch.autograd.grad(ours, (sw, ss))
    ref = plain_sld(sw, ss, tw, ts, y, 151, detach=detach, tproc=tproc, sproc=sproc)
    g_ref = torch.autograd.grad(ref, (sw, ss))
    assert torch.allclose(ours, ref, rtol=1e-10)
    for a, b in zip(g_ours, g_ref):
        assert _close(a, b, 1e-9)


def test_sld_detach_changes_gradient_not_value_and_gamma_switch():
    sw, ss, tw, ts, y = _views(seed=1)
    a = losses.sld(sw, ss, tw, ts, y, 151)
    b = losses.sld(sw, ss, tw, ts, y, 151, detach_pseudo_teacher=True)
    assert torch.allclose(a["loss_pseudo"], b["loss_pseudo"]) and a["loss_pseudo"] > 0
    ga = torch.autograd.grad(a["loss_pseudo"], sw)[0]
    gb = torch.autograd.grad(b["loss_pseudo"], sw)[0]
    assert not torch.allclose(ga, gb)
    before = losses.sld(sw, ss, tw, ts, y, 150)
    assert before["loss_pseudo"] == 0 and torch.allclose(before["loss_kd"], a["loss_kd"])
    c = losses.sld(sw, ss, tw, ts, y, 11, gamma=10, temperatures=[2.0, 3.0], ce_weight=0.5, kd_weight=0.5)
    ref = plain_sld(sw, ss, tw, ts, y, 11, gamma=10, temps=(2.0, 3.0), ce_weight=0.5, kd_weight=0.5)
    assert torch.allclose(sum(c.values()), ref, rtol=1e-10)


def test_kd_sequence_of_temperatures_is_sum():
    s, _, t, _, y = _views(seed=2)
    multi = losses.kd(s, t, [1, 2.5, 4])
    single = sum(losses.kd(s, t, T) for T in (1, 2.5, 4))
    assert torch.allclose(multi, single, rtol=1e-12)
    assert torch.allclose(losses.kd(s, t, 3.0), plain_kd(s, t, 3.0), rtol=1e-12)
    assert torch.allclose(losses.kd(s, t, 2.0, target=y, processor="swap"),
                          plain_kd(s, get_processor("swap")(t, y), 2.0), rtol=1e-12)


def plain_mlkd_clean(sw, ss, tw, ts, y, T=4.0, ce_w=0.1, kd_w=0.9):
    b, c = sw.shape
    pt = F.softmax(tw, 1)
    conf = pt.max(1).values
    mask = (conf <= torch.quantile(conf, 0.5)).double()  # np.percentile(conf, 50), as released
    cconf = pt.sum(0)
    cmask = (cconf <= torch.quantile(cconf, 0.5)).double()
    total = ce_w * (F.cross_entropy(sw, y) + F.cross_entropy(ss, y))
    for temp in (T, 3.0, 5.0, 2.0, 6.0):
        per = F.kl_div(F.log_softmax(sw / temp, 1), F.softmax(tw / temp, 1), reduction="none").sum(1) * temp**2
        total = total + kd_w * (per * mask).mean() + kd_w * plain_kd(ss, ts, temp)
        ps, pq = F.softmax(sw / temp, 1), F.softmax(tw / temp, 1)
        total = total + kd_w * (((pq.T @ pq - ps.T @ ps) ** 2 / c) * cmask).sum()
        total = total + kd_w * (((pq @ pq.T - ps @ ps.T) ** 2 / b) * mask).sum()
    return total


def test_mlkd_clean_variant_matches_plain_and_differs_from_release():
    sw, ss, tw, ts, y = _views(b=10, c=16, seed=3)
    clean = sum(losses.mlkd(sw, ss, tw, ts, y, clean=True).values())
    ref = plain_mlkd_clean(sw, ss, tw, ts, y)
    assert torch.allclose(clean, ref, rtol=1e-10)
    g1 = torch.autograd.grad(clean, sw)[0]
    g2 = torch.autograd.grad(ref, sw)[0]
    assert _close(g1, g2, 1e-9)
    released = sum(losses.mlkd(sw, ss, tw, ts, y).values())
    assert not torch.allclose(clean, released)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_inputs(dtype):
    sw, ss, tw, ts, y = _views(b=16, c=50, seed=4)
    ref = losses.sld(sw, ss, tw, ts, y, 151)
    low = [x.detach().to(dtype).requires_grad_(True) for x in (sw, ss)]
    out = losses.sld(low[0], low[1], tw.to(dtype), ts.to(dtype), y, 151)
    total = sum(out.values())
    assert total.dtype == torch.float32
    total.backward()
    assert low[0].grad.dtype == dtype and torch.isfinite(low[0].grad.float()).all()
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    assert torch.allclose(total.double(), sum(ref.values()), rtol=tol)
    for fn in (lambda s, t: losses.kd(s, t, 4.0), lambda s, t: losses.dkd(s, t, y, processor="zscore")):
        v = fn(low[0], tw.to(dtype))
        assert torch.isfinite(v) and torch.allclose(v.double(), fn(sw, tw), rtol=tol)


def test_dkd_large_logits_no_overflow():
    s = torch.tensor([[60000.0, -60000.0, 5.0], [0.0, 65000.0, -65000.0]], dtype=torch.float16, requires_grad=True)
    t = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]], dtype=torch.float16)
    v = losses.dkd(s, t, torch.tensor([0, 2]))
    v.backward()
    assert torch.isfinite(v) and torch.isfinite(s.grad.float()).all()


def test_bad_inputs_raise_value_error():
    s, ss, t, ts, y = _views(b=4, c=6)
    with pytest.raises(ValueError, match=r"student must be 2-D.*\(4, 6, 1\)"):
        losses.kd(s[..., None], t)
    with pytest.raises(ValueError, match=r"student and teacher must have the same shape.*\(4, 6\).*\(4, 5\)"):
        losses.kd(s, t[:, :5])
    with pytest.raises(ValueError, match=r"student and teacher.*\(4, 6\).*\(3, 6\)"):
        losses.dkd(s, t[:3], y)
    with pytest.raises(ValueError, match=r"student_weak and teacher_strong.*\(4, 6\).*\(4, 7\)"):
        losses.sld(s, ss, t, torch.zeros(4, 7, dtype=t.dtype), y, 1)
    with pytest.raises(ValueError, match=r"target values must lie in \[0, 5\].*student"):
        losses.dkd(s, t, torch.tensor([0, 1, 2, 6]))
    with pytest.raises(ValueError, match=r"target must have an integer dtype.*torch.float32"):
        losses.mlkd(s, ss, t, ts, y.float())
    with pytest.raises(ValueError, match=r"target must have shape \[B\] = \[4\]"):
        losses.sld(s, ss, t, ts, y[:2], 1)
    with pytest.raises(ValueError, match="processor must be one of none, sort, swap, zscore; got 'sorted'"):
        losses.kd(s, t, 4.0, target=y, processor="sorted")
    with pytest.raises(ValueError, match="student_processor must be one of"):
        losses.sld(s, ss, t, ts, y, 1, student_processor="flip")
    with pytest.raises(ValueError, match="needs target labels"):
        losses.kd(s, t, 4.0, processor="sort")
    with pytest.raises(ValueError, match="temperatures must be"):
        losses.sld(s, ss, t, ts, y, 1, temperatures=[])
    with pytest.raises(ValueError, match="temperature must be"):
        losses.kd(s, t, -1.0)


def test_sld_pseudo_teacher_closed_form():
    """KL(swap(q) || q) only involves the exchanged entries a = argmax(s) and y:
    (q_a - q_y)(log q_a - log q_y) per row (docs/methods.md), zero where a == y."""
    sw, ss, tw, ts, y = _views(b=9, c=11, seed=6)
    out = losses.sld(sw, ss, tw, ts, y, 151, temperatures=[2.0], kd_weight=1.0)
    closed = 0.0
    for s in (sw, ss):
        log_q = F.log_softmax(s / 2.0, 1)
        la, ly = log_q.gather(1, s.argmax(1, keepdim=True)), log_q.gather(1, y[:, None])
        closed = closed + 4.0 * ((la.exp() - ly.exp()) * (la - ly)).mean()
    assert torch.allclose(out["loss_pseudo"], closed, rtol=1e-12)


@pytest.mark.parametrize("label", [6, -1, 100])
@pytest.mark.parametrize("kwargs", [{}, {"teacher_processor": "sort"}, {"teacher_processor": "zscore"},
                                    {"teacher_processor": "none", "student_processor": "sort"}])
def test_sld_out_of_range_label_is_a_value_error(label: int, kwargs: dict) -> None:
    """Every sld path raises the ValueError naming the valid label range (CPU tensors),
    before and after gamma."""
    s, ss, t, ts, _ = _views(b=4, c=6)
    y = torch.tensor([0, 1, label, 2])
    for epoch in (1, 151):
        with pytest.raises(ValueError, match=r"target values must lie in \[0, 5\].*student_weak"):
            losses.sld(s, ss, t, ts, y, epoch, **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_losses_match_cpu_without_host_synchronisation():
    """On CUDA no loss waits for the device (no .item(), no label-range read, no copy of
    constants from the host): forward and backward run under sync debug mode "error"."""
    sw, ss, tw, ts, y = _views(b=16, c=20, seed=7)
    calls = {
        "kd": lambda a, b, c, d, t: losses.kd(a, c, [1.0, 4.0], target=t, processor="sort"),
        "dkd": lambda a, b, c, d, t: losses.dkd(a, c, t, processor="zscore"),
        "mlkd": lambda *v: sum(losses.mlkd(*v).values()),
        "sld": lambda *v: sum(losses.sld(*v, 151).values()),
    }
    for name, fn in calls.items():
        want = fn(sw, ss, tw, ts, y)
        g_want = torch.autograd.grad(want, (sw, ss), allow_unused=True)
        dev = [x.detach().cuda().requires_grad_(i < 2) for i, x in enumerate((sw, ss, tw, ts))]
        y_dev = y.cuda()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            got = fn(*dev, y_dev)
            g_got = torch.autograd.grad(got, dev[:2], allow_unused=True)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert torch.allclose(got.cpu(), want, rtol=1e-10), name
        for a, b in zip(g_got, g_want):
            assert (a is None) == (b is None), name
            if a is not None:
                assert _close(a.cpu(), b, 1e-9), name
