"""Images/s of one SLD training step: ours (the Trainer's step) against a release-style step.

ResNet32x4 -> ResNet8x4, two views (weak, strong) of a batch of 64 CIFAR-sized images, on the
CPU, in fp32 and under bf16 autocast, all in one run:

- ours: ``Trainer._train_step`` with the SLD distiller, built from the config as ``sldistill
  train`` builds it: models and inputs in channels_last (``SOLVER.CHANNELS_LAST``, the
  default), the frozen teacher run once over both views concatenated, the plain PyTorch loss
  of :func:`sldistill.losses.sld` (the temperatures stacked), the config's SGD step;
- plain: :class:`PlainSLDStep` below, written the way the published code is structured:
  default (NCHW) layout, one teacher forward per view, one KL call per temperature and view,
  an SGD step.

Both start from the same weights and get the same batch; before timing, their fp32 losses
on it are checked equal (relative 1e-4), so they do the same work. The four steps (plain and
ours, fp32 and bf16) are timed in interleaved rounds (one call of each per round, the order
rotating; the first call of each is an untimed warm-up), so load from other processes
affects them alike. Every step runs at
an epoch past ``SLD.GAMMA``, so the pseudo-teacher term is included.

Run: ``python -m benchmarks.train_step [--batch 64] [--repeat 5] [--threads N]``.
Reported: the median milliseconds per step and images/s (2 views x batch per step), and each
speed-up as the median over rounds of the per-round ratio (the steps of a round run back to
back, so a drift of the machine's speed during the run cancels out); then an estimate of
the fp32 compute floor of the step (its convolution and linear FLOPs at this machine's
measured float32 matrix-multiply rate) and each fp32 step's time as a multiple of it: a step
near 1.0x has little left to gain in fp32 on this machine.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import SilentLogger, interleaved_rounds, median_ratio  # noqa: E402
from sldistill import models  # noqa: E402
from sldistill.distillers import build_distiller  # noqa: E402
from sldistill.engine.config import load_config  # noqa: E402
from sldistill.engine.distributed import DistInfo  # noqa: E402
from sldistill.engine.trainer import Trainer  # noqa: E402
from sldistill.logits import swap  # noqa: E402

EPOCH = 151  # past the default gamma (150): every SLD term is computed
TEMPERATURES = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0)


def _kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, t: float) -> torch.Tensor:
    log_p = F.log_softmax(student_logits / t, dim=1)
    q = F.softmax(teacher_logits / t, dim=1)
    return F.kl_div(log_p, q, reduction="none").sum(1).mean() * t * t


class PlainSLDStep:
    """The baseline: a release-structured SLD step (two teacher forwards, a KL per temperature)."""

    def __init__(self, student: torch.nn.Module, teacher: torch.nn.Module, cfg, amp: torch.dtype | None) -> None:
        self.student, self.teacher, self.amp = student, teacher, amp
        self.opt = torch.optim.SGD(student.parameters(), lr=float(cfg.SOLVER.LR), momentum=float(cfg.SOLVER.MOMENTUM),
                                   weight_decay=float(cfg.SOLVER.WEIGHT_DECAY))

    def loss(self, weak: torch.Tensor, strong: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=self.amp or torch.bfloat16, enabled=self.amp is not None):
            s_w, _ = self.student(weak)
            s_s, _ = self.student(strong)
            with torch.no_grad():
                t_w, _ = self.teacher(weak)
                t_s, _ = self.teacher(strong)
            loss = 0.1 * (F.cross_entropy(s_w, target) + F.cross_entropy(s_s, target))
            sw_t, ss_t = swap(t_w, target), swap(t_s, target)
            for t in TEMPERATURES:
                loss = loss + 0.9 * _kl(s_w, sw_t, t) + 0.9 * _kl(s_s, ss_t, t)
                if EPOCH > 150:
                    loss = loss + 0.9 * _kl(s_w, swap(s_w, target), t) + 0.9 * _kl(s_s, swap(s_s, target), t)
        return loss

    def __call__(self, weak: torch.Tensor, strong: torch.Tensor, target: torch.Tensor) -> None:
        loss = self.loss(weak, strong, target)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()




def _config(amp: str):
    return load_config(None, ["DISTILLER.TYPE", "SLD", "DISTILLER.TEACHER", "resnet32x4", "DISTILLER.STUDENT",
                              "resnet8x4", "SOLVER.LR", "0.025", "SOLVER.WEIGHT_DECAY", "0.0005",
                              "SOLVER.AMP", amp, "EXPERIMENT.DEVICE", "cpu", "LOG.TENSORBOARD", "false",
                              "LOG.PROGRESS", "false"])


def _check_same_loss(plain: PlainSLDStep, trainer: Trainer, weak: torch.Tensor, strong: torch.Tensor,
                     target: torch.Tensor) -> float:
    """Relative difference of the two sides' fp32 losses on the batch (raises above 1e-4)."""
    cl = torch.channels_last
    with torch.no_grad():
        ref = plain.loss(weak, strong, target)
        _, terms = trainer.model([weak.contiguous(memory_format=cl), strong.contiguous(memory_format=cl)],
                                 target, EPOCH)
        ours = torch.stack([t.float() for t in terms.values()]).sum()
    rel = abs(float(ours) - float(ref)) / abs(float(ref))
    if rel > 1e-4:
        raise AssertionError(f"ours and the plain step compute different losses: {float(ours)} vs {float(ref)}")
    return rel


