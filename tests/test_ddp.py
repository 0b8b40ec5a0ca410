"""Two gloo processes: the first DDP step's loss and gradients equal a one-process computation
over the same two per-process batches with averaged gradients (plain SGD and DOT)."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from sldistill.engine.distributed import barrier, cleanup_distributed, init_distributed
from sldistill.engine.trainer import Trainer
from test_trainer import RandomImages, TinyKD, TinyNet, make_cfg

BATCH = 4
_NETWORK_ERRORS = ("EADDRINUSE", "Address already in use", "Connection reset", "Connection refused",
                   "Socket Timeout", "timed out")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batches():
    ds = RandomImages(2 * BATCH, views=1)
    x = ds.x
    y = ds.y
    return [(x[r * BATCH:(r + 1) * BATCH], y[r * BATCH:(r + 1) * BATCH]) for r in range(2)]


def _build(cfg):
    torch.manual_seed(0)
    return TinyKD(TinyNet(), TinyNet(8), cfg)


def _worker(rank: int, port: int, out_dir: str, trainer_names: list[str]) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    info = init_distributed("cpu")  # the torchrun code path: environment variables
    assert info.distributed and info.backend == "gloo"
    from pathlib import Path

    for trainer_name in trainer_names:
        cfg = make_cfg(Path(out_dir), TRAINER=trainer_name, BATCH_SIZE=2 * BATCH)
        distiller = _build(cfg)
        x, y = _batches()[rank]
        trainer = Trainer(cfg, distiller, [{"views": [x], "target": y, "index": torch.arange(BATCH)}], [],
                          Path(out_dir) / "run", info)
        _, terms, _ = trainer._train_step([x.contiguous(memory_format=torch.channels_last)], y, 1, {})
        grads = {n: (p.grad.clone() if p.grad is not None else None) for n, p in distiller.named_parameters()
                 if p.requires_grad}
        torch.save({"terms": {k: v.detach() for k, v in terms.items()}, "grads": grads},
                   Path(out_dir) / f"{trainer_name}_rank{rank}.pt")
    barrier()  # as sldistill.engine.run does: no rank tears the group down while its peer is in it
    cleanup_distributed()


def _reference(cfg, trainer_name: str):
    """One process: per-batch losses; gradients of each loss averaged over the two batches."""
    from sldistill.optim import split_terms

    distiller = _build(cfg).train()
    terms_per_rank, grads = [], {}
    params = {n: p for n, p in distiller.named_parameters() if p.requires_grad}
    for x, y in _batches():
        _, terms = distiller.forward_train([x], y, 1)
        terms_per_rank.append({k: v.detach() for k, v in terms.items()})
        # DOT leaves the task (CE) gradient in .grad after its step; SGD the gradient of the sum
        loss = split_terms(terms)[0] if trainer_name == "dot" else sum(terms.values())
        g = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        for (n, _), gi in zip(params.items(), g):
            if gi is not None:
                grads[n] = grads.get(n, 0) + gi / 2
    return terms_per_rank, grads


def test_two_process_gloo_step_matches_one_process(tmp_path):
    torch.set_num_threads(1)
    names = ["base", "dot"]  # plain SGD (DDP's reducer) and DOT (two backward passes, manual all-reduce)
    for attempt in range(2):
        try:
            mp.start_processes(_worker, args=(_free_port(), str(tmp_path), names), nprocs=2, join=True,
                               start_method="spawn")
            break
        except mp.ProcessRaisedException as exc:
            # the free port can be taken between choosing it and binding it: retry once on a
            # rendezvous/network error only; anything else (a wrong result) fails at once
            if attempt or not any(w in str(exc) for w in _NETWORK_ERRORS):
                raise
    for trainer_name in names:
        _compare(tmp_path, trainer_name)


def _compare(tmp_path, trainer_name: str) -> None:
    cfg = make_cfg(tmp_path, TRAINER=trainer_name)
    ref_terms, ref_grads = _reference(cfg, trainer_name)
    for rank in range(2):
        got = torch.load(tmp_path / f"{trainer_name}_rank{rank}.pt")
        for k, v in ref_terms[rank].items():
            torch.testing.assert_close(got["terms"][k], v, rtol=1e-5, atol=1e-6)
        for n, g in ref_grads.items():
            assert got["grads"][n] is not None, n
            torch.testing.assert_close(got["grads"][n], g, rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="SyncBatchNorm needs a CUDA device (none here); "
                    "the CPU refusal is tested in test_trainer.py::test_refusals_have_clear_messages")
def test_sync_bn_converts_student_on_cuda(tmp_path):
    cfg = make_cfg(tmp_path, SYNC_BN=True)
    cfg.EXPERIMENT.DEVICE = "cuda"
    from sldistill.engine.distributed import DistInfo

    info = DistInfo(0, 1, 0, torch.device("cuda:0"))
    trainer = Trainer(cfg, _build(cfg), [(torch.zeros(2, 3, 8, 8), torch.zeros(2, dtype=torch.long))], [],
                      tmp_path / "r", info)
    assert next(trainer.distiller.student.parameters()).is_cuda
