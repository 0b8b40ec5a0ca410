"""Run every benchmark of the toolkit in one go and print their ratio tables.

    python -m benchmarks.run_all [--only losses,models,data,train_step] [--out FILE.md]

Each benchmark runs in its own process (``python -m benchmarks.<name>``) so that thread
settings and loader workers do not leak between them; their output is printed as it comes
and, with ``--out``, collected into one markdown file headed by the date and the hardware.
``sldistill bench`` calls this script from a source checkout.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS: dict[str, tuple[str, list[str]]] = {
    "losses": ("logit losses forward+backward vs release-style implementations", []),
    "models": ("zoo models: layout and precision", ["--threads", "2"]),
    "data": ("two-view loading vs a PIL pipeline", []),
    "train_step": ("SLD training step vs a release-style step", ["--threads", "2"]),
    "teacher_cache": ("KD/SLD steps with the teacher cache vs the live teacher", ["--threads", "2"]),
}


def hardware() -> str:
    """One line describing this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} logical cores, {gpu}; torch {torch.__version__}, "
            f"Python {platform.python_version()}")


def run(names: list[str]) -> list[tuple[str, str, float, int]]:
    """Run the named benchmarks; returns (name, output, seconds, exit code) for each."""
    results = []
    for name in names:
        title, extra = BENCHMARKS[name]
        print(f"\n=== {name}: {title}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *extra], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        dt = time.perf_counter() - t0
        print(proc.stdout, end="", flush=True)
        print(f"--- {name}: {dt:.0f} s, exit {proc.returncode}", flush=True)
        results.append((name, proc.stdout, dt, proc.returncode))
    return results


def to_markdown(results: list[tuple[str, str, float, int]]) -> str:
    """The collected outputs as a markdown report."""
    lines = [f"Measured {_dt.datetime.now():%Y-%m-%d %H:%M} on {hardware()}.", ""]
    for name, out, dt, _rc in results:
        lines += [f"### {name} ({BENCHMARKS[name][0]}; {dt:.0f} s)", "", "```", out.rstrip(), "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="sldistill bench", description="Run the benchmarks and print their ratio tables.")
    ap.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma-separated subset of {', '.join(BENCHMARKS)}")
    ap.add_argument("--out", type=Path, default=None, help="also write the outputs to this markdown file")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        ap.error(f"unknown benchmark(s) {unknown}; valid: {', '.join(BENCHMARKS)}")
    print(hardware())
    results = run(names)
    if args.out is not None:
        args.out.write_text(to_markdown(results))
        print(f"\nwrote {args.out}")
    return max((rc for *_, rc in results), default=0)


if __name__ == "__main__":
    raise SystemExit(main())
