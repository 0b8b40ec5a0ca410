"""Forward+backward time of :func:`sldistill.losses.sld` against a plain implementation.

The plain implementation is written the way the release is: a boolean-mask swap of the
teacher (and of the student, for the pseudo-teacher), then one ``log_softmax`` / ``softmax``
/ ``kl_div`` call per temperature and view, with the pseudo-teacher KL evaluated in full.
Ours stacks the temperatures into one pass, uses that swap commutes with softmax, and
evaluates the pseudo-teacher term in closed form. Both are checked to give equal losses and
gradients (float64, 1e-9 relative) before timing (float32).

    python -m benchmarks.losses [--threads N] [--repeat R]

Timing: R rounds (default 15), each one batch of calls of the baseline then one of ours; the
fastest round of each is reported. A batch is 100 calls at (64, 100) (about 170 ms of the
baseline, 40 ms of ours) and 2 at (512, 1000), so that each figure is the steady per-call time:
in short batches the first calls after switching implementations run with cold caches, which
weighs on the faster side (with 20-call batches ours measures about 3.9x at (64, 100)).

Targets: at least 4x at logits (64, 100) and 2x at (512, 1000). Last, ours is timed on
(2, 2) logits: the same PyTorch calls on near-empty tensors, i.e. the per-call part of its
time, which dominates at (64, 100).
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from benchmarks.common import ratio_row, time_fn
from sldistill import losses

TEMPS = (1, 2, 3, 4, 5, 6)


def plain_swap(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Release-style swap: boolean masks for the arg-max and the label, then masked writes."""
    n_cls = logits.shape[1]
    mask_top = F.one_hot(logits.argmax(1), n_cls).bool()
    mask_gt = F.one_hot(target, n_cls).bool()
    top_val, gt_val = logits[mask_top], logits[mask_gt]
    out = logits.clone()
    out[mask_gt] = top_val
    out[mask_top] = gt_val
    return out


def plain_kd(s: torch.Tensor, t: torch.Tensor, T: float) -> torch.Tensor:
    log_q = F.log_softmax(s / T, dim=1)
    p = F.softmax(t / T, dim=1)
    return F.kl_div(log_q, p, reduction="none").sum(1).mean() * T * T


def plain_sld(sw, ss, tw, ts, y, epoch, ce_weight=0.1, kd_weight=0.9, gamma=150):
    loss_ce = ce_weight * (F.cross_entropy(sw, y) + F.cross_entropy(ss, y))
    tw_s, ts_s = plain_swap(tw, y), plain_swap(ts, y)
    loss_kd = 0.0
    for T in TEMPS:
        loss_kd = loss_kd + kd_weight * plain_kd(sw, tw_s, T) + kd_weight * plain_kd(ss, ts_s, T)
    if epoch > gamma:
        sw_s, ss_s = plain_swap(sw, y), plain_swap(ss, y)  # not detached, as released
        for T in TEMPS:
            loss_kd = loss_kd + kd_weight * plain_kd(sw, sw_s, T) + kd_weight * plain_kd(ss, ss_s, T)
    return loss_ce + loss_kd


def ours_sld(sw, ss, tw, ts, y, epoch):
    return sum(losses.sld(sw, ss, tw, ts, y, epoch).values())


def make_inputs(b: int, c: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    sw, ss, tw, ts = (torch.randn(b, c, generator=g, dtype=dtype) * 3 for _ in range(4))
    y = torch.randint(0, c, (b,), generator=g)
    y[::2] = tw[::2].argmax(1)  # half the teacher rows right, half swapped
    return sw.requires_grad_(True), ss.requires_grad_(True), tw, ts, y


def step(fn, sw, ss, tw, ts, y, epoch):
    sw.grad = ss.grad = None
    loss = fn(sw, ss, tw, ts, y, epoch)
    loss.backward()
    return loss


def check_equal(b: int, c: int, epoch: int) -> None:
    for dtype, rtol in ((torch.float64, 1e-9), (torch.float32, 1e-4)):
        ins = make_inputs(b, c, dtype)
        ref = step(plain_sld, *ins, epoch).detach()
        g_ref = [ins[0].grad.clone(), ins[1].grad.clone()]
        out = step(ours_sld, *ins, epoch).detach()
        assert torch.allclose(out, ref, rtol=rtol, atol=0), (b, c, dtype, out, ref)
        for g_ours, g_plain in zip((ins[0].grad, ins[1].grad), g_ref):
            err = (g_ours - g_plain).abs().max() / g_plain.abs().max()
            assert err <= rtol, (b, c, dtype, float(err))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"sld forward+backward, float32, {torch.get_num_threads()} thread(s); results checked equal first")
    targets = {(64, 100): 4.0, (512, 1000): 2.0}
    for (b, c), target in targets.items():
        for epoch in (100, 151):
            check_equal(b, c, epoch)
            ins = make_inputs(b, c, torch.float32)
            number = 100 if b * c < 10**5 else 2
            plain_fn = lambda: step(plain_sld, *ins, epoch)  # noqa: E731
            ours_fn = lambda: step(ours_sld, *ins, epoch)  # noqa: E731
            time_fn(plain_fn, warmup=3, repeat=1)
            time_fn(ours_fn, warmup=3, repeat=1)
            # interleaved rounds, fastest round of each: robust to other load on a shared machine
            rounds = [(time_fn(plain_fn, warmup=0, repeat=1, number=number),
                       time_fn(ours_fn, warmup=0, repeat=1, number=number)) for _ in range(args.repeat)]
            t_plain, t_ours = min(r[0] for r in rounds), min(r[1] for r in rounds)
            phase = "pseudo on" if epoch > 150 else "pseudo off"
            print(ratio_row(f"({b}, {c}) {phase}", t_plain, t_ours) + f"   target {target:.0f}x")
    # the same calls on near-empty logits: what remains is the per-call cost (dispatch, autograd)
    for epoch in (100, 151):
        ins = make_inputs(2, 2, torch.float32)
        t_tiny = min(time_fn(lambda: step(ours_sld, *ins, epoch), warmup=3, repeat=1, number=50)
                     for _ in range(args.repeat))
        phase = "pseudo on" if epoch > 150 else "pseudo off"
        print(f"per-call floor, {phase}: ours takes {t_tiny * 1e3:.2f} ms on (2, 2) logits (the same calls on "
              "near-empty tensors)")


if __name__ == "__main__":
    main()
