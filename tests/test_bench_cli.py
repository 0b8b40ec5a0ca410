"""`sldistill bench` finds the benchmarks of the checkout and validates its arguments; the
train-step benchmark's compute floor counts multiply-accumulates correctly."""
from pathlib import Path

from benchmarks.run_all import BENCHMARKS, to_markdown
from sldistill.cli import main


def test_bench_rejects_unknown_names_with_the_valid_ones(capfd):
    assert main(["bench", "--only", "nope"]) == 2
    err = capfd.readouterr().err
    assert "unknown benchmark(s) ['nope']" in err and "train_step" in err and "usage: sldistill bench" in err


def test_report_lists_each_benchmark_with_its_output():
    text = to_markdown([("losses", "row 1\nspeed-up 4.0x\n", 12.0, 0)])
    assert text.startswith("Measured ") and "### losses" in text and "speed-up 4.0x" in text
    assert set(BENCHMARKS) == {"losses", "models", "data", "train_step", "teacher_cache"}
    assert all((Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py").is_file() for name in BENCHMARKS)


def test_train_step_floor_counts_conv_and_linear_macs() -> None:
    """The fp32 compute floor printed by benchmarks/train_step.py rests on this count."""
    import torch
    from torch import nn

    from benchmarks.train_step import conv_linear_macs

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)
            self.fc = nn.Linear(8, 5)

        def forward(self, x):
            return self.fc(self.dw(self.conv(x)).mean((2, 3)))

    # conv: 8x4x4 outputs x 27; depthwise: 8x2x2 outputs x 9; linear: 5 x 8
    assert conv_linear_macs(Tiny(), torch.zeros(1, 3, 4, 4)) == 128 * 27 + 32 * 9 + 40
