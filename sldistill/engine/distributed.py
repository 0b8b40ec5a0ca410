"""Process-group set-up for ``torchrun`` launches and small collective helpers.

``torchrun --nproc_per_node=N -m sldistill train ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`init_distributed` reads them and starts the process group with NCCL
on CUDA and gloo on CPU. Without those variables everything runs in one process and the
helpers below are no-ops.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "DistInfo",
    "resolve_device",
    "init_distributed",
    "cleanup_distributed",
    "is_distributed",
    "all_reduce_sum",
    "all_reduce_grads",
    "barrier",
    "per_process_batch",
    "gather_objects",
    "broadcast_buffers",
    "ddp_ignored_names",
    "convert_sync_batchnorm",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size`` processes, on ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the only process that writes files and logs)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when a process group of more than one process is running."""
        return self.world_size > 1


def resolve_device(spec: str = "auto", local_rank: int = 0, world_size: int = 1) -> torch.device:
    """The device of this process.

    ``auto`` is CUDA when available, else the CPU; ``cpu``; ``cuda``. On CUDA the GPU is
    ``local_rank % device_count()``: one GPU per process under ``torchrun``, and GPU 0 when
    each process sees only its own GPU (``CUDA_VISIBLE_DEVICES`` per task, as SLURM sets it).
    ``cuda:N`` names one GPU, so with several processes (``world_size > 1``) it is refused.
    Asking for CUDA without it, or anything else (``mps`` included), raises ``ValueError``; these
    are the values the ``EXPERIMENT.DEVICE`` config check accepts."""
    spec = (spec or "auto").strip().lower()
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if spec in ("auto", "cuda") or (spec.startswith("cuda:") and spec[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ValueError(
                f"EXPERIMENT.DEVICE {spec!r} asks for CUDA but no CUDA device is available; use 'cpu' or 'auto'"
            )
        if spec.startswith("cuda:"):
            if world_size > 1:
                raise ValueError(f"EXPERIMENT.DEVICE {spec!r} names one GPU, but {world_size} processes are "
                                 "running: every rank would use it; use 'cuda' or 'auto' (each process takes "
                                 "its LOCAL_RANK's GPU)")
            return torch.device(spec)
        return torch.device(f"cuda:{local_rank % torch.cuda.device_count()}")
    raise ValueError(f"EXPERIMENT.DEVICE {spec!r} is not valid; use auto, cpu, cuda or cuda:N")


def is_distributed() -> bool:
    """True when a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def init_distributed(device_spec: str = "auto") -> DistInfo:
    """Start the process group if launched by ``torchrun`` (``WORLD_SIZE`` > 1).

    The backend is NCCL when the resolved device is CUDA, gloo otherwise. On CUDA the
    process's device is set (see :func:`resolve_device`).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_spec, local_rank, world_size)
    if world_size <= 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return DistInfo(0, 1, 0, device, None)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not is_distributed():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistInfo(rank, world_size, local_rank, device, backend)


def cleanup_distributed() -> None:
    """Destroy the process group if one is running."""
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for all processes (no-op in one process)."""
    if is_distributed():
        dist.barrier()


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum ``t`` over processes in place and return it (no-op in one process)."""
    if is_distributed() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_grads(params: Iterable[nn.Parameter]) -> None:
    """Average the ``.grad`` of ``params`` over processes (one flat all-reduce).

    Used by the DOT trainer, whose two backward passes run outside DDP's own reducer.
    """
    if not (is_distributed() and dist.get_world_size() > 1):
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat.div_(dist.get_world_size())
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n


def per_process_batch(global_batch: int, world_size: int) -> int:
    """``SOLVER.BATCH_SIZE`` (global) split over ``world_size`` processes.

    Raises ``ValueError`` when it does not divide evenly.
    """
    if global_batch % world_size:
        raise ValueError(f"SOLVER.BATCH_SIZE {global_batch} is not divisible by the {world_size} processes; "
                         f"use a multiple of {world_size}")
    return global_batch // world_size


def gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every process (``[obj]`` in one process)."""
    if not (is_distributed() and dist.get_world_size() > 1):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_buffers(buffers: Iterable[Tensor]) -> None:
    """Copy rank 0's values of ``buffers`` (e.g. BatchNorm running statistics) to every rank,
    so that every rank evaluates and saves the same model (no-op in one process)."""
    if not (is_distributed() and dist.get_world_size() > 1):
        return
    for b in buffers:
        dist.broadcast(b, src=0)


def ddp_ignored_names(distiller: nn.Module) -> list[str]:
    """Parameters and buffers DDP must leave alone: the teacher's, and the distiller's
    per-sample buffers (``gathered_buffers``: updated for the rows each rank sees and gathered
    by the distiller, so a broadcast from rank 0 would lose the other ranks' updates)."""
    gathered = tuple(getattr(distiller, "gathered_buffers", ()))
    names = [n for n, _ in distiller.named_parameters() if n.startswith("teacher.")]
    names += [n for n, _ in distiller.named_buffers() if n.startswith("teacher.") or n.startswith(gathered)]
    return names


def convert_sync_batchnorm(distiller: nn.Module) -> None:
    """SyncBatchNorm in every trainable module of ``distiller`` (student and connectors; the
    frozen teacher keeps its BatchNorm). Converted modules replace the children in place."""
    for name, child in list(distiller.named_children()):
        if name != "teacher":
            setattr(distiller, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