def _build_steps(student0: torch.nn.Module, teacher0: torch.nn.Module, weak: torch.Tensor, strong: torch.Tensor,
                 target: torch.Tensor, amp: torch.dtype | None) -> dict[str, Callable[[], object]]:
    """The plain step and ours at one precision, each on fresh copies of the models."""
    cfg = _config("bf16" if amp is not None else "none")
    plain = PlainSLDStep(copy.deepcopy(student0).train(), copy.deepcopy(teacher0).eval(), cfg, amp)
    dist = build_distiller(cfg, copy.deepcopy(student0), copy.deepcopy(teacher0))
    trainer = Trainer(cfg, dist, [None], [], Path("/tmp/sldistill-bench-unused"), DistInfo(),
                      logger=SilentLogger())  # type: ignore[arg-type]
    trainer.model.train()
    if amp is None:
        rel = _check_same_loss(plain, trainer, weak, strong, target)
        print(f"fp32 losses of the two steps agree (relative difference {rel:.1e})")
    w_cl = weak.contiguous(memory_format=torch.channels_last)
    s_cl = strong.contiguous(memory_format=torch.channels_last)
    return {"plain": lambda: plain(weak, strong, target),
            "ours": lambda: trainer._train_step([w_cl, s_cl], target, EPOCH, {})}


def main(argv: list[str] | None = None) -> int:
    """Time the plain step and ours in fp32 and bf16; print a ratio table and the fp32 floor."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--batch", type=int, default=64, help="images per view (default 64)")
    ap.add_argument("--repeat", type=int, default=5, help="timed rounds (default 5)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    teacher0 = models.create("resnet32x4", num_classes=100, dataset="cifar100").eval()
    student0 = models.create("resnet8x4", num_classes=100, dataset="cifar100")
    g = torch.Generator().manual_seed(1)
    weak = torch.randn(args.batch, 3, 32, 32, generator=g)
    strong = torch.randn(args.batch, 3, 32, 32, generator=g)
    target = torch.randint(0, 100, (args.batch,), generator=g)
    images = 2 * args.batch
    print(f"SLD step, resnet32x4 -> resnet8x4, batch {args.batch} x 2 views, CPU, {torch.get_num_threads()} threads")
    rate = sgemm_rate()  # measured before and after the steps, the faster kept (load from elsewhere slows it)
    steps: dict[str, Callable[[], object]] = {}
    for amp_name, amp in (("fp32", None), ("bf16", torch.bfloat16)):
        for label, fn in _build_steps(student0, teacher0, weak, strong, target, amp).items():
            steps[f"{label} {amp_name}"] = fn
    rounds = interleaved_rounds(steps, warmup=1, repeat=args.repeat)  # all four steps in every round
    for amp_name in ("fp32", "bf16"):
        for label in ("plain", "ours"):
            t = statistics.median(rounds[f"{label} {amp_name}"])
            speed = (f"   speed-up {median_ratio(rounds[f'plain {amp_name}'], rounds[f'ours {amp_name}']):4.2f}x"
                     if label == "ours" else "")
            print(f"{amp_name}: {label:<6} {t * 1e3:8.1f} ms/step ({images / t:6.1f} img/s){speed}", flush=True)
    print(f"ours bf16 vs plain fp32: {median_ratio(rounds['plain fp32'], rounds['ours bf16']):4.2f}x")
    rate = max(rate, sgemm_rate())
    _print_fp32_floor(teacher0, student0, weak, rate, statistics.median(rounds["plain fp32"]),
                      statistics.median(rounds["ours fp32"]))
    return 0


def conv_linear_macs(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of the convolutions and linear layers of one forward of ``x``."""
    total = 0

    def hook(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, torch.nn.Conv2d):
            k = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            total += output.numel() * k
        elif isinstance(module, torch.nn.Linear):
            total += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return total


def sgemm_rate(n: int = 2048, repeat: int = 5) -> float:
    """This machine's float32 matrix-multiply throughput (FLOP/s, fastest of ``repeat``)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeat))
    return 2 * n ** 3 / best


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _print_fp32_floor(teacher: torch.nn.Module, student: torch.nn.Module, view: torch.Tensor, rate: float,
                      plain_s: float, ours_s: float) -> None:
    """The compute floor of an fp32 step, an estimate: its convolution and linear FLOPs
    (teacher forward over both views; student forward and backward, the backward counted as
    twice the forward) at ``rate``, this machine's float32 matrix-multiply rate; and how far
    above it the two steps run."""
    images = 2 * view.shape[0]
    t_flop = 2 * conv_linear_macs(teacher.eval(), view[:1]) * images
    s_flop = 3 * 2 * conv_linear_macs(student.eval(), view[:1]) * images
    student.train()
    floor = (t_flop + s_flop) / rate
    print(f"fp32 compute floor: teacher {t_flop / 1e9:.0f} + student {s_flop / 1e9:.0f} GFLOP per step at this "
          f"machine's sgemm rate ({rate / 1e9:.0f} GFLOP/s) = {floor * 1e3:.0f} ms/step; the plain step takes "
          f"{plain_s / floor:4.2f}x that, ours {ours_s / floor:4.2f}x")

if __name__ == "__main__":
    raise SystemExit(main())
