"""Feature-distillation losses as pure functions (mdistiller's feature distillers).

Each function returns the *unweighted* loss; a distiller multiplies it by its
``LOSS.FEAT_WEIGHT``. Stage-feature losses take lists of ``[B, C, H, W]`` tensors (the
stages the published distillers read); embedding losses take ``[B, D]`` tensors. The
teacher side is a target: it is detached (the release computes it under ``no_grad``).

Parameter-free losses: :func:`at`, :func:`nst`, :func:`sp`, :func:`kdsvd`, :func:`pkt`,
:func:`rkd`. Losses that need a connector's output or state: :func:`fitnet_hint`,
:func:`ofd_margin_loss` (+ :func:`ofd_margins`), :func:`vid_nll`, :func:`hcl`,
:func:`crd_nce`.

Every loss computes in float32 at least, also inside an autocast region (16-bit inputs are
cast up, autocast is off inside; see :mod:`sldistill.losses.precision`). Maps are resized by
:func:`adaptive_pool`, which equals ``F.adaptive_avg_pool2d`` but has a deterministic CUDA
backward. No function here synchronises with the host (no ``.item()``, no boolean-mask
indexing).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from sldistill.losses.precision import float32_loss

__all__ = [
    "adaptive_pool",
    "match_spatial",
    "at",
    "nst",
    "sp",
    "kdsvd",
    "pkt",
    "rkd",
    "fitnet_hint",
    "ofd_margins",
    "ofd_margin_loss",
    "vid_nll",
    "hcl",
    "crd_nce",
]


def _check_pairs(student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor]) -> None:
    if len(student_feats) != len(teacher_feats):
        raise ValueError(
            f"student gives {len(student_feats)} stage features, teacher {len(teacher_feats)}; "
            "pass lists of the same length"
        )


def _bins(n_in: int, n_out: int) -> list[tuple[int, int]]:
    """Adaptive average pooling's bins: ``[floor(i n_in / n_out), ceil((i + 1) n_in / n_out))``."""
    return [((i * n_in) // n_out, -(-(i + 1) * n_in // n_out)) for i in range(n_out)]


def adaptive_pool(x: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Adaptive average pooling of ``x`` (``[B, C, H, W]`` or ``[C, H, W]``) to ``size``:
    the same values as ``F.adaptive_avg_pool2d(x, size)``, with a deterministic backward on
    CUDA (that of ``adaptive_avg_pool2d`` is not).

    When the sizes divide, it is ``F.avg_pool2d`` with kernel = stride = input / output;
    otherwise each output is the mean of its bin (:func:`_bins`), taken over rows, then
    columns (a loop over the output size, not over the batch or channels).
    """
    out_h, out_w = (size, size) if isinstance(size, int) else size
    h, w = x.shape[-2:]
    if h % out_h == 0 and w % out_w == 0:
        return F.avg_pool2d(x, (h // out_h, w // out_w))
    rows = torch.stack([x[..., a:b, :].mean(-2) for a, b in _bins(h, out_h)], dim=-2)
    return torch.stack([rows[..., a:b].mean(-1) for a, b in _bins(w, out_w)], dim=-1)


def match_spatial(f_s: Tensor, f_t: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool the larger of two maps down to the smaller one's height (square output,
    as released)."""
    s_h, t_h = f_s.shape[2], f_t.shape[2]
    if s_h > t_h:
        f_s = adaptive_pool(f_s, (t_h, t_h))
    elif s_h < t_h:
        f_t = adaptive_pool(f_t, (s_h, s_h))
    return f_s, f_t


# ----------------------------------------------------------------------------- AT
def _attention_map(feat: Tensor, p: float) -> Tensor:
    return F.normalize(feat.pow(p).mean(dim=1).flatten(1), dim=1)


@float32_loss
def at(student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor], p: float = 2) -> Tensor:
    """Attention transfer (Zagoruyko & Komodakis): per stage, the mean squared difference of
    L2-normalised spatial attention maps ``mean_c(f^p)``; summed over stages.

    Args:
        student_feats: stage features ``[B, C_s, H, W]`` (the release passes ``feats[1:]``).
        teacher_feats: the matching teacher features; the larger map is pooled to the smaller.
        p: exponent of the attention map (``AT.P``).
    """
    _check_pairs(student_feats, teacher_feats)
    total = student_feats[0].new_zeros(())
    for f_s, f_t in zip(student_feats, [t.detach() for t in teacher_feats]):
        f_s, f_t = match_spatial(f_s, f_t)
        total = total + (_attention_map(f_s, p) - _attention_map(f_t, p)).pow(2).mean()
    return total


# ----------------------------------------------------------------------------- NST
def _poly_kernel_mean(a: Tensor, b: Tensor) -> Tensor:
    # degree-2 polynomial kernel between every channel of a and every channel of b
    return torch.bmm(a, b.transpose(1, 2)).pow(2).mean()


@float32_loss
def nst(student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor]) -> Tensor:
    """Neuron selectivity transfer: squared MMD with a degree-2 polynomial kernel between the
    L2-normalised channel responses of student and teacher, summed over stages."""
    _check_pairs(student_feats, teacher_feats)
    total = student_feats[0].new_zeros(())
    for f_s, f_t in zip(student_feats, [t.detach() for t in teacher_feats]):
        f_s, f_t = match_spatial(f_s, f_t)
        f_s = F.normalize(f_s.flatten(2), dim=2)
        f_t = F.normalize(f_t.flatten(2), dim=2)
        total = total + (
            _poly_kernel_mean(f_t, f_t).detach() + _poly_kernel_mean(f_s, f_s) - 2 * _poly_kernel_mean(f_s, f_t)
        )
    return total


# ----------------------------------------------------------------------------- SP
@float32_loss
def sp(student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor]) -> Tensor:
    """Similarity preserving: squared Frobenius distance between the row-normalised batch
    similarity (Gram) matrices, divided by ``B**2``; summed over the given stages (the
    release passes only the last stage)."""
    _check_pairs(student_feats, teacher_feats)
    total = student_feats[0].new_zeros(())
    for f_s, f_t in zip(student_feats, [t.detach() for t in teacher_feats]):
        b = f_s.shape[0]
        f_s, f_t = f_s.reshape(b, -1), f_t.reshape(b, -1)
        g_s = F.normalize(f_s @ f_s.t(), dim=1)
        g_t = F.normalize(f_t @ f_t.t(), dim=1)
        total = total + (g_t - g_s).pow(2).sum() / (b * b)
    return total


