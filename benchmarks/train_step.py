"""Images/s of one SLD training step: ours (the Trainer's step) vs a plain release-style step.

ResNet32x4 -> ResNet8x4, two views of a batch of 64 CIFAR-sized images, CPU, fp32 and bf16,
in one run. Ours is ``Trainer._train_step`` with the SLD distiller: channels_last, the
teacher run once over both views (in 32-row micro-batches on the CPU, ``SOLVER.TEACHER_CHUNK``),
through a BN-folded copy (``SOLVER.FOLD_TEACHER_BN``), and the fused loss. The baseline is
written here the way the published code is structured: contiguous (NCHW) tensors, two teacher
forwards, one KL call per temperature and view, an SGD step.

Ours is also timed with each teacher-side option off (``TEACHER_CHUNK 0``: one 128-row
teacher batch; ``FOLD_TEACHER_BN false``), to show what each contributes. The steps are timed
in interleaved rounds (one call of each per round, in rotating order), so load from other
processes affects them alike; the first call of each is a warm-up (it also builds the folded
teacher).

Run: ``python benchmarks/train_step.py [--batch 64] [--repeat 5] [--threads N]``.
Reported: the median seconds per step and images/s (2 views x batch per step) over the
rounds, and each speed-up as the median over rounds of the per-round ratio (the steps of a
round run back to back, so a drift of the machine's speed during the run cancels out).
All steps run at an epoch past ``SLD.GAMMA`` so the pseudo-teacher term is included.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sldistill import models  # noqa: E402
from sldistill.distillers import build_distiller  # noqa: E402
from sldistill.engine.config import load_config  # noqa: E402
from sldistill.engine.distributed import DistInfo  # noqa: E402
from sldistill.engine.trainer import Trainer  # noqa: E402
from sldistill.logits import swap  # noqa: E402

EPOCH = 151  # past the default gamma (150): every SLD term is computed


def _kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, t: float) -> torch.Tensor:
    log_p = F.log_softmax(student_logits / t, dim=1)
    q = F.softmax(teacher_logits / t, dim=1)
    return F.kl_div(log_p, q, reduction="none").sum(1).mean() * t * t


class PlainSLDStep:
    """A release-structured SLD step (baseline): separate teacher forwards, a loss per temperature."""

    def __init__(self, student, teacher, lr: float, amp: torch.dtype | None) -> None:
        self.student, self.teacher, self.amp = student, teacher, amp
        self.opt = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)

    def __call__(self, weak, strong, target) -> None:
        with torch.autocast("cpu", dtype=self.amp, enabled=self.amp is not None):
            s_w, _ = self.student(weak)
            s_s, _ = self.student(strong)
            with torch.no_grad():
                t_w, _ = self.teacher(weak)
                t_s, _ = self.teacher(strong)
            loss = 0.1 * (F.cross_entropy(s_w, target) + F.cross_entropy(s_s, target))
            sw_t, ss_t = swap(t_w, target), swap(t_s, target)
            for t in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0):
                loss = loss + 0.9 * _kl(s_w, sw_t, t) + 0.9 * _kl(s_s, ss_t, t)
                if EPOCH > 150:
                    loss = loss + 0.9 * _kl(s_w, swap(s_w, target), t) + 0.9 * _kl(s_s, swap(s_s, target), t)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()


def main(argv: list[str] | None = None) -> int:
    """Time the plain step and ours (BN folding on and off) in fp32 and bf16; print a ratio table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=5, help="timed rounds (default 5)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = load_config(None, ["DISTILLER.TYPE", "SLD", "DISTILLER.TEACHER", "resnet32x4", "DISTILLER.STUDENT",
                             "resnet8x4", "SOLVER.TRAINER", "ours", "SOLVER.LR", "0.025", "EXPERIMENT.DEVICE", "cpu",
                             "LOG.TENSORBOARD", "false", "LOG.PROGRESS", "false"])
    teacher0 = models.create("resnet32x4", num_classes=100, dataset="cifar100").eval()
    student0 = models.create("resnet8x4", num_classes=100, dataset="cifar100")
    g = torch.Generator().manual_seed(1)
    weak = torch.randn(args.batch, 3, 32, 32, generator=g)
    strong = torch.randn(args.batch, 3, 32, 32, generator=g)
    target = torch.randint(0, 100, (args.batch,), generator=g)
    images = 2 * args.batch
    print(f"SLD step, resnet32x4 -> resnet8x4, batch {args.batch} x 2 views, CPU, {torch.get_num_threads()} threads")
    results = {}
    for amp_name, amp in (("fp32", None), ("bf16", torch.bfloat16)):
        w_cl = weak.contiguous(memory_format=torch.channels_last)
        s_cl = strong.contiguous(memory_format=torch.channels_last)
        steps = {}
        plain = PlainSLDStep(copy.deepcopy(student0).train(), copy.deepcopy(teacher0).eval(), 0.025, amp)
        steps["plain"] = lambda plain=plain: plain(weak, strong, target)
        for label, fold, chunk in (("ours", True, -1), ("ours, no chunk", True, 0), ("ours, no fold", False, -1)):
            c = copy.deepcopy(cfg)
            c.SOLVER.AMP = "bf16" if amp is not None else "none"
            c.SOLVER.FOLD_TEACHER_BN = fold
            c.SOLVER.TEACHER_CHUNK = chunk
            dist = build_distiller(c, copy.deepcopy(student0), copy.deepcopy(teacher0))
            trainer = Trainer(c, dist, [None], [], Path("/tmp/sldistill-bench-unused"), DistInfo(),
                              logger=_Silent())
            steps[label] = lambda trainer=trainer: trainer._train_step([w_cl, s_cl], target, EPOCH, {})
        rounds = _interleaved(steps, warmup=1, repeat=args.repeat)
        results[amp_name] = rounds
        t_base = statistics.median(rounds["plain"])
        print(f"{amp_name}: plain {t_base * 1e3:8.1f} ms/step ({images / t_base:6.1f} img/s)", flush=True)
        for label in ("ours, no fold", "ours, no chunk", "ours"):
            t = statistics.median(rounds[label])
            print(f"      {label:<15} {t * 1e3:8.1f} ms/step ({images / t:6.1f} img/s)   "
                  f"speed-up {_ratio(rounds['plain'], rounds[label]):4.2f}x", flush=True)
        print(f"      folding the teacher's BN: {_ratio(rounds['ours, no fold'], rounds['ours']):4.2f}x on our step; "
              f"teacher micro-batches: {_ratio(rounds['ours, no chunk'], rounds['ours']):4.2f}x", flush=True)
    print(f"ours bf16 vs plain fp32: {_ratio(results['fp32']['plain'], results['bf16']['ours']):4.2f}x")
    _print_fp32_floor(teacher0, student0, weak, statistics.median(results["fp32"]["plain"]))
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


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _print_fp32_floor(teacher: torch.nn.Module, student: torch.nn.Module, view: torch.Tensor, plain_s: float) -> None:
    """The compute floor of an fp32 step: its convolution/linear FLOPs at the machine's sgemm
    rate (teacher forward over both views, student forward and backward, about 3x the
    forward), and the largest speed-up over the plain step any fp32 implementation of the
    same arithmetic could reach."""
    images = 2 * view.shape[0]
    t_flop = 2 * conv_linear_macs(teacher.eval(), view[:1]) * images
    s_flop = 3 * 2 * conv_linear_macs(student.eval(), view[:1]) * images
    student.train()
    rate = sgemm_rate()
    floor = (t_flop + s_flop) / rate
    print(f"fp32 compute floor: teacher {t_flop / 1e9:.0f} + student {s_flop / 1e9:.0f} GFLOP per step at this "
          f"machine's sgemm rate ({rate / 1e9:.0f} GFLOP/s) = {floor * 1e3:.0f} ms/step, so no fp32 step doing "
          f"this arithmetic can beat the plain step by more than {plain_s / floor:4.2f}x here")


def _interleaved(steps: dict, *, warmup: int, repeat: int) -> dict[str, list[float]]:
    """Wall-clock seconds of each step in each round: one call of each per round, the order
    rotating from round to round so that no step always follows the same one."""
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    rounds: dict[str, list[float]] = {k: [] for k in steps}
    names = list(steps)
    for r in range(repeat):
        for k in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            steps[k]()
            rounds[k].append(time.perf_counter() - t0)
    return rounds


def _ratio(base: list[float], ours: list[float]) -> float:
    """Median over rounds of ``base / ours``: the two were timed back to back in each round, so
    a machine whose speed drifts during the run (other load, clock changes) moves both alike."""
    return statistics.median(b / o for b, o in zip(base, ours))


class _Silent:
    """A logger that drops everything (the benchmark writes no run folder)."""

    _tb = None

    def info(self, msg: str) -> None:  # noqa: D401
        pass

    def close(self) -> None:
        pass


if __name__ == "__main__":
    raise SystemExit(main())
