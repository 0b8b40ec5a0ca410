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

* Several temperatures are handled in one stacked pass over ``[nT, B, C]``: one fused
  softmax for the student and one for the teacher. With ``x = s / T``, ``u = t / T`` the KL
  is ``sum_c p_c (u_c - x_c) - logsumexp(u) + logsumexp(x)``, where ``logsumexp = max + log Z``
  and ``1 / Z`` is the softmax at the arg-max (no second exponential pass). Its gradient,
  ``sum_T w_T / T (q^T - p^T)``, is formed in the same forward (a custom autograd function).
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
from typing import Optional, Sequence, Union

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


@functools.lru_cache(maxsize=128)
def _const(values: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """A small constant tensor, built once per (values, dtype, device): copying a Python list
    to an accelerator would synchronise the host on every call. Never modified in place."""
    with torch.inference_mode(False):  # a normal tensor even if first built in inference mode
        return torch.tensor(values, dtype=dtype, device=device)


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


class _StackedKL(torch.autograd.Function):
    """Forward computes the weighted multi-temperature KL, the student's per-temperature
    ``logsumexp`` and, at the same time, the gradient (``sum_T w_T / T * (q^T - p^T)``), so
    that each of the student and the teacher costs one fused softmax over ``[nT, N, C]``."""

    @staticmethod
    def forward(ctx, s: Tensor, t: Tensor, inv: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        ctx.set_materialize_grads(False)
        scale = inv[:, None, None]
        xs = s.unsqueeze(0) * scale
        q = torch.softmax(xs, dim=-1)
        # logsumexp(x) = max(x) + log Z and q at the arg-max is 1 / Z: no second exp pass;
        # for T > 0 the max and arg-max of s / T are those of s.
        s_max, s_arg = s.max(dim=1, keepdim=True)
        lse_s = s_max.squeeze(1) * inv[:, None] - torch.log(q.gather(-1, s_arg.expand(len(inv), -1, -1)).squeeze(-1))
        pt = torch.softmax(t.unsqueeze(0) * scale, dim=-1)
        t_max, t_arg = t.max(dim=1, keepdim=True)
        lse_t = t_max.squeeze(1) * inv[:, None] - torch.log(pt.gather(-1, t_arg.expand(len(inv), -1, -1)).squeeze(-1))
        # KL_T(n) = sum_c p (x_t - x_s) - lse_t + lse_s, with x_t - x_s = (t - s) / T
        kl = (pt * (t - s).unsqueeze(0)).sum(dim=-1) * inv[:, None] - lse_t + lse_s
        w = weight.expand_as(kl)
        value = (w * kl).sum()
        if not ctx.needs_input_grad[0]:
            return value, lse_s
        if weight.shape[1] == 1:  # per-temperature weights: two matrix-vector products
            coef = (weight.squeeze(1) * inv).unsqueeze(0)
            grad = (coef @ q.flatten(1) - coef @ pt.flatten(1)).view_as(s)
        else:
            grad = _weighted_sum(q - pt, w * inv[:, None])
        ctx.save_for_backward(grad, q, inv)
        return value, lse_s

    @staticmethod
    def backward(ctx, g_value: Optional[Tensor], g_lse: Optional[Tensor]):  # type: ignore[override]
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        grad, q, inv = ctx.saved_tensors
        out = None
        if g_value is not None:
            out = grad * g_value
        if g_lse is not None:
            extra = _weighted_sum(q, g_lse * inv[:, None])
            out = extra if out is None else out + extra
        return out, None, None, None


def _weighted_sum(x: Tensor, coef: Tensor) -> Tensor:
    """``sum_k coef[k, n] * x[k, n, :]`` for ``x`` ``[nT, N, C]`` and ``coef`` ``[nT, N]``."""
    return (x * coef.unsqueeze(-1)).sum(dim=0)


def _stacked_kl(s: Tensor, t: Tensor, temps: Sequence[float], weight: Tensor) -> tuple[Tensor, Tensor]:
    r"""``sum_{T, n} weight[T, n] * KL(softmax(t_n / T) || softmax(s_n / T))`` in one pass.

    Args:
        s: student logits ``[N, C]`` (graph kept).
        t: teacher logits ``[N, C]`` (no gradient).
        temps: ``nT`` temperatures.
        weight: ``[nT, N]`` or ``[nT, 1]`` weights (no gradient).

    Returns:
        ``(value, lse)`` with ``lse[k, n] = logsumexp(s_n / temps[k])`` (differentiable, reusable).
    """
    inv = _const(tuple(1.0 / T for T in temps), s.dtype, s.device)
    return _StackedKL.apply(s, t.detach(), inv, weight.detach())


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
    value, _ = _stacked_kl(s, t, temps, w)
    return value


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
        loss_kd = _stacked_kl(kd_sw, kd_tw, temps, w_weak)[0] + _stacked_kl(kd_ss, kd_ts, temps, base)[0]
    else:
        from_weak = _const((0.0, 0.0, 0.0, 1.0, 1.0), dt, dev)[:, None]
        w_weak = base * (sample_mask.mean() + from_weak)
        loss_kd = _stacked_kl(kd_sw, kd_tw, temps, w_weak)[0] + _stacked_kl(kd_ss, kd_ts, temps[:3], base[:3])[0]

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
    y1 = check_target(target, student_weak, "student_weak")
    B = student_weak.shape[0]

    s = torch.cat([_compute(student_weak), _compute(student_strong)], dim=0)  # [2B, C]
    t = torch.cat([_compute(teacher_weak.detach()), _compute(teacher_strong.detach())], dim=0)
    y = torch.cat([y1, y1]).unsqueeze(1)  # [2B, 1]
    dt, dev = s.dtype, s.device
    w = _const(tuple(kd_weight * T * T for T in temps), dt, dev)[:, None] / B

    # teacher term
    if teacher_processor == "zscore":
        s_t, t_p = _zscore(s), _zscore(t)
    else:
        s_t, t_p = s, get_processor(teacher_processor)(t, y.squeeze(1))
    loss_kd, lse = _stacked_kl(s_t, t_p, temps, w)

    # cross-entropy on both views
    loss_ce = ce_weight * (F.cross_entropy(s[:B], y1) + F.cross_entropy(s[B:], y1))

    # pseudo-teacher term
    if epoch > gamma and student_processor != "none":
        inv = _const(tuple(1.0 / T for T in temps), dt, dev)
        if teacher_processor == "zscore":
            lse = torch.logsumexp(s.unsqueeze(0) * inv[:, None, None], dim=-1)
        if student_processor == "swap":
            s_y = s.gather(1, y)  # [2B, 1]
            a = s.detach().argmax(dim=1, keepdim=True)
            s_a = s.gather(1, a)
            diff = (s_a - s_y).squeeze(1)  # [2B]; zero where argmax == label
            inv_c = inv[:, None]
            gap = torch.exp(s_a.squeeze(1) * inv_c - lse) - torch.exp(s_y.squeeze(1) * inv_c - lse)  # q_a - q_y
            if detach_pseudo_teacher:
                gap = gap.detach()
            loss_pseudo = (w * inv_c * gap * diff).sum()
        else:
            pseudo = get_processor(student_processor)(s, y.squeeze(1))
            if detach_pseudo_teacher:
                pseudo = pseudo.detach()
            lp = torch.log_softmax(pseudo.unsqueeze(0) * inv[:, None, None], dim=-1)
            lq = s.unsqueeze(0) * inv[:, None, None] - lse.unsqueeze(-1)
            loss_pseudo = (w * (lp.exp() * (lp - lq)).sum(-1)).sum()
    else:
        loss_pseudo = s.new_zeros(())
    return {"loss_ce": loss_ce, "loss_kd": loss_kd, "loss_pseudo": loss_pseudo}
