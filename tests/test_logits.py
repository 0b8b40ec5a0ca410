"""Logit processors: swap, sort, zscore and the name -> processor table."""
from __future__ import annotations

import pytest
import torch

from sldistill import logits as L


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread avoids OpenMP contention on the shared 2-core runners
    (tests/conftest.py restores the previous setting)."""
    torch.set_num_threads(1)


def _random(b: int = 48, c: int = 30, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, c, generator=g, dtype=dtype)
    y = torch.randint(0, c, (b,), generator=g)
    # make a third of the rows already right (label is top-1)
    y[::3] = z[::3].argmax(1)
    return z, y


@pytest.mark.parametrize("name", ["swap", "sort"])
def test_output_is_row_permutation_with_label_on_top(name):
    z, y = _random()
    out = L.PROCESSORS[name](z, y)
    assert out.shape == z.shape and out.dtype == z.dtype
    assert torch.equal(out.sort(1).values, z.sort(1).values)
    assert torch.equal(out.gather(1, y[:, None]).squeeze(1), z.max(1).values)


@pytest.mark.parametrize("name", ["swap", "sort"])
def test_rows_already_right_are_unchanged(name):
    z, y = _random()
    right = z.argmax(1) == y
    assert right.any() and (~right).any()
    out = L.PROCESSORS[name](z, y)
    assert torch.equal(out[right], z[right])
    assert not torch.equal(out[~right], z[~right])


def test_sort_keeps_relative_order_of_other_classes():
    z, y = _random(b=40, c=25, seed=1)
    out = L.sort(z, y)
    keep = torch.ones_like(z, dtype=torch.bool).scatter_(1, y[:, None], False)
    zo = z[keep].view(z.shape[0], -1)
    oo = out[keep].view(z.shape[0], -1)
    # same ordering of the non-label classes
    assert torch.equal(zo.argsort(dim=1, stable=True), oo.argsort(dim=1, stable=True))
    # classes ranked below the label keep their value; those above move down one place
    rank_y = (z > z.gather(1, y[:, None])).sum(1, keepdim=True)
    below = z < z.gather(1, y[:, None])
    assert torch.equal(out[below], z[below])
    assert rank_y.max() > 1  # the inputs exercise multi-place shifts


def test_swap_changes_only_argmax_and_label():
    z, y = _random(seed=2)
    out = L.swap(z, y)
    a = z.argmax(1)
    touched = torch.zeros_like(z, dtype=torch.bool)
    touched.scatter_(1, a[:, None], True).scatter_(1, y[:, None], True)
    assert torch.equal(out[~touched], z[~touched])
    assert torch.equal(out.gather(1, a[:, None]), z.gather(1, y[:, None]))


def test_sort_hand_example_and_equals_swap_when_label_second():
    z = torch.tensor([[1.0, 5.0, 3.0, 4.0], [0.0, 2.0, 9.0, 1.0]])
    y = torch.tensor([0, 1])
    assert torch.equal(L.sort(z, y), torch.tensor([[5.0, 4.0, 1.0, 3.0], [0.0, 9.0, 2.0, 1.0]]))
    assert torch.equal(L.swap(z, y), torch.tensor([[5.0, 1.0, 3.0, 4.0], [0.0, 9.0, 2.0, 1.0]]))
    z2, y2 = _random(seed=3)
    second = z2.argsort(1, descending=True)[:, 1]
    assert torch.equal(L.sort(z2, second), L.swap(z2, second))


@pytest.mark.parametrize("name", ["swap", "sort"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_gives_same_permutation(name, dtype):
    g = torch.Generator().manual_seed(4)
    b, c = 32, 64
    # integer values, exactly representable in fp16 and bf16; distinct per row
    z = torch.stack([torch.randperm(c, generator=g) for _ in range(b)]).float() - c / 2
    y = torch.randint(0, c, (b,), generator=g)
    ref = L.PROCESSORS[name](z, y)
    out = L.PROCESSORS[name](z.to(dtype), y)
    assert out.dtype == dtype
    assert torch.equal(out.float(), ref)
    # with ties (values in a small range): the same tie rule in every dtype
    zt = torch.randint(-3, 4, (b, c), generator=g).float()
    assert torch.equal(L.PROCESSORS[name](zt.to(dtype), y).float(), L.PROCESSORS[name](zt, y))


def test_large_half_values_do_not_overflow():
    z = torch.tensor([[60000.0, -60000.0, 100.0], [-65000.0, 65000.0, 0.0]], dtype=torch.float16)
    y = torch.tensor([2, 0])
    for name in ("swap", "sort"):
        out = L.PROCESSORS[name](z, y)
        assert torch.isfinite(out).all()
        assert torch.equal(out.gather(1, y[:, None]).squeeze(1), z.max(1).values)
    assert torch.isfinite(L.zscore(z)).all()


@pytest.mark.parametrize("name", ["swap", "sort"])
def test_gradient_flows_through_permutation(name):
    z, y = _random(b=6, c=7, seed=5)
    z.requires_grad_(True)
    w = torch.randn_like(z)
    out = L.PROCESSORS[name](z, y)
    (out * w).sum().backward()
    # out[i, j] = z[i, perm[i, j]]  =>  grad[i, perm[i, j]] = w[i, j]
    zd, od = z.detach(), out.detach()
    perm = torch.stack([(zd[i][None, :] == od[i][:, None]).float().argmax(1) for i in range(z.shape[0])])
    expected = torch.zeros_like(z).scatter_(1, perm, w)
    assert torch.allclose(z.grad, expected)


def test_zscore_matches_definition():
    z, _ = _random(seed=6)
    out = L.zscore(z)
    expected = (z - z.mean(1, keepdim=True)) / (1e-7 + z.std(1, unbiased=True, keepdim=True))
    assert torch.allclose(out, expected, rtol=1e-12, atol=0)
    assert torch.allclose(out.std(1), torch.ones(z.shape[0], dtype=z.dtype), atol=1e-6)
    h = L.zscore(z.to(torch.bfloat16))
    assert h.dtype == torch.bfloat16
    assert torch.allclose(h.double(), expected, atol=0.05)


def test_processor_table_and_unknown_name():
    assert set(L.PROCESSORS) == {"none", "swap", "sort", "zscore"}
    z, y = _random(b=4, c=5)
    assert L.get_processor("none")(z, y) is z
    assert torch.equal(L.get_processor("sort")(z, y), L.sort(z, y))
    with pytest.raises(ValueError, match="valid: none, sort, swap, zscore"):
        L.get_processor("sorted")
    with pytest.raises(ValueError, match="needs target"):
        L.get_processor("swap")(z, None)


def test_bad_inputs_raise_value_error_with_shapes():
    z, y = _random(b=4, c=5)
    with pytest.raises(ValueError, match=r"logits must be 2-D.*\(4, 5, 1\)"):
        L.swap(z[..., None], y)
    with pytest.raises(ValueError, match=r"target must have shape \[B\] = \[4\].*\(4, 5\).*\(3,\)"):
        L.sort(z, y[:3])
    with pytest.raises(ValueError, match=r"target values must lie in \[0, 4\].*\[0, 5\]"):
        L.swap(z, torch.tensor([0, 1, 2, 5]))
    with pytest.raises(ValueError, match=r"target must have an integer dtype.*torch.float32"):
        L.sort(z, y.float())
    with pytest.raises(ValueError, match="floating dtype"):
        L.sort(z.long(), y)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    z, y = _random()
    for name in ("swap", "sort", "zscore"):
        out = L.PROCESSORS[name](z.cuda(), y.cuda())
        assert torch.allclose(out.cpu(), L.PROCESSORS[name](z, y))