# ----------------------------------------------------------------------------- KDSVD
def _finite(x: Tensor) -> Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def _top_singular(feat: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Normalised leading singular values ``[B, n]`` and right singular vectors ``[B, W, n]``
    of each sample's feature reshaped (as released) to ``[C*H, W]``."""
    if feat.dim() != 4:
        raise ValueError(f"kdsvd needs 4-d stage features [B, C, H, W], got shape {tuple(feat.shape)}")
    b, c, h, w = feat.shape
    _, s, vh = torch.linalg.svd(feat.reshape(b, c * h, w), full_matrices=False)
    s, v = _finite(s), _finite(vh.transpose(-2, -1))
    return F.normalize(s[:, :n], dim=1), F.normalize(v[:, :, :n], dim=1)


def _align_signs(v_s: Tensor, v_t: Tensor) -> Tensor:
    """Pick, for each teacher vector, the student vector of largest |cosine|, sign-corrected."""
    cosine = v_s.transpose(-2, -1) @ v_t
    best = cosine.abs().amax(dim=1, keepdim=True)
    mask = torch.where(best == cosine.abs(), torch.sign(cosine), torch.zeros_like(cosine))
    return v_s @ mask


@float32_loss
def kdsvd(student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor], k: int = 1) -> Tensor:
    """Self-supervised KD with SVD (Lee et al.): the teacher's ``k`` leading right singular
    vectors (the student's ``k+3``, sign-aligned to the teacher's), scaled by the teacher's
    normalised singular values; the loss matches RBF kernels between consecutive stages.
    Summed over stage pairs and divided by the batch size."""
    _check_pairs(student_feats, teacher_feats)
    total = student_feats[0].new_zeros(())
    prev_s = prev_t = None
    for f_s, f_t in zip(student_feats, [t.detach() for t in teacher_feats]):
        s_t, v_t = _top_singular(f_t, k)
        _, v_s = _top_singular(f_s, k + 3)
        v_s = _align_signs(v_s, v_t)
        scale = s_t.unsqueeze(1)
        v_t, v_s = v_t * scale, v_s * scale
        if prev_s is not None and prev_t is not None:
            rbf_s = torch.exp(-(v_s.unsqueeze(2) - prev_s.unsqueeze(1)).pow(2) / 8)
            rbf_t = torch.exp(-(v_t.unsqueeze(2) - prev_t.unsqueeze(1)).pow(2) / 8)
            total = total + _finite((rbf_s - rbf_t.detach()).pow(2)).sum().to(total.dtype)
        prev_s, prev_t = v_s, v_t
    return total / student_feats[0].shape[0]


