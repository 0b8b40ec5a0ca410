r"""Logit distillation losses: ``kd``, ``dkd``, ``mlkd``, ``sld``, as pure functions.

Call them from any training loop. Notation: student logits ``s``, teacher logits ``t``
(``[B, C]``), labels ``y`` (``[B]``), ``p^T = softmax(t / T)``, ``q^T = softmax(s / T)``,
``KL(p || q) = sum_c p_c (log p_c - log q_c)``, summed over classes and averaged over the
batch. Teacher logits are treated as constants (detached).

Logit processors (see :mod:`sldistill.logits`): ``processor="sort"`` or ``"swap"`` transforms
the teacher's logits, ``"zscore"`` (logit standardization) transforms both the student's and
the teacher's logits before the distillation term; cross-entropy always reads the raw student
logits. So ``kd(..., processor="sort")`` is KD+sort, ``processor="zscore"`` is KD+LS, and the
same for ``dkd``, exactly as released.

How they are computed: plain PyTorch. Several temperatures go through one ``log_softmax``
over a stacked ``[nT, B, C]`` tensor (:func:`_kl`). Every loss runs in at least float32,
also inside an autocast region (:func:`~sldistill.losses.precision.float32_loss`). Inputs
are validated (2-D floating logits, equal shapes, 1-D integer labels of length ``B``; the
label range on CPU tensors only, so that nothing synchronises with an accelerator). Nothing
here calls ``.item()``.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from sldistill.logits import PROCESSORS, check_logits, check_same_shape, check_target, get_processor, zscore
from sldistill.losses.precision import float32_loss

__all__ = ["kd", "dkd", "mlkd", "sld", "MLKD_EXTRA_TEMPERATURES"]

Temperatures = Union[float, Sequence[float]]

#: temperatures the released MLKD uses besides ``KD.TEMPERATURE``, in release order
MLKD_EXTRA_TEMPERATURES: tuple[float, ...] = (3.0, 5.0, 2.0, 6.0)


# --------------------------------------------------------------------------- helpers


def _kl(s: Tensor, t: Tensor, temps: Sequence[float]) -> Tensor:
    r"""``[nT, B]``: ``T^2 * KL(softmax(t_b / T) || softmax(s_b / T))`` for each temperature
    ``T`` and row ``b``, from one ``log_softmax`` per side over ``[nT, B, C]``. Gradients
    reach both ``s`` and ``t`` (detach ``t`` for a constant teacher)."""
    # the temperatures as [nT, 1, 1], filled on the device: copying a Python list to an
    # accelerator would make the host wait for it
    T = torch.stack([s.new_full((1, 1), float(v)) for v in temps])
    log_q = torch.log_softmax(s / T, dim=-1)
    log_p = torch.log_softmax(t / T, dim=-1)
    return T.flatten(1) ** 2 * (log_p.exp() * (log_p - log_q)).sum(-1)


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


def _check_views(*named: tuple[str, Tensor]) -> None:
    """2-D floating logits, all of the first one's shape."""
    for name, x in named:
        check_logits(name, x)
    first_name, first = named[0]
    for name, x in named[1:]:
        check_same_shape(first_name, first, name, x)


