"""Every public loss computes in float32 inside a bf16 autocast region, with 16-bit inputs too."""
from __future__ import annotations

import pytest
import torch

from sldistill import losses
from sldistill.losses import feature as L


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread avoids oversubscribing CI's 2 cores (conftest restores it)."""
    torch.set_num_threads(1)


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _logits(n: int, b: int = 16, c: int = 20, seed: int = 0) -> list[torch.Tensor]:
    g = _g(seed)
    return [torch.randn(b, c, generator=g) * 3 for _ in range(n)]


def _labels(b: int = 16, c: int = 20) -> torch.Tensor:
    return torch.randint(0, c, (b,), generator=_g(1))


def _feats(seed: int) -> list[torch.Tensor]:
    g = _g(seed)
    return [torch.randn(4, 8, 8, 8, generator=g), torch.randn(4, 16, 4, 4, generator=g)]


def _teacher_feats(seed: int) -> list[torch.Tensor]:  # a larger first map: AT/NST pool it down
    g = _g(seed)
    return [torch.randn(4, 8, 16, 16, generator=g), torch.randn(4, 16, 4, 4, generator=g)]


Y = _labels()

# name -> (loss(*inputs) -> Tensor, float32 inputs whose first entries get gradients, how many)
CASES = {
    "kd": (lambda s, t: losses.kd(s, t, 4.0), _logits(2), 1),
    "kd_zscore_multi_T": (lambda s, t: losses.kd(s, t, [1.0, 2.0, 4.0], target=Y, processor="zscore"), _logits(2), 1),
    "dkd": (lambda s, t: losses.dkd(s, t, Y), _logits(2), 1),
    "dkd_sort": (lambda s, t: losses.dkd(s, t, Y, processor="sort"), _logits(2), 1),
    "mlkd": (lambda *v: sum(losses.mlkd(*v, Y).values()), _logits(4), 2),
    "mlkd_clean": (lambda *v: sum(losses.mlkd(*v, Y, clean=True).values()), _logits(4), 2),
    "sld": (lambda *v: sum(losses.sld(*v, Y, 151).values()), _logits(4), 2),
    "sld_zscore_sort": (lambda *v: sum(losses.sld(*v, Y, 151, teacher_processor="zscore",
                                                  student_processor="sort").values()), _logits(4), 2),
    "at": (lambda s0, s1, t0, t1: losses.at([s0, s1], [t0, t1]), [*_feats(0), *_teacher_feats(1)], 2),
    "nst": (lambda s0, s1, t0, t1: losses.nst([s0, s1], [t0, t1]), [*_feats(0), *_teacher_feats(1)], 2),
    "sp": (lambda s0, s1, t0, t1: losses.sp([s0, s1], [t0, t1]), [*_feats(0), *_feats(1)], 2),
    "kdsvd": (lambda s0, s1, t0, t1: losses.kdsvd([s0, s1], [t0, t1]), [*_feats(0), *_feats(1)], 2),
    "pkt": (losses.pkt, [torch.randn(8, 32, generator=_g(2)), torch.randn(8, 32, generator=_g(3))], 1),
    "rkd": (losses.rkd, [torch.randn(8, 32, generator=_g(2)), torch.randn(8, 32, generator=_g(3))], 1),
    "fitnet_hint": (L.fitnet_hint, _feats(0)[:1] + _feats(1)[:1], 1),
    "ofd_margin_loss": (L.ofd_margin_loss,
                        [*_feats(0)[:1], *_feats(1)[:1], -torch.rand(1, 8, 1, 1, generator=_g(4))], 1),
    "vid_nll": (L.vid_nll, [*_feats(0)[:1], *_feats(1)[:1], torch.randn(8, generator=_g(4))], 1),
    "hcl": (lambda s0, s1, t0, t1: L.hcl([s0, s1], [t0, t1]), [*_feats(0), *_feats(1)], 2),
    "crd_nce": (lambda x: L.crd_nce(x, 1000), [torch.rand(8, 17, generator=_g(5)) + 0.01], 1),
}


def _run(fn, inputs, n_grad, autocast: bool = False):
    """The loss (forward under bf16 autocast if asked) and its gradients; the backward runs
    outside autocast, as PyTorch recommends (``loss.backward()`` after the ``with`` block)."""
    leaves = [x.clone().requires_grad_(i < n_grad) for i, x in enumerate(inputs)]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = fn(*leaves)
    out.backward()
    return out, [x.grad for x in leaves[:n_grad]]


def test_every_public_loss_is_covered():
    not_losses = {"MLKD_EXTRA_TEMPERATURES", "adaptive_pool", "match_spatial", "ofd_margins"}
    assert set(losses.__all__) - not_losses <= set(CASES)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("in_dtype", [torch.bfloat16, torch.float32])
def test_loss_under_bf16_autocast_equals_float32(name, in_dtype):
    """Inside ``torch.autocast("cpu", bfloat16)``, with bf16 or float32 inputs, each loss
    returns float32 and equals (to float32 rounding) its value outside autocast on the same
    inputs cast to float32; 16-bit inputs receive gradients in their dtype, equal to the
    float32 gradients rounded."""
    fn, inputs, n_grad = CASES[name]
    inputs = [x.to(in_dtype) for x in inputs]
    ref, ref_grads = _run(fn, [x.float() for x in inputs], n_grad)
    out, grads = _run(fn, inputs, n_grad, autocast=True)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-7)
    for g, g_ref in zip(grads, ref_grads):
        assert g.dtype == in_dtype
        torch.testing.assert_close(g.float(), g_ref.to(in_dtype).float(), rtol=1e-6, atol=1e-9)