# ----------------------------------------------------------------------------- PKT
@float32_loss
def pkt(student_embedding: Tensor, teacher_embedding: Tensor, eps: float = 1e-7) -> Tensor:
    """Probabilistic knowledge transfer: KL divergence between the teacher's and the
    student's conditional probability distributions built from cosine similarities
    (rescaled to [0, 1] and row-normalised), averaged over all entries as released."""

    def _conditional(e: Tensor) -> Tensor:
        e = e.reshape(e.shape[0], -1)
        e = e / (e.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)
        e = torch.nan_to_num(e, nan=0.0)
        sim = (e @ e.t() + 1.0) / 2.0
        return sim / sim.sum(dim=1, keepdim=True)

    p_s, p_t = _conditional(student_embedding), _conditional(teacher_embedding.detach())
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


# ----------------------------------------------------------------------------- RKD
def _pairwise_distance(e: Tensor, squared: bool, eps: float) -> Tensor:
    sq = e.pow(2).sum(dim=1)
    d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * (e @ e.t())).clamp(min=eps)
    if not squared:
        d = d.sqrt()
    off_diag = 1.0 - torch.eye(e.shape[0], dtype=d.dtype, device=d.device)
    return d * off_diag


def _mean_positive(d: Tensor) -> Tensor:
    pos = (d > 0).to(d.dtype)
    return (d * pos).sum() / pos.sum()


def _angles(e: Tensor) -> Tensor:
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
    return torch.bmm(diff, diff.transpose(1, 2)).reshape(-1)


@float32_loss
def rkd(
    student_embedding: Tensor,
    teacher_embedding: Tensor,
    distance_weight: float = 25,
    angle_weight: float = 50,
    squared: bool = False,
    eps: float = 1e-12,
) -> Tensor:
    """Relational KD (Park et al.): smooth-L1 between mean-normalised pairwise distances plus
    smooth-L1 between triplet angle cosines, weighted ``distance_weight``/``angle_weight``.

    Args:
        squared, eps: ``RKD.PDIST.SQUARED`` and ``RKD.PDIST.EPSILON`` (distance clamp).
    """
    stu = student_embedding.reshape(student_embedding.shape[0], -1)
    tea = teacher_embedding.reshape(teacher_embedding.shape[0], -1).detach()
    with torch.no_grad():
        t_d = _pairwise_distance(tea, squared, eps)
        t_d = t_d / _mean_positive(t_d)
        t_angle = _angles(tea)
    d = _pairwise_distance(stu, squared, eps)
    d = d / _mean_positive(d)
    loss_d = F.smooth_l1_loss(d, t_d)
    loss_a = F.smooth_l1_loss(_angles(stu), t_angle)
    return distance_weight * loss_d + angle_weight * loss_a


