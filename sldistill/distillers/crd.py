"""CRD: contrastive representation distillation (Tian et al.), as released in mdistiller.

Student and teacher ``pooled_feat`` are embedded (linear + L2 norm) to ``CRD.FEAT.DIM``;
each is scored against ``CRD.NCE.K + 1`` rows (the positive, then K negatives) of the other
side's momentum memory bank; the NCE loss of both directions is the feature term.
The batches carry ``index`` (dataset index of each sample, the positive) and
``contrast_index`` (``[B, K+1]``, column 0 the positive), which the loaders sample because the
distiller lists both in ``needs``; the sampling (exact/relax, ``CRD.MODE``) is the data pipeline's.
"""
from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from sldistill.distillers.base import register
from sldistill.distillers.connectors import Embed, probe_features, probe_input_size
from sldistill.distillers.feature_base import FeatureDistiller, loss_weights
from sldistill.losses.feature import crd_nce
from sldistill.options import Key

__all__ = ["CRD", "ContrastMemory", "TRAIN_SET_SIZES"]

#: training-set sizes used for the memory bank when ``num_data`` is not given and no
#: ``DATASET.TRAIN_SUBSET`` is set (the bank is indexed by dataset index).
TRAIN_SET_SIZES = {"cifar100": 50000, "imagenet": 1281167, "tiny_imagenet": 100000, "fashion_mnist": 60000}