def _process(processor: str, s: Tensor, t: Tensor, target: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """Processed (student, teacher): zscore acts on both, swap/sort on the teacher."""
    if processor == "none":
        return s, t
    if processor == "zscore":
        return zscore(s), zscore(t)
    if target is None:
        raise ValueError(f"processor {processor!r} needs target labels; pass target=")
    return s, get_processor(processor)(t, target)


# --------------------------------------------------------------------------- KD


@float32_loss
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
    _check_views(("student", student), ("teacher", teacher))
    _check_processor(processor)
    temps = _temps(temperature)
    if target is not None:
        target = check_target(target, student, "student")
    s, t = _process(processor, student, teacher.detach(), target)
    return _kl(s, t, temps).sum() / s.shape[0]


# --------------------------------------------------------------------------- DKD


@float32_loss
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
    _check_views(("student", student), ("teacher", teacher))
    _check_processor(processor)
    (T,) = _temps(temperature)
    if student.shape[1] < 2:
        raise ValueError(f"dkd needs at least 2 classes; student has shape {tuple(student.shape)}")
    y = check_target(target, student, "student").unsqueeze(1)
    s, t = _process(processor, student, teacher.detach(), y.squeeze(1))
    is_y = torch.zeros_like(s, dtype=torch.bool).scatter_(1, y, True)

    def parts(logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """log-probabilities of the label, of "not the label", and of each other class
        within the non-target classes (0 at the label)."""
        log_prob = torch.log_softmax(logits / T, dim=1)
        log_rest = torch.logsumexp(log_prob.masked_fill(is_y, float("-inf")), dim=1, keepdim=True)
        return log_prob.gather(1, y), log_rest, (log_prob - log_rest).masked_fill(is_y, 0.0)

    s_y, s_rest, s_nc = parts(s)
    t_y, t_rest, t_nc = parts(t)
    tckd = t_y.exp() * (t_y - s_y) + t_rest.exp() * (t_rest - s_rest)
    nckd = (t_nc.exp().masked_fill(is_y, 0.0) * (t_nc - s_nc)).sum(1, keepdim=True)
    return (alpha * tckd + beta * nckd).sum() * (T * T / s.shape[0])


# --------------------------------------------------------------------------- MLKD


def _median_le(x: Tensor) -> Tensor:
    """Mask ``x <= median(x)``, the linearly interpolated median (``np.percentile(x, 50)``)."""
    return (x <= torch.quantile(x, 0.5)).to(x.dtype)


def _gram_gap(ps: Tensor, pt: Tensor, by_class: bool) -> Tensor:
    """``(M^t - M^s)^2`` with ``M = P^T P`` (class correlation, ``[nT, C, C]``, ``by_class``)
    or ``M = P P^T`` (batch correlation, ``[nT, B, B]``); ``ps``, ``pt``: ``[nT, B, C]``."""
    if by_class:
        ps, pt = ps.transpose(1, 2), pt.transpose(1, 2)
    return (pt @ pt.transpose(1, 2) - ps @ ps.transpose(1, 2)).pow(2)


@float32_loss
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
    _check_views(("student_weak", student_weak), ("student_strong", student_strong),
                 ("teacher_weak", teacher_weak), ("teacher_strong", teacher_strong))
    sw, ss, tw, ts = student_weak, student_strong, teacher_weak.detach(), teacher_strong.detach()
    _check_processor(processor)
    (T,) = _temps(temperature)
    y = check_target(target, sw, "student_weak")
    B, C = sw.shape
    temps = [T, *MLKD_EXTRA_TEMPERATURES]

    prob_tw = torch.softmax(tw, dim=1)
    sample_mask = _median_le(prob_tw.amax(dim=1))  # m, [B]
    class_mask = _median_le(prob_tw.sum(dim=0))  # k, [C]

    loss_ce = ce_weight * (F.cross_entropy(sw, y) + F.cross_entropy(ss, y))

    kl_weak = _kl(*_process(processor, sw, tw, y), temps)  # [5, B]
    if clean:
        kl_strong = _kl(*_process(processor, ss, ts, y), temps)
        loss_kd = kd_weight * ((kl_weak * sample_mask).sum() + kl_strong.sum()) / B
    else:
        kl_strong = _kl(*_process(processor, ss, ts, y), temps[:3])  # the released (T, 3, 5)
        loss_kd = kd_weight * (sample_mask.mean() * kl_weak.sum() + kl_weak[3:].sum() + kl_strong.sum()) / B

    inv_t = torch.stack([sw.new_full((1, 1), 1.0 / v) for v in temps])  # [5, 1, 1]
    ps, pt = torch.softmax(sw * inv_t, dim=-1), torch.softmax(tw * inv_t, dim=-1)
    cc, bc = _gram_gap(ps, pt, by_class=True), _gram_gap(ps, pt, by_class=False)
    if clean:  # masks weight the columns
        loss_cc = kd_weight * (cc * class_mask).sum() / C
        loss_bc = kd_weight * (bc * sample_mask).sum() / B
    else:  # masks as scalars
        loss_cc = kd_weight * class_mask.mean() * cc.sum() / C
        loss_bc = kd_weight * sample_mask.mean() * bc.sum() / B
    return {"loss_ce": loss_ce, "loss_kd": loss_kd, "loss_cc": loss_cc, "loss_bc": loss_bc}


# --------------------------------------------------------------------------- SLD


@float32_loss
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
    _check_views(("student_weak", student_weak), ("student_strong", student_strong),
                 ("teacher_weak", teacher_weak), ("teacher_strong", teacher_strong))
    sw, ss, tw, ts = student_weak, student_strong, teacher_weak.detach(), teacher_strong.detach()
    _check_processor(teacher_processor, "teacher_processor")
    _check_processor(student_processor, "student_processor")
    temps = _temps(temperatures, "temperatures")
    y = check_target(target, sw, "student_weak")
    B = sw.shape[0]

    loss_ce = ce_weight * (F.cross_entropy(sw, y) + F.cross_entropy(ss, y))
    loss_kd = loss_pseudo = sw.new_zeros(())
    for s, t in ((sw, tw), (ss, ts)):  # the views v
        loss_kd = loss_kd + _kl(*_process(teacher_processor, s, t, y), temps).sum()
        if epoch > gamma and student_processor != "none":
            pseudo = get_processor(student_processor)(s, y)
            if detach_pseudo_teacher:
                pseudo = pseudo.detach()
            loss_pseudo = loss_pseudo + _kl(s, pseudo, temps).sum()
    return {"loss_ce": loss_ce, "loss_kd": kd_weight * loss_kd / B, "loss_pseudo": kd_weight * loss_pseudo / B}
