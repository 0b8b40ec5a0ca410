"""Forward+backward time of the logit losses (kd, dkd, mlkd, sld) against release-style code.

The reference side of each pair is written here the way the published code structures the
same work: a boolean-mask swap of the teacher (and of the student, for SLD's pseudo-teacher),
one ``log_softmax`` / ``softmax`` / ``kl_div`` call per temperature and view, DKD's target and
non-target distributions built with 0/1 masks and a ``-1000`` offset on the label's logit,
MLKD's masks multiplying already-averaged losses. Ours is :mod:`sldistill.losses`: the
temperatures stacked into one ``log_softmax`` per side, the views concatenated. Before any
timing, each pair is checked to give equal losses and gradients (float64 to 1e-9 relative,
float32 to 1e-4); timing is in float32.

    python -m benchmarks.losses [--threads N] [--repeat R] [--quick]

Timing: R rounds (default 15), each one batch of calls of the reference then one of ours;
the fastest round of each side is reported, and the speed-up is the ratio of the two (both
measured in the same run; absolute times are for orientation only). ``--quick`` times only
the (64, 100) logits, 3 rounds (a smoke test).
"""
from __future__ import annotations

import argparse
import functools
from typing import Callable

import torch
import torch.nn.functional as F

from benchmarks.common import ratio_row, time_fn
from sldistill import losses

SLD_TEMPS = (1, 2, 3, 4, 5, 6)


# ----------------------------------------------------------------- release-style references


