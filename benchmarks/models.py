"""Images/s of the zoo's two reference workloads, in one run:

- ResNet8x4 training step (forward, cross-entropy, backward, SGD step);
- ResNet32x4 evaluation (inference-mode forward);

at batch 64 (32x32 inputs), default memory layout vs channels_last, fp32 vs bf16 autocast.
The four variants of a workload are timed in interleaved rounds (one call of each per round,
the order rotating), and each speed-up is the median over rounds of its ratio to the
default-layout fp32 variant of the same round, so load from other processes affects all
variants alike; images/s are medians over the rounds.

    python -m benchmarks.models [--batch 64] [--device auto|cpu|cuda] [--repeat 5] [--threads N]
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
from typing import Callable

import torch
import torch.nn.functional as F

from benchmarks.common import interleaved_rounds, median_ratio
from sldistill.models import create


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def make_train_step(name: str, batch: int, device: torch.device, channels_last: bool, bf16: bool) -> Callable[[], None]:
    """A closure running one training step of ``name`` on a fixed random batch."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = create(name, 100).to(device).to(memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 100, (batch,), device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with _autocast(device, bf16):
            logits, _ = model(x)
            loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        opt.step()
        _sync(device)

    return step


def make_eval_step(name: str, batch: int, device: torch.device, channels_last: bool, bf16: bool) -> Callable[[], None]:
    """A closure running one inference-mode forward of ``name`` on a fixed random batch."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = create(name, 100).to(device).to(memory_format=fmt).eval()
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)

    def step() -> None:
        with torch.inference_mode(), _autocast(device, bf16):
            model(x)
        _sync(device)

    return step


def main(argv: list[str] | None = None) -> None:
    """Run the grid and print images/s with speed-ups over default-layout fp32."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave as is)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"device {device} ({where}), batch {args.batch}, torch {torch.__version__}")
    for label, name, maker in (("train", "resnet8x4", make_train_step), ("eval", "resnet32x4", make_eval_step)):
        steps: dict[str, Callable[[], None]] = {}
        for channels_last in (False, True):
            for bf16 in (False, True):
                torch.manual_seed(0)
                layout = "channels_last" if channels_last else "default"
                steps[f"{layout:<14} {'bf16' if bf16 else 'fp32':<5}"] = maker(name, args.batch, device,
                                                                               channels_last, bf16)
        rounds = interleaved_rounds(steps, warmup=args.warmup, repeat=args.repeat)
        base = next(iter(rounds.values()))  # default layout, fp32
        for key, times in rounds.items():
            print(f"{label:<5} {name:<11} {key} {args.batch / statistics.median(times):9.1f} img/s   "
                  f"x{median_ratio(base, times):4.2f} vs default fp32")

if __name__ == "__main__":
    main()
