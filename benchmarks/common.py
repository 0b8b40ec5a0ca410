"""Small timing helpers shared by the benchmark scripts (not a test module)."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Mapping

__all__ = ["time_fn", "ratio_row", "interleaved_rounds", "median_ratio", "SilentLogger"]


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
    return (f"{label:<32} baseline {baseline_s * 1e3:9.2f} ms   ours {ours_s * 1e3:9.2f} ms   "
            f"speed-up {baseline_s / ours_s:5.2f}x")


def interleaved_rounds(steps: Mapping[str, Callable[[], object]], *, warmup: int = 1,
                       repeat: int = 5) -> dict[str, list[float]]:
    """Wall-clock seconds of each step in each of ``repeat`` rounds.

    Every round calls each step once, back to back, starting from a different step each
    round (the order rotates), so that load from other processes and drifts of the machine's
    speed reach all steps alike and no step always follows the same one. Each step is first
    called ``warmup`` times untimed.
    """
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    rounds: dict[str, list[float]] = {k: [] for k in steps}
    names = list(steps)
    for r in range(repeat):
        shift = r % len(names)
        for k in names[shift:] + names[:shift]:
            t0 = time.perf_counter()
            steps[k]()
            rounds[k].append(time.perf_counter() - t0)
    return rounds


def median_ratio(base: list[float], ours: list[float]) -> float:
    """Median over rounds of ``base / ours``, the two timed in the same rounds (see
    :func:`interleaved_rounds`): a change of the machine's speed during the run moves both
    sides of a round alike and cancels out of the ratio."""
    return statistics.median(b / o for b, o in zip(base, ours))


class SilentLogger:
    """A trainer logger that drops everything (benchmarks write no run folder)."""

    _tb = None

    def info(self, msg: str) -> None:
        pass

    def close(self) -> None:
        pass
