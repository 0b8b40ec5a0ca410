"""Small timing helpers shared by the benchmark scripts (not a test module)."""
from __future__ import annotations

import statistics
import time
from typing import Callable

__all__ = ["time_fn", "ratio_row"]


def time_fn(fn: Callable[[], object], *, warmup: int = 2, repeat: int = 7, number: int = 1) -> float:
    """Median wall-clock seconds of ``number`` calls of ``fn`` over ``repeat`` rounds."""
    for _ in range(warmup):
        fn()
    rounds = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        rounds.append((time.perf_counter() - t0) / number)
    return statistics.median(rounds)


def ratio_row(label: str, baseline_s: float, ours_s: float) -> str:
    """One line of a ratio table: times in ms and the speed-up of ours over the baseline."""
    return f"{label:<32} baseline {baseline_s * 1e3:9.2f} ms   ours {ours_s * 1e3:9.2f} ms   speed-up {baseline_s / ours_s:5.2f}x"
