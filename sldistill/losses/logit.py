r"""Logit distillation losses: ``kd``, ``dkd``, ``mlkd``, ``sld``, as pure functions.

Call them from any training loop. Notation: student logits ``s``, teacher logits ``t``
(``[B, C]``), labels ``y`` (``[B]``), ``p^T = softmax(t / T)``, ``q^T = softmax(s / T)``,
``KL(p || q) = sum_c p_c (log p_c - log q_c)``. Teacher logits are treated as constants
(detached); gradients reach the student logits only.

Logit processors (see :mod:`sldistill.logits`): ``processor="sort"`` or ``"swap"`` transforms
the teacher's logits, ``"zscore"`` (logit standardization) transforms both the student's and
the teacher's logits before the distillation term; cross-entropy always reads the raw student
logits. So ``kd(..., processor="sort")`` is KD+sort, ``processor="zscore"`` is KD+LS, and the
same for ``dkd``, exactly as released.

Implementation notes (same values as the released code, fewer passes):

* Several temperatures are handled in one stacked pass over ``[nT, B, C]``: one exponential
  pass ``exp((z - max z) / T)`` for the student and one for the teacher (in row blocks of a
  few MB for large inputs). With ``x = s / T``, ``u = t / T`` the KL is
  ``sum_c p_c (u_c - x_c) - logsumexp(u) + logsumexp(x)``, ``logsumexp = max / T + log Z``.
  Its gradient, ``sum_T w_T / T (q^T - p^T)``, is formed in the same forward by one batched
  matrix product (a custom autograd function). For SLD the cross-entropy (the ``T = 1``
  slot) and the swap pseudo-teacher term reuse the student's exponentials in that function.
* Swap and sort permute each row and therefore commute with softmax.
* The SLD pseudo-teacher term ``KL(swap(q) || q)`` only involves the two exchanged entries
  ``a = argmax(s)`` and ``y``: it equals ``(q_a - q_y) (log q_a - log q_y)
  = (q_a - q_y) (s_a - s_y) / T``, zero on rows where ``a == y``.
* 16-bit logits are computed in float32 (the returned losses are float32 then).
* Input validation (2-D floating logits, equal shapes, 1-D integer labels of length ``B``)
  is always done; the label *range* is checked only for CPU tensors, so that no device
  synchronisation happens on an accelerator. Nothing here calls ``.item()``.
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sldistill.logits import (
    PROCESSORS,
    check_logits,
    check_same_shape,
    check_target,
    get_processor,
    zscore as _zscore,
)

__all__ = ["kd", "dkd", "mlkd", "sld", "MLKD_EXTRA_TEMPERATURES"]

Temperatures = Union[float, Sequence[float]]

#: temperatures the released MLKD uses besides ``KD.TEMPERATURE``, in release order
MLKD_EXTRA_TEMPERATURES: tuple[float, ...] = (3.0, 5.0, 2.0, 6.0)


# --------------------------------------------------------------------------- helpers


def _compute(x: Tensor) -> Tensor:
    """16-bit -> float32 (losses are evaluated in at least single precision)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype :func:`_compute` gives ``x``."""
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


@functools.lru_cache(maxsize=128)
def _const(values: tuple[float, ...], dtype: torch.dtype, device: torch.device, column: bool = False) -> Tensor:
    """A small constant tensor (``[n]``, or ``[n, 1]`` with ``column``), built once per
    arguments: copying a Python list to an accelerator would synchronise the host on every
    call. Never modified in place."""
    with torch.inference_mode(False):  # a normal tensor even if first built in inference mode
        out = torch.tensor(values, dtype=dtype, device=device)
        return out[:, None] if column else out


def _temps(temperature: Temperatures, name: str = "temperature") -> list[float]:
    if isinstance(temperature, (int, float)) and not isinstance(temperature, bool):
        temps = [float(temperature)]
    else:
        try:
            temps = [float(t) for t in temperature]  # type: ignore[union-attr]
        except TypeError:
            raise ValueError(f"{name} must be a positive number or a sequence of them, got {temperature!r}") from None
    if not temps or any(not (t > 0) for t in temps):
        raise ValueError(f"{name} must be a positive number or a non-empty sequence of them, got {temperature!r}")
    return temps


def _check_processor(name: str, arg: str = "processor") -> str:
    if not isinstance(name, str) or name not in PROCESSORS:
        raise ValueError(f"{arg} must be one of {', '.join(sorted(PROCESSORS))}; got {name!r}")
    return name


class _Extras(NamedTuple):
    """What :class:`_FusedKL` computes besides the KD term (all off by default)."""

    #: swap the teacher's arg-max and label entries first (the ``"swap"`` processor; needs labels)
    teacher_swap: bool = False
    #: index of ``T = 1`` among the temperatures for the cross-entropy output; ``-1``: no CE output
    ce_index: int = -1
    #: the CE output is ``ce_weight * sum_n CE_n`` (the caller folds ``1 / B`` in)
    ce_weight: float = 0.0
    #: swap pseudo-teacher output: 0 off, 1 on (gradient through both sides), 2 pseudo-teacher detached
    pseudo: int = 0


class _Coefs(NamedTuple):
    """Constant inputs of :class:`_FusedKL` (no gradient)."""

    inv: Tensor  #: ``[nT, 1]``: ``1 / T``
    w: Tensor  #: ``[nT, 1 or N]``: weights of the KD term
    wi: Tensor  #: ``w / T``
    #: ``[n, nT, 1 or N]``: the constant rows of the gradients' coefficients (see ``_fused_block``):
    #: KD (``w / T``), CE (``ce_weight`` at ``T = 1``), detached pseudo-teacher (none, zeros)
    static: Tensor
    #: ``[1, 1]``: ``-ce_weight``, the cross-entropy gradient's entry at the label
    ce_neg: Tensor


def _make_coefs(opts: _Extras, inv: Tensor, weight: Tensor) -> _Coefs:
    """:class:`_Coefs` from ``inv`` (``[nT]``) and ``weight`` (``[nT, 1 or N]``)."""
    inv = inv.unsqueeze(1)
    wi = weight * inv
    rows = [wi]
    if opts.ce_index >= 0:
        ce = torch.zeros_like(inv)
        ce[opts.ce_index] = opts.ce_weight
        rows.append(ce)
    if opts.pseudo == 2:
        rows.append(torch.zeros_like(inv))
    ce_neg = inv.new_full((1, 1), -opts.ce_weight)
    return _Coefs(inv, weight, wi, torch.stack(torch.broadcast_tensors(*rows)), ce_neg)


@functools.lru_cache(maxsize=64)
def _const_coefs(
    opts: _Extras, inv: tuple[float, ...], weight: tuple[float, ...], dtype: torch.dtype, device: torch.device
) -> _Coefs:
    """:func:`_make_coefs` for per-temperature weights, built once per arguments (see :func:`_const`)."""
    with torch.inference_mode(False):
        return _make_coefs(
            opts, torch.tensor(inv, dtype=dtype, device=device), torch.tensor(weight, dtype=dtype, device=device)[:, None]
        )


#: Rows are processed in blocks whose ``[rows, nT, C]`` exponentials take about this many bytes:
#: large enough to amortise the per-op overhead, small enough to stay in cache and to be
#: recycled by the host allocator (glibc maps a block above 32 MB freshly on every call, and
#: page-faulting it in costs more than the arithmetic).
_BLOCK_BYTES = 4 << 20


class _FusedKL(torch.autograd.Function):
    r"""The weighted multi-temperature KD term and, on the same student logits, optionally the
    cross-entropy and the SLD swap pseudo-teacher term, from one exponential pass per side.

    Inputs: ``opts`` (:class:`_Extras`), ``coefs`` (:class:`_Coefs`: ``1 / T`` and the KD
    weights ``[nT, 1]`` or ``[nT, N]``), labels ``y`` (``[N]`` or ``None``), then ``k``
    student views and ``k`` teacher views (``[B, C]`` each, concatenated along the batch: ``N = k B``). Teacher views
    are constants. Outputs ``(kd, ce, pseudo)``, ``None`` for a disabled term. With
    ``x = s / T``, ``u = t / T``, ``p = softmax(u)``, ``q = softmax(x)``, ``lse = logsumexp``:

    * ``kd = sum_{T,n} w_{T,n} KL(p || q)``, ``KL = sum_c p_c (u_c - x_c) - lse(u) + lse(x)``.
      With ``P = sum_T (w_T / T) p^T`` (``[N, C]``) the first part is ``sum_{n,c} P (t - s)``,
      so no ``[nT, N, C]`` product is formed; the gradient is ``sum_T (w_T / T) q^T - P``.
    * ``ce = ce_weight * sum_n (lse(s_n) - s_{n,y})`` (the ``T = 1`` slot); gradient
      ``ce_weight * (q^1 - onehot(y))``.
    * ``pseudo = sum_{T,n} w_T (q_a - q_y) D / T`` with ``a = argmax(s)``, ``D = s_a - s_y``:
      the closed form of ``KL(swap(q) || q)`` (only the two exchanged entries differ). Its
      gradient is dense in ``q^T`` (coefficient ``-w_T D (q_a - q_y) / T^2``) plus entries at
      ``a`` and ``y``; with the pseudo-teacher detached only the entries from ``D`` remain.

    Exponentials: with ``m = max_c s_c``, ``e^T = exp((s - m) / T)`` fills an ``[nT, rows, C]``
    block (rows in blocks of about ``_BLOCK_BYTES``); ``Z = sum_c e``, ``lse = m / T + log Z``, ``q = e / Z`` and, because ``e`` is exactly
    1 at the arg-max, ``q_a = 1 / Z``. Each gradient above is ``sum_T coef[n, T] e^T[n, :]``
    plus a few entries, i.e. one batched matrix product per block, so all are formed in the
    forward (one ``[N, C]`` slice per output); the backward combines them with the incoming
    gradients, which keeps the outputs' gradients separate and exact.
    """

    @staticmethod
    def forward(ctx, opts: _Extras, coefs: _Coefs, y: Optional[Tensor], *views: Tensor):  # type: ignore[override]
        ctx.set_materialize_grads(False)
        k = len(views) // 2
        if k == 1:
            s, t = _compute(views[0]), _compute(views[1])
        else:  # one copy for all views
            st = _compute(torch.cat(views))
            s, t = st[: st.shape[0] // 2], st[st.shape[0] // 2 :]
        n_rows, n_cls = s.shape
        inv, weight, wi, static, ce_neg = coefs
        n_t = inv.shape[0]
        yy = None if y is None else y.unsqueeze(1)
        active = [0] + ([1] if opts.ce_index >= 0 else []) + ([2] if opts.pseudo else [])
        grads = s.new_empty(n_rows, len(active), n_cls) if any(ctx.needs_input_grad[3 : 3 + k]) else None
        rows = max(1, min(n_rows, _BLOCK_BYTES // max(1, n_t * n_cls * s.element_size())))
        buf = s.new_empty(n_t, rows, n_cls)
        if rows == n_rows:
            acc = _fused_block(opts, inv, weight, wi, s, t, yy, buf, grads, static, ce_neg)
        else:
            acc = [None, None, None]
            for i in range(0, n_rows, rows):
                j = min(i + rows, n_rows)

                def part(x: Optional[Tensor], dim: int = 0) -> Optional[Tensor]:
                    return x if x is None or x.shape[dim] == 1 else x.narrow(dim, i, j - i)

                values = _fused_block(
                    opts, inv, part(weight, 1), part(wi, 1), part(s), part(t), part(yy), buf[:, : j - i],
                    part(grads), part(static, 2), ce_neg,
                )
                acc = [v if a is None else a + v for a, v in zip(acc, values)]
            if n_rows == 0:
                acc = [s.new_zeros(()) if o in active else None for o in range(3)]
        if grads is not None:
            ctx.save_for_backward(grads)
        ctx.active = active
        ctx.split = [v.shape[0] for v in views[:k]]
        ctx.dtypes = [v.dtype for v in views[:k]]
        ctx.cast = any(dt != s.dtype for dt in ctx.dtypes)  # 16-bit inputs: gradients cast back
        return tuple(acc)

    @staticmethod
    def backward(ctx, *g_out: Optional[Tensor]):  # type: ignore[override]
        n_views = len(ctx.split)
        saved = ctx.saved_tensors
        if not saved or all(g is None for g in g_out):
            return (None,) * (3 + 2 * n_views)
        grads = saved[0]  # [N, n_active, C]
        grad = None
        for i, o in enumerate(ctx.active):
            if g_out[o] is not None:
                grad = grads[:, i] * g_out[o] if grad is None else grad.addcmul_(grads[:, i], g_out[o])
        out = grad.split_with_sizes(ctx.split) if n_views > 1 else (grad,)
        if ctx.cast:
            out = tuple(g if g.dtype == dt else g.to(dt) for g, dt in zip(out, ctx.dtypes))
        return (None, None, None, *out, *([None] * n_views))


def _exp_block(x: Tensor, inv3: Tensor, out: Tensor) -> Tensor:
    """``out[k, n, c] = exp(x[n, c] * inv3[k])`` (``inv3`` ``[nT, 1, 1]``, ``out`` ``[nT, n, C]``)."""
    return torch.mul(x, inv3, out=out).exp_()


def _row_argmax(x: Tensor) -> Tensor:
    """``x.argmax(1, keepdim=True)`` of a 2-D tensor without gradient. Contiguous float CPU
    tensors go through NumPy, whose arg-max kernel is several times faster than torch's on
    rows of this size; both return the first maximal index (a NaN counts as the maximum)."""
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and x.is_contiguous():
        return torch.from_numpy(x.numpy().argmax(1).astype(np.int64, copy=False)).unsqueeze(1)
    return x.argmax(1, keepdim=True)


def _fused_block(
    opts: _Extras, inv: Tensor, w: Tensor, wi: Tensor, s: Tensor, t: Tensor, yy: Optional[Tensor],
    buf: Tensor, grads: Optional[Tensor], static: Optional[Tensor], ce_neg: Tensor,
) -> list[Optional[Tensor]]:
    """One block of rows of :class:`_FusedKL`: returns its ``[kd, ce, pseudo]`` partial values
    and writes the outputs' gradients w.r.t. ``s`` into ``grads`` (``[rows, n_active, C]``).
    ``buf`` is ``[nT, rows, C]``, ``inv`` ``[nT, 1]``, ``w`` and ``wi = w / T`` are
    ``[nT, 1 or rows]``, ``static`` holds the constant coefficient rows (``[n, nT, 1 or rows]``);
    per-row quantities below are ``[nT, rows]``."""
    # teacher, shifted by its max: d_t = t - max(t), then swapped in place (the arg-max's 0
    # goes to the label, the label's value to the arg-max), as processor "swap" would
    inv3 = inv.unsqueeze(2)
    if opts.teacher_swap:
        a_t = _row_argmax(t)
        d_t = t - t.gather(1, a_t)
        d_y = d_t.gather(1, yy)
        d_t.scatter_(1, yy, 0.0).scatter_(1, a_t, d_y)
    else:
        d_t = t - t.amax(1, keepdim=True)
    e = _exp_block(d_t, inv3, buf)  # [nT, rows, C]
    z_t = e.sum(-1)
    # P = sum_T w_T/T p^T: weight the teacher's exponentials in place and sum over T
    p_bar = e.mul_((wi / z_t).unsqueeze(2)).sum(0)
    # student (the buffer is reused)
    if opts.pseudo:
        a_s = _row_argmax(s)
        d_s = s - s.gather(1, a_s)
    else:
        d_s = s - s.amax(1, keepdim=True)
    e = _exp_block(d_s, inv3, buf)
    z_s = e.sum(-1)
    # sum_c P_c = sum_T w_T / T, so the max shifts' part of lse(x) - lse(u) folds into the dot
    kd = torch.dot(p_bar.flatten(), (d_t - d_s).flatten()) + (w * torch.log(z_s / z_t)).sum()
    ce = pseudo = None
    if opts.ce_index >= 0 or opts.pseudo:
        d_y = d_s.gather(1, yy).t()  # s_y - s_a <= 0 ([1, rows]), 0 where the arg-max is the label
    if opts.ce_index >= 0:
        ce = (z_s[opts.ce_index].log() - d_y).sum() * opts.ce_weight
    if opts.pseudo:
        e_y = e.gather(2, yy.expand(e.shape[0], -1, 1)).squeeze(2)  # exp((s_y - s_a) / T)
        q_gap = (1.0 - e_y) / z_s  # q_a - q_y
        h = wi * q_gap
        pseudo = -(h * d_y).sum()
    if grads is not None:
        # dense parts: coefficients of e^T / Z, one [nT, rows] slice per active output
        coef = static / z_s
        if opts.pseudo == 1:
            coef = torch.cat((coef, (h * inv * d_y / z_s).unsqueeze(0)))
        torch.bmm(coef.permute(2, 0, 1).contiguous(), e.transpose(0, 1), out=grads)
        grads[:, 0].sub_(p_bar)
        # sparse parts: entries at the label and at the arg-max
        o = 1
        if opts.ce_index >= 0:
            grads[:, o].scatter_add_(1, yy, ce_neg.expand_as(yy))
            o += 1
        if opts.pseudo:
            h_sum = h.sum(0, keepdim=True)
            at_a, at_y = h_sum, -h_sum
            if opts.pseudo == 1:  # from q_a - q_y: (q_a (1_a - q) - q_y (1_y - q)) / T, times D = -d_y
                wi2 = wi * inv
                at_a = at_a - d_y * (wi2 / z_s).sum(0, keepdim=True)
                at_y = at_y + d_y * (wi2 * (e_y / z_s)).sum(0, keepdim=True)
            grads[:, o].scatter_add_(1, a_s, at_a.t()).scatter_add_(1, yy, at_y.t())
    return [kd, ce, pseudo]


def _fused_kl(
    s: Tensor, t: Tensor, temps: Sequence[float], weight: Tensor
) -> Tensor:
    r"""``sum_{T, n} weight[T, n] * KL(softmax(t_n / T) || softmax(s_n / T))`` (one fused pass).

    Args:
        s: student logits ``[N, C]`` (graph kept).
        t: teacher logits ``[N, C]`` (constant).
        temps: ``nT`` temperatures.
        weight: ``[nT, N]`` or ``[nT, 1]`` weights (no gradient).
    """
    inv = _const(tuple(1.0 / T for T in temps), _compute_dtype(s), s.device)
    return _FusedKL.apply(_Extras(), _make_coefs(_Extras(), inv, weight.detach()), None, s, t.detach())[0]


def _prepare_pair(student: Tensor, teacher: Tensor, sname: str = "student", tname: str = "teacher") -> None:
    check_logits(sname, student)
    check_logits(tname, teacher)
    check_same_shape(sname, student, tname, teacher)


def _apply_processor(
    processor: str, s: Tensor, t: Tensor, target: Optional[Tensor]
) -> tuple[Tensor, Tensor]:
    """Processed (student, teacher): zscore acts on both, swap/sort on the teacher."""
    if processor == "none":
        return s, t
    if processor == "zscore":
        return _zscore(s), _zscore(t)
    if target is None:
        raise ValueError(f"processor {processor!r} needs target labels; pass target=")
    return s, get_processor(processor)(t, target)


# --------------------------------------------------------------------------- KD


def kd(
    student: Tensor,
    teacher: Tensor,
    temperature: Temperatures = 4.0,
    *,
    target: Optional[Tensor] = None,
    processor: str = "none",
) -> Tensor:
    r"""Vanilla KD term: ``sum_T T^2 * mean_b KL(softmax(t_b / T) || softmax(s_b / T))``.

    KL is summed over classes and averaged over the batch; a sequence of temperatures sums
    the terms (computed in one stacked pass). The weight and the cross-entropy are the
    caller's: the released KD loss is ``0.1 * CE(s, y) + 0.9 * kd(s, t, 4)`` (mdistiller/SLD
    defaults; logit-standardization-KD uses ``T = 2`` and a weight of 9).

    Args:
        student: ``[B, C]`` student logits.
        teacher: ``[B, C]`` teacher logits (detached).
        temperature: ``T`` or a sequence of temperatures (default 4).
        target: ``[B]`` labels; needed for ``processor`` ``"sort"`` / ``"swap"``.
        processor: ``"none"`` (default), ``"sort"`` / ``"swap"`` (teacher), ``"zscore"`` (both).

    Returns:
        A 0-d tensor.
    """
    _prepare_pair(student, teacher)
    _check_processor(processor)
    temps = _temps(temperature)
    if target is not None:
        target = check_target(target, student, "student")
    s, t = _apply_processor(processor, _compute(student), _compute(teacher.detach()), target)
    w = _const(tuple(T * T for T in temps), s.dtype, s.device)[:, None] / s.shape[0]
    return _fused_kl(s, t, temps, w)


# --------------------------------------------------------------------------- DKD


def dkd(
    student: Tensor,
    teacher: Tensor,
    target: Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    *,
    processor: str = "none",
) -> Tensor:
    r"""Decoupled KD as released: ``alpha * TCKD + beta * NCKD``.

    With ``p = softmax(t / T)``, ``q = softmax(s / T)``:

    * TCKD = ``T^2 * mean_b KL([p_y, 1 - p_y] || [q_y, 1 - q_y])`` (binary target/non-target);
    * NCKD = ``T^2 * mean_b KL(p_{\setminus y} || q_{\setminus y})`` over the non-target
      classes, each renormalised (the release masks the target logit with ``-1000``; here it
      is excluded exactly, which equals the release in float64 and cannot overflow in fp16).

    Defaults ``alpha = 1``, ``beta = 8``, ``T = 4`` (mdistiller CIFAR-100). The released
    training loss is ``CE_WEIGHT * CE(s, y) + min(epoch / WARMUP, 1) * dkd(...)``; the warm-up
    factor is the caller's (the ``DKD`` distiller applies it).

    Args:
        student, teacher: ``[B, C]`` logits, ``C >= 2``.
        target: ``[B]`` integer labels.
        alpha, beta: weights of TCKD and NCKD.
        temperature: ``T``.
        processor: ``"none"``, ``"sort"`` / ``"swap"`` (teacher: DKD+sort) or ``"zscore"``
            (both: DKD+LS).
    """
    _prepare_pair(student, teacher)
    _check_processor(processor)
    (T,) = _temps(temperature)
    if student.shape[1] < 2:
        raise ValueError(f"dkd needs at least 2 classes; student has shape {tuple(student.shape)}")
    y = check_target(target, student, "student")
    s, t = _apply_processor(processor, _compute(student), _compute(teacher.detach()), y)
    gt = torch.zeros_like(s, dtype=torch.bool).scatter_(1, y.unsqueeze(1), True)
    scale = T * T / s.shape[0]

    ls = torch.log_softmax(s / T, dim=1)
    ls_gt = ls.gather(1, y.unsqueeze(1))
    ls_other = torch.logsumexp(ls.masked_fill(gt, float("-inf")), dim=1, keepdim=True)
    with torch.no_grad():
        lt = torch.log_softmax(t / T, dim=1)
        lt_gt = lt.gather(1, y.unsqueeze(1))
        lt_other = torch.logsumexp(lt.masked_fill(gt, float("-inf")), dim=1, keepdim=True)
        lt_nc = (lt - lt_other).masked_fill(gt, 0.0)
        pt_nc = lt_nc.exp().masked_fill(gt, 0.0)
    tckd = (lt_gt.exp() * (lt_gt - ls_gt) + lt_other.exp() * (lt_other - ls_other)).sum() * scale
    ls_nc = (ls - ls_other).masked_fill(gt, 0.0)
    nckd = (pt_nc * (lt_nc - ls_nc)).sum() * scale
    return alpha * tckd + beta * nckd


# --------------------------------------------------------------------------- MLKD


def _median_le(x: Tensor) -> Tensor:
    """Boolean mask ``x <= median(x)`` with the linearly interpolated median (``np.percentile(x, 50)``)."""
    xf = x if x.dtype in (torch.float32, torch.float64) else x.float()
    return xf <= torch.quantile(xf, 0.5)


def _correlation_loss(ps: Tensor, pt: Tensor, *, by_class: bool, col_weight: Tensor) -> Tensor:
    """``sum_k sum_ij (M^t_k - M^s_k)_ij^2 * col_weight[k, j]`` with ``M = P^T P`` (class
    correlation, ``by_class``) or ``M = P P^T`` (batch correlation); ``ps``, ``pt``: ``[nT, B, C]``."""
    if by_class:
        ms = ps.transpose(1, 2) @ ps
        with torch.no_grad():
            mt = pt.transpose(1, 2) @ pt
    else:
        ms = ps @ ps.transpose(1, 2)
        with torch.no_grad():
            mt = pt @ pt.transpose(1, 2)
    return ((mt - ms).pow(2) * col_weight[:, None, :]).sum()


def mlkd(
    student_weak: Tensor,
    student_strong: Tensor,
    teacher_weak: Tensor,
    teacher_strong: Tensor,
    target: Tensor,
    *,
    temperature: float = 4.0,
    ce_weight: float = 0.1,
    kd_weight: float = 0.9,
    processor: str = "none",
    clean: bool = False,
) -> dict[str, Tensor]:
    r"""Multi-level logit distillation (MLKD) on weak/strong views, as released.

    Temperatures ``Ts = (T, 3, 5, 2, 6)`` with ``T = temperature``. From the weak teacher
    view: the sample mask ``m_b = [conf_b <= median(conf)]`` with ``conf_b = max_c
    softmax(t^w_b)_c``, and the class mask ``k_c = [sum_b softmax(t^w_b)_c <= median]``.

    * ``loss_ce = ce_weight * (CE(s^w, y) + CE(s^s, y))``
    * ``loss_kd = kd_weight * sum_{T in Ts} [ mean(m) * kd(s^w, t^w, T) + kd(s', t', T) ]``
      where ``(s', t')`` is the strong pair for ``T in (T, 3, 5)`` and -- the release's
      quirk -- the *weak* pair for ``T in (2, 6)``;
    * ``loss_cc = kd_weight * sum_T mean(k) * sum_ij (G^t - G^s)_ij^2 / C`` with the class
      correlation ``G = P^T P``, ``P = softmax(logits^w / T)``;
    * ``loss_bc = kd_weight * sum_T mean(m) * sum_ij (H^t - H^s)_ij^2 / B`` with the batch
      correlation ``H = P P^T``.

    In the release the masks multiply already-averaged losses, so they act as the scalars
    ``mean(m)`` / ``mean(k)`` (about 1/2); the strong-view class/batch terms are computed but
    not returned, so they are absent here too.

    ``clean=True`` is this toolkit's corrected variant: the masks weight each sample's KL
    (``sum_b m_b KL_b / B``), each class column of the class correlation and each sample
    column of the batch correlation (normalisations as above, so that an all-ones mask gives
    the unmasked loss), and every strong-view term reads the strong logits.

    ``processor`` acts on the logits entering the KL terms (``"zscore"``: student and
    teacher, as in the logit-standardization release; ``"sort"``/``"swap"``: teacher). The
    masks and the correlation terms read the raw logits.

    Returns:
        ``{"loss_ce", "loss_kd", "loss_cc", "loss_bc"}``, each already weighted; the training
        loss is their sum.
    """
    names = ("student_weak", "student_strong", "teacher_weak", "teacher_strong")
    tensors = (student_weak, student_strong, teacher_weak, teacher_strong)
    for n, x in zip(names, tensors):
        check_logits(n, x)
    for n, x in zip(names[1:], tensors[1:]):
        check_same_shape("student_weak", student_weak, n, x)
    _check_processor(processor)
    (T,) = _temps(temperature)
    y = check_target(target, student_weak, "student_weak")
    sw, ss = _compute(student_weak), _compute(student_strong)
    tw, ts = _compute(teacher_weak.detach()), _compute(teacher_strong.detach())
    B, C = sw.shape
    temps = [T, *MLKD_EXTRA_TEMPERATURES]
    dt, dev = sw.dtype, sw.device

    with torch.no_grad():
        prob_tw = torch.softmax(tw, dim=1)
        sample_mask = _median_le(prob_tw.amax(dim=1)).to(dt)  # [B]
        class_mask = _median_le(prob_tw.sum(dim=0)).to(dt)  # [C]

    loss_ce = ce_weight * (F.cross_entropy(sw, y) + F.cross_entropy(ss, y))

    kd_sw, kd_tw = _apply_processor(processor, sw, tw, y)
    kd_ss, kd_ts = _apply_processor(processor, ss, ts, y)
    base = _const(tuple(kd_weight * t * t for t in temps), dt, dev)[:, None] / B  # [5, 1]
    if clean:
        w_weak = base * sample_mask[None, :]
        loss_kd = _fused_kl(kd_sw, kd_tw, temps, w_weak) + _fused_kl(kd_ss, kd_ts, temps, base)
    else:
        from_weak = _const((0.0, 0.0, 0.0, 1.0, 1.0), dt, dev)[:, None]
        w_weak = base * (sample_mask.mean() + from_weak)
        loss_kd = _fused_kl(kd_sw, kd_tw, temps, w_weak) + _fused_kl(kd_ss, kd_ts, temps[:3], base[:3])

    inv = _const(tuple(1.0 / t for t in temps), dt, dev)[:, None, None]
    ps = torch.softmax(sw.unsqueeze(0) * inv, dim=-1)
    with torch.no_grad():
        pt = torch.softmax(tw.unsqueeze(0) * inv, dim=-1)
    nT = len(temps)
    if clean:
        cc_w = (kd_weight / C) * class_mask.expand(nT, C)
        bc_w = (kd_weight / B) * sample_mask.expand(nT, B)
    else:
        cc_w = (kd_weight / C) * class_mask.mean().expand(nT, C)
        bc_w = (kd_weight / B) * sample_mask.mean().expand(nT, B)
    loss_cc = _correlation_loss(ps, pt, by_class=True, col_weight=cc_w)
    loss_bc = _correlation_loss(ps, pt, by_class=False, col_weight=bc_w)
    return {"loss_ce": loss_ce, "loss_kd": loss_kd, "loss_cc": loss_cc, "loss_bc": loss_bc}


# --------------------------------------------------------------------------- SLD


def sld(
    student_weak: Tensor,
    student_strong: Tensor,
    teacher_weak: Tensor,
    teacher_strong: Tensor,
    target: Tensor,
    epoch: int,
    *,
    ce_weight: float = 0.1,
    kd_weight: float = 0.9,
    temperatures: Sequence[float] = (1, 2, 3, 4, 5, 6),
    gamma: float = 150,
    detach_pseudo_teacher: bool = False,
    teacher_processor: str = "swap",
    student_processor: str = "swap",
) -> dict[str, Tensor]:
    r"""Swapped Logit Distillation (SLD) on weak/strong views, as released.

    For each view ``v`` (weak, strong), with student ``s^v``, teacher ``t^v``, ``B`` samples:

    * ``loss_ce = ce_weight * (CE(s^w, y) + CE(s^s, y))``;
    * ``loss_kd = kd_weight * sum_v sum_T T^2 * mean_b KL(softmax(P_t(t^v) / T) || softmax(s^v / T))``
      with the teacher processor ``P_t`` (default swap);
    * ``loss_pseudo`` (only when ``epoch > gamma``; zero before) =
      ``kd_weight * sum_v sum_T T^2 * mean_b KL(softmax(P_s(s^v) / T) || softmax(s^v / T))``
      with the student processor ``P_s`` (default swap): the student's own swapped logits act
      as a pseudo-teacher.

    Released behaviour that differs from the paper's text, kept as defaults: the
    pseudo-teacher ``swap(s^v)`` is *not* detached (gradient flows through both sides of its
    KL; ``detach_pseudo_teacher=True`` stops it), the temperatures 1..6 are fixed (the
    ``KD.TEMPERATURE`` key is ignored by the release) and ``gamma`` is 150 whatever the run
    length. ``epoch`` counts from 1.

    Processors: ``"swap"`` / ``"sort"`` / ``"none"`` on either side; ``teacher_processor=
    "zscore"`` standardises teacher and student logits in the teacher term;
    ``student_processor="zscore"`` uses ``zscore(s)`` as the pseudo-teacher; ``"none"`` as
    the student processor makes the pseudo-teacher term zero.

    Returns:
        ``{"loss_ce", "loss_kd", "loss_pseudo"}``, each already weighted.
    """
    names = ("student_weak", "student_strong", "teacher_weak", "teacher_strong")
    tensors = (student_weak, student_strong, teacher_weak, teacher_strong)
    for n, x in zip(names, tensors):
        check_logits(n, x)
    for n, x in zip(names[1:], tensors[1:]):
        check_same_shape("student_weak", student_weak, n, x)
    _check_processor(teacher_processor, "teacher_processor")
    _check_processor(student_processor, "student_processor")
    temps = _temps(temperatures, "temperatures")
    # the label range is checked only if indexing with the labels fails (saves a host read)
    y1 = check_target(target, student_weak, "student_weak", check_range=False)
    try:
        return _sld_terms(
            student_weak, student_strong, teacher_weak, teacher_strong, y1, epoch, ce_weight, kd_weight, temps,
            gamma, detach_pseudo_teacher, teacher_processor, student_processor,
        )
    except (RuntimeError, IndexError, ValueError):
        check_target(target, student_weak, "student_weak")  # an out-of-range label: a ValueError naming it
        raise


def _sld_terms(
    student_weak: Tensor, student_strong: Tensor, teacher_weak: Tensor, teacher_strong: Tensor, y1: Tensor,
    epoch: int, ce_weight: float, kd_weight: float, temps: list[float], gamma: float,
    detach_pseudo_teacher: bool, teacher_processor: str, student_processor: str,
) -> dict[str, Tensor]:
    """The terms of :func:`sld` for validated inputs (labels ``y1`` not yet range-checked)."""
    B = student_weak.shape[0]
    y2 = torch.cat([y1, y1])  # labels of the two views, concatenated
    dt, dev = _compute_dtype(student_weak), student_weak.device
    pseudo_on = epoch > gamma and student_processor != "none"
    loss_pseudo: Optional[Tensor] = None

    if teacher_processor != "zscore":
        # The KD term reads the raw student logits: the cross-entropy (the T = 1 slot, added
        # with zero KD weight if 1 is not among the temperatures) and the swap pseudo-teacher
        # term share its exponentials, in one autograd function.
        fused_pseudo = pseudo_on and student_processor == "swap"
        pseudo = (2 if detach_pseudo_teacher else 1) if fused_pseudo else 0
        opts, coefs = _sld_plan(tuple(temps), float(kd_weight), float(ce_weight), B, teacher_processor == "swap",
                                pseudo, dt, dev)
        if teacher_processor == "sort":
            teachers = tuple(get_processor("sort")(x.detach(), y1) for x in (teacher_weak, teacher_strong))
        else:
            teachers = (teacher_weak, teacher_strong)  # constants for _FusedKL
        loss_kd, loss_ce, loss_pseudo = _FusedKL.apply(opts, coefs, y2, student_weak, student_strong, *teachers)
        if pseudo_on and not fused_pseudo:
            s = torch.cat([_compute(student_weak), _compute(student_strong)])
            loss_pseudo = _pseudo_term(s, y2, temps, kd_weight / B, student_processor, detach_pseudo_teacher)
    else:
        # logit standardisation: the KD term reads zscore(s), CE and pseudo-teacher the raw s
        s = torch.cat([_compute(student_weak), _compute(student_strong)])
        t = torch.cat([_compute(teacher_weak.detach()), _compute(teacher_strong.detach())])
        w = _const(tuple(kd_weight * T * T / B for T in temps), dt, dev, column=True)
        loss_kd = _fused_kl(_zscore(s), _zscore(t), temps, w)
        loss_ce = ce_weight * (F.cross_entropy(s[:B], y1) + F.cross_entropy(s[B:], y1))
        if pseudo_on:
            loss_pseudo = _pseudo_term(s, y2, temps, kd_weight / B, student_processor, detach_pseudo_teacher)
    if loss_pseudo is None:
        loss_pseudo = loss_kd.new_zeros(())
    return {"loss_ce": loss_ce, "loss_kd": loss_kd, "loss_pseudo": loss_pseudo}


@functools.lru_cache(maxsize=64)
def _sld_plan(
    temps: tuple[float, ...], kd_weight: float, ce_weight: float, batch: int, teacher_swap: bool, pseudo: int,
    dtype: torch.dtype, device: torch.device,
) -> tuple[_Extras, _Coefs]:
    """The :class:`_FusedKL` options and constants of an SLD call, built once per arguments:
    the cross-entropy is the ``T = 1`` slot (added with zero KD weight if 1 is not among the
    temperatures), the KD weights are ``kd_weight T^2 / B``."""
    k_temps = temps if 1.0 in temps else (*temps, 1.0)
    w_kd = tuple(kd_weight * T * T / batch for T in temps) + (0.0,) * (len(k_temps) - len(temps))
    opts = _Extras(teacher_swap=teacher_swap, ce_index=k_temps.index(1.0), ce_weight=ce_weight / batch, pseudo=pseudo)
    return opts, _const_coefs(opts, tuple(1.0 / T for T in k_temps), w_kd, dtype, device)


def _pseudo_term(
    s: Tensor, y: Tensor, temps: Sequence[float], scale: float, processor: str, detach: bool
) -> Tensor:
    """``sum_T scale * T^2 * sum_n KL(softmax(P(s_n) / T) || softmax(s_n / T))`` with the
    student processor ``P`` (any of them; the fused path covers ``swap`` after a raw-logit KD)."""
    inv = _const(tuple(1.0 / T for T in temps), s.dtype, s.device)
    w = _const(tuple(scale * T * T for T in temps), s.dtype, s.device, column=True)
    lse = torch.logsumexp(s.unsqueeze(0) * inv[:, None, None], dim=-1)  # [nT, N]
    yy = y.unsqueeze(1)
    if processor == "swap":
        s_y = s.gather(1, yy)
        s_a = s.gather(1, s.detach().argmax(dim=1, keepdim=True))
        diff = (s_a - s_y).squeeze(1)  # zero where argmax == label
        inv_c = inv[:, None]
        gap = torch.exp(s_a.squeeze(1) * inv_c - lse) - torch.exp(s_y.squeeze(1) * inv_c - lse)  # q_a - q_y
        if detach:
            gap = gap.detach()
        return (w * inv_c * gap * diff).sum()
    pseudo = get_processor(processor)(s, y)
    if detach:
        pseudo = pseudo.detach()
    lp = torch.log_softmax(pseudo.unsqueeze(0) * inv[:, None, None], dim=-1)
    lq = s.unsqueeze(0) * inv[:, None, None] - lse.unsqueeze(-1)
    return (w * (lp.exp() * (lp - lq)).sum(-1)).sum()