# ----------------------------------------------------------------------------- with connectors
@float32_loss
def fitnet_hint(student_regressed: Tensor, teacher_feat: Tensor) -> Tensor:
    """FitNets hint loss: mean squared error between the regressed student hint and the
    teacher's hint feature (shapes must agree)."""
    if student_regressed.shape != teacher_feat.shape:
        raise ValueError(
            f"regressed student hint {tuple(student_regressed.shape)} != teacher hint {tuple(teacher_feat.shape)}"
        )
    return F.mse_loss(student_regressed, teacher_feat.detach())


def ofd_margins(bn_weight: Tensor, bn_bias: Tensor) -> Tensor:
    """OFD's per-channel margin from a teacher BN layer (before ReLU): the expectation of the
    pre-activation below zero, ``m - s*phi(m/s)/Phi(-m/s)`` with ``s=|gamma|``, ``m=beta``,
    or ``-3s`` where ``Phi(-m/s) <= 0.001``. Returned as ``[1, C, 1, 1]`` float32."""
    s = bn_weight.detach().double().abs()
    m = bn_bias.detach().double()
    z = -m / s
    cdf = 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))
    pdf_term = s * torch.exp(-(m / s).pow(2) / 2) / math.sqrt(2 * math.pi)
    margin = torch.where(cdf > 0.001, -pdf_term / cdf + m, -3 * s)
    return margin.float().reshape(1, -1, 1, 1)


@float32_loss
def ofd_margin_loss(student: Tensor, teacher: Tensor, margin: Tensor) -> Tensor:
    """OFD's partial L2 distance: no penalty where the teacher is below the margin and the
    student is too (ReLU discards it); summed over channels/positions, averaged over batch."""
    margin = margin.to(student)
    teacher = teacher.detach()
    loss = (
        (student - margin).pow(2) * ((student > margin) & (teacher <= margin)).to(student.dtype)
        + (student - teacher).pow(2) * ((student > teacher) & (teacher > margin) & (teacher <= 0)).to(student.dtype)
        + (student - teacher).pow(2) * (teacher > 0).to(student.dtype)
    )
    return loss.abs().mean(dim=0).sum()


@float32_loss
def vid_nll(pred_mean: Tensor, teacher_feat: Tensor, log_scale: Tensor, eps: float = 1e-5) -> Tensor:
    """VID: Gaussian negative log-likelihood (up to a constant) of the teacher feature under
    the student's predicted mean and per-channel variance ``softplus(log_scale) + eps``."""
    var = (F.softplus(log_scale) + eps).reshape(1, -1, 1, 1).to(pred_mean)
    return (0.5 * ((pred_mean - teacher_feat.detach()).pow(2) / var + torch.log(var))).mean()


@float32_loss
def hcl(student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor]) -> Tensor:
    """ReviewKD's hierarchical context loss: per stage, MSE at full resolution plus MSE of
    4x4, 2x2 and 1x1 average-pooled maps (levels smaller than the map, weights 1/2, 1/4,
    1/8), divided by the sum of weights; summed over stages."""
    _check_pairs(student_feats, teacher_feats)
    total = student_feats[0].new_zeros(())
    for f_s, f_t in zip(student_feats, [t.detach() for t in teacher_feats]):
        h = f_s.shape[2]
        loss = F.mse_loss(f_s, f_t)
        weight, weight_sum = 1.0, 1.0
        for level in (4, 2, 1):
            if level >= h:
                continue
            weight /= 2.0
            loss = loss + weight * F.mse_loss(adaptive_pool(f_s, level), adaptive_pool(f_t, level))
            weight_sum += weight
        total = total + loss / weight_sum
    return total


@float32_loss
def crd_nce(scores: Tensor, num_data: int, eps: float = 1e-7) -> Tensor:
    """CRD's NCE loss on ``scores`` ``[B, K+1, ...]`` (column 0 the positive, the others the
    ``K`` negatives), with a uniform noise distribution over ``num_data`` samples."""
    b = scores.shape[0]
    m = scores.shape[1] - 1
    noise = m / float(num_data)
    pos = scores.select(1, 0)
    neg = scores.narrow(1, 1, m)
    log_d1 = torch.log(pos / (pos + noise + eps))
    log_d0 = torch.log(noise / (neg + noise + eps))
    return -(log_d1.sum() + log_d0.sum()) / b