class ContrastMemory(nn.Module):
    """The two momentum memory banks (``memory_v1`` student side, ``memory_v2`` teacher side),
    ``[num_data, dim]`` buffers (checkpointed, never optimised), and the normalisation
    constants ``Z`` fixed at the first forward (stored in the ``params`` buffer as released:
    ``[K, T, Z_v1, Z_v2, momentum]``)."""

    params: Tensor
    memory_v1: Tensor
    memory_v2: Tensor

    def __init__(self, dim: int, num_data: int, k: int, temperature: float = 0.07, momentum: float = 0.5) -> None:
        super().__init__()
        self.num_data, self.k = int(num_data), int(k)
        self.temperature, self.momentum = float(temperature), float(momentum)
        self.register_buffer("params", torch.tensor([k, temperature, -1.0, -1.0, momentum]))
        stdv = 1.0 / math.sqrt(dim / 3)
        self.register_buffer("memory_v1", torch.rand(num_data, dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("memory_v2", torch.rand(num_data, dim).mul_(2 * stdv).add_(-stdv))

    def _scores(self, memory: Tensor, emb: Tensor, idx: Tensor) -> Tensor:
        rows = memory.index_select(0, idx.reshape(-1)).detach().to(emb.dtype)
        rows = rows.reshape(emb.shape[0], idx.shape[1], emb.shape[1])
        return torch.exp(torch.bmm(rows, emb.unsqueeze(2)) / self.temperature)

    @torch.no_grad()
    def _update(self, memory: Tensor, emb: Tensor, index: Tensor) -> None:
        emb, index = _gather_rows(emb.detach(), index)  # every rank applies every rank's rows
        rows = memory.index_select(0, index) * self.momentum + emb.to(memory.dtype) * (1 - self.momentum)
        memory.index_copy_(0, index, rows / rows.pow(2).sum(dim=1, keepdim=True).sqrt())

    def forward(self, emb_s: Tensor, emb_t: Tensor, index: Tensor, contrast_index: Tensor) -> tuple[Tensor, Tensor]:
        """Scores ``[B, K+1, 1]`` of the student embedding against the teacher bank and of the
        teacher embedding against the student bank (each divided by its Z); then the banks
        move towards this batch's embeddings at ``index``."""
        out_s = self._scores(self.memory_v2, emb_s, contrast_index)
        out_t = self._scores(self.memory_v1, emb_t, contrast_index)
        with torch.no_grad():  # Z: set once, from the first (global) batch (no host sync)
            means = _mean_over_ranks(torch.stack([out_s.mean(), out_t.mean()]).to(self.params.dtype))
            z_s = torch.where(self.params[2] < 0, means[0] * self.num_data, self.params[2])
            z_t = torch.where(self.params[3] < 0, means[1] * self.num_data, self.params[3])
            self.params[2], self.params[3] = z_s, z_t
        out_s, out_t = out_s / z_s.to(out_s.dtype), out_t / z_t.to(out_t.dtype)
        self._update(self.memory_v1, emb_s, index)
        self._update(self.memory_v2, emb_t, index)
        return out_s, out_t


def _ranks() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _gather_rows(emb: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
    """Every rank's ``(emb, index)`` concatenated (as is in one process). Under DDP each rank
    sees its own samples; the memory banks must take all of them, as one process over the
    global batch would, so they are gathered rather than broadcast from rank 0."""
    n = _ranks()
    if n == 1:
        return emb, index
    import torch.distributed as dist

    embs, idxs = [torch.empty_like(emb) for _ in range(n)], [torch.empty_like(index) for _ in range(n)]
    dist.all_gather(embs, emb.contiguous())
    dist.all_gather(idxs, index.contiguous())
    return torch.cat(embs), torch.cat(idxs)


def _mean_over_ranks(t: Tensor) -> Tensor:
    if _ranks() == 1:
        return t
    import torch.distributed as dist

    t = t.clone()
    dist.all_reduce(t)
    return t / _ranks()


def _num_data(cfg: Any, num_data: int | None) -> int:
    if num_data is not None:
        return int(num_data)
    if int(cfg.DATASET.TRAIN_SUBSET) > 0:  # subsets are re-indexed from 0
        return int(cfg.DATASET.TRAIN_SUBSET)
    kind = str(cfg.DATASET.TYPE).lower()
    if kind in TRAIN_SET_SIZES:
        return TRAIN_SET_SIZES[kind]
    raise ValueError(
        f"CRD needs the training-set size for DATASET.TYPE {kind!r}: pass num_data=len(train_set) "
        f"(known sizes: {TRAIN_SET_SIZES})"
    )


@register("CRD")
class CRD(FeatureDistiller):
    """Contrastive representation distillation on ``pooled_feat``.

    Keys: ``CRD.FEAT.DIM`` (embedding), ``CRD.NCE.K`` (negatives), ``NCE.MOMENTUM``,
    ``NCE.TEMPERATURE``, ``CRD.LOSS.*``. The embeddings' input sizes are measured with a probe
    forward (``CRD.FEAT.STUDENT_DIM``/``TEACHER_DIM`` are checked against them; a mismatch
    warns and the measured size is used). ``num_data`` (the training-set size, rows of the
    memory bank) (the engine passes the training set's size) defaults to ``DATASET.TRAIN_SUBSET`` if > 0,
    else the standard size of ``DATASET.TYPE``'s training set.
    """

    section = "CRD"
    needs = ("index", "contrast_index")
    #: per-sample buffers kept equal on every rank by gathering each step's rows (DDP leaves them alone)
    gathered_buffers = ("contrast.",)
    config = {
        "CRD.MODE": Key("exact", "How the loaders pick the positive: exact = the sample itself, relax = a "
                                 "random training sample of the same class.", choices=("exact", "relax")),
        "CRD.FEAT.DIM": Key(128, "Dimension of the contrastive embeddings.", gt=0),
        "CRD.FEAT.STUDENT_DIM": Key(256, "Published key, checked against the student's pooled-feature size "
                                         "(on a mismatch it warns and uses the measured size)."),
        "CRD.FEAT.TEACHER_DIM": Key(256, "Published key, checked against the teacher's pooled-feature size "
                                         "(on a mismatch it warns and uses the measured size)."),
        "CRD.NCE.K": Key(16384, "Negatives scored per sample.", gt=0),
        "CRD.NCE.MOMENTUM": Key(0.5, "Momentum of the memory-bank update."),
        "CRD.NCE.TEMPERATURE": Key(0.07, "Temperature of the contrastive scores.", gt=0),
        **loss_weights("CRD", 0.8),
    }

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Any, num_data: int | None = None) -> None:
        super().__init__(student, teacher, cfg)
        size = probe_input_size(cfg)
        s_dim = math.prod(probe_features(student, size)["pooled_feat"][1:])
        t_dim = math.prod(probe_features(teacher, size)["pooled_feat"][1:])
        for key, measured in (("STUDENT_DIM", s_dim), ("TEACHER_DIM", t_dim)):
            if int(cfg.CRD.FEAT[key]) != measured:
                warnings.warn(f"CRD.FEAT.{key}={cfg.CRD.FEAT[key]} but the model's pooled_feat has {measured}; "
                              f"using {measured}", stacklevel=2)
        self.num_data = _num_data(cfg, num_data)
        dim = int(cfg.CRD.FEAT.DIM)
        self.embed_s = Embed(s_dim, dim)
        self.embed_t = Embed(t_dim, dim)
        nce = cfg.CRD.NCE
        self.contrast = ContrastMemory(dim, self.num_data, int(nce.K), float(nce.TEMPERATURE), float(nce.MOMENTUM))

    def feature_loss(self, feats_s: dict, feats_t: dict, epoch: int, index: Tensor | None = None,
                     contrast_index: Tensor | None = None, **extras: Any) -> Tensor:
        if index is None:
            raise ValueError("CRD needs each sample's dataset index (batch item 'index'; the engine's loaders "
                             "give it because CRD declares needs = ('index', 'contrast_index'))")
        index = index.reshape(-1).long()
        if contrast_index is None:  # uniform negatives, positive in column 0
            contrast_index = torch.randint(0, self.num_data, (index.shape[0], self.contrast.k + 1), device=index.device)
            contrast_index[:, 0] = index
        emb_s = self.embed_s(feats_s["pooled_feat"])
        emb_t = self.embed_t(feats_t["pooled_feat"])
        out_s, out_t = self.contrast(emb_s, emb_t, index, contrast_index.long())
        return crd_nce(out_s, self.num_data) + crd_nce(out_t, self.num_data)