def ref_swap(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Boolean masks for the arg-max and the label, then masked writes."""
    n_cls = logits.shape[1]
    mask_top = F.one_hot(logits.argmax(1), n_cls).bool()
    mask_gt = F.one_hot(target, n_cls).bool()
    top_val, gt_val = logits[mask_top], logits[mask_gt]
    out = logits.clone()
    out[mask_gt] = top_val
    out[mask_top] = gt_val
    return out


def ref_kd(s: torch.Tensor, t: torch.Tensor, T: float) -> torch.Tensor:
    log_q = F.log_softmax(s / T, dim=1)
    p = F.softmax(t / T, dim=1)
    return F.kl_div(log_q, p, reduction="none").sum(1).mean() * T * T


def ref_dkd(s, t, y, alpha=1.0, beta=8.0, T=4.0):
    gt = torch.zeros_like(s).scatter_(1, y.unsqueeze(1), 1.0)
    other = 1.0 - gt
    q, p = F.softmax(s / T, dim=1), F.softmax(t / T, dim=1)
    q_bin = torch.stack([(q * gt).sum(1), (q * other).sum(1)], dim=1)
    p_bin = torch.stack([(p * gt).sum(1), (p * other).sum(1)], dim=1)
    tckd = F.kl_div(torch.log(q_bin), p_bin, reduction="sum") * T * T / s.shape[0]
    log_q_nc = F.log_softmax(s / T - 1000.0 * gt, dim=1)
    p_nc = F.softmax(t / T - 1000.0 * gt, dim=1)
    nckd = F.kl_div(log_q_nc, p_nc, reduction="sum") * T * T / s.shape[0]
    return alpha * tckd + beta * nckd


def ref_mlkd(sw, ss, tw, ts, y, T=4.0, ce_weight=0.1, kd_weight=0.9):
    b, c = sw.shape
    p_tw = F.softmax(tw, dim=1)
    conf = p_tw.max(1).values
    mask = (conf <= torch.quantile(conf, 0.5)).to(sw.dtype)
    class_conf = p_tw.sum(0)
    class_mask = (class_conf <= torch.quantile(class_conf, 0.5)).to(sw.dtype)
    loss = ce_weight * (F.cross_entropy(sw, y) + F.cross_entropy(ss, y))
    for temp, strong in ((T, True), (3.0, True), (5.0, True), (2.0, False), (6.0, False)):
        loss = loss + kd_weight * (ref_kd(sw, tw, temp) * mask).mean()
        loss = loss + kd_weight * (ref_kd(ss, ts, temp) if strong else ref_kd(sw, tw, temp))
        q, p = F.softmax(sw / temp, dim=1), F.softmax(tw / temp, dim=1)
        cc = ((p.t() @ p - q.t() @ q) ** 2).sum() / c
        bc = ((p @ p.t() - q @ q.t()) ** 2).sum() / b
        loss = loss + kd_weight * (cc * class_mask).mean() + kd_weight * (bc * mask).mean()
    return loss


def ref_sld(sw, ss, tw, ts, y, epoch, ce_weight=0.1, kd_weight=0.9, gamma=150):
    loss = ce_weight * (F.cross_entropy(sw, y) + F.cross_entropy(ss, y))
    tw_s, ts_s = ref_swap(tw, y), ref_swap(ts, y)
    for T in SLD_TEMPS:
        loss = loss + kd_weight * ref_kd(sw, tw_s, T) + kd_weight * ref_kd(ss, ts_s, T)
    if epoch > gamma:
        sw_s, ss_s = ref_swap(sw, y), ref_swap(ss, y)  # not detached, as released
        for T in SLD_TEMPS:
            loss = loss + kd_weight * ref_kd(sw, sw_s, T) + kd_weight * ref_kd(ss, ss_s, T)
    return loss


# ----------------------------------------------------------------- ours, same signatures


def ours_kd(s, t, y):
    return losses.kd(s, t, 4.0)


def ours_dkd(s, t, y):
    return losses.dkd(s, t, y)


def ours_mlkd(sw, ss, tw, ts, y):
    return sum(losses.mlkd(sw, ss, tw, ts, y).values())


def ours_sld(sw, ss, tw, ts, y, epoch):
    return sum(losses.sld(sw, ss, tw, ts, y, epoch).values())


# ----------------------------------------------------------------- cases

#: label -> (reference, ours, number of student views, extra positional arguments)
Case = tuple[Callable, Callable, int, tuple]
CASES: dict[str, Case] = {
    "kd T=4": (lambda s, t, y: ref_kd(s, t, 4.0), ours_kd, 1, ()),
    "dkd": (ref_dkd, ours_dkd, 1, ()),
    "mlkd": (ref_mlkd, ours_mlkd, 2, ()),
    "sld pseudo off": (ref_sld, ours_sld, 2, (100,)),
    "sld pseudo on": (ref_sld, ours_sld, 2, (151,)),
}


def make_inputs(n_views: int, b: int, c: int, dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    """Student views (with gradients), teacher views, labels: half the teacher rows right."""
    g = torch.Generator().manual_seed(seed)
    students = [(torch.randn(b, c, generator=g, dtype=dtype) * 3).requires_grad_(True) for _ in range(n_views)]
    teachers = [torch.randn(b, c, generator=g, dtype=dtype) * 3 for _ in range(n_views)]
    y = torch.randint(0, c, (b,), generator=g)
    y[::2] = teachers[0][::2].argmax(1)
    return [*students, *teachers, y]


def step(fn: Callable, ins: list[torch.Tensor], n_views: int, extra: tuple) -> torch.Tensor:
    for s in ins[:n_views]:
        s.grad = None
    loss = fn(*ins, *extra)
    loss.backward()
    return loss


def _grad(x: torch.Tensor) -> torch.Tensor:
    assert x.grad is not None
    return x.grad


def check_equal(case: Case, b: int, c: int) -> None:
    ref, ours, n_views, extra = case
    for dtype, rtol in ((torch.float64, 1e-9), (torch.float32, 1e-4)):
        ins = make_inputs(n_views, b, c, dtype)
        want = step(ref, ins, n_views, extra).detach()
        g_want = [_grad(s).clone() for s in ins[:n_views]]
        got = step(ours, ins, n_views, extra).detach()
        assert torch.allclose(got, want, rtol=rtol, atol=0), (b, c, dtype, got, want)
        for s, g in zip(ins[:n_views], g_want):
            err = (_grad(s) - g).abs().max() / g.abs().max()
            assert err <= rtol, (b, c, dtype, float(err))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--repeat", type=int, default=None, help="timing rounds (default 15; 3 with --quick)")
    ap.add_argument("--quick", action="store_true", help="only (64, 100) logits, 3 rounds: a smoke test")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    repeat = args.repeat or (3 if args.quick else 15)
    shapes = [(64, 100)] if args.quick else [(64, 100), (512, 1000)]
    print(f"logit losses forward+backward, float32, {torch.get_num_threads()} thread(s); "
          "each pair checked equal first (float64 1e-9, float32 1e-4)")
    for b, c in shapes:
        for label, case in CASES.items():
            check_equal(case, b, c)
            ref, ours, n_views, extra = case
            ins = make_inputs(n_views, b, c, torch.float32)
            ref_fn = functools.partial(step, ref, ins, n_views, extra)
            ours_fn = functools.partial(step, ours, ins, n_views, extra)
            t_once = time_fn(ref_fn, warmup=2, repeat=1)
            time_fn(ours_fn, warmup=2, repeat=1)
            number = max(1, min(50, int(0.03 / max(t_once, 1e-6))))  # batches of about 30 ms
            # interleaved rounds, fastest of each side: robust to other load on a shared machine
            rounds = [(time_fn(ref_fn, warmup=0, repeat=1, number=number),
                       time_fn(ours_fn, warmup=0, repeat=1, number=number)) for _ in range(repeat)]
            t_ref, t_ours = min(r[0] for r in rounds), min(r[1] for r in rounds)
            print(ratio_row(f"({b}, {c}) {label}", t_ref, t_ours))


if __name__ == "__main__":
    main()
