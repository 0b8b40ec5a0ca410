"""`sldistill bench` finds the benchmarks of the checkout and validates its arguments."""
from benchmarks.run_all import BENCHMARKS, to_markdown
from sldistill.cli import main


def test_bench_rejects_unknown_names_with_the_valid_ones(capfd):
    assert main(["bench", "--only", "nope"]) == 2
    err = capfd.readouterr().err
    assert "unknown benchmark(s) ['nope']" in err and "train_step" in err


def test_report_lists_each_benchmark_with_its_output():
    text = to_markdown([("losses", "row 1\nspeed-up 4.0x\n", 12.0, 0)])
    assert text.startswith("Measured ") and "### losses" in text and "speed-up 4.0x" in text
    assert set(BENCHMARKS) == {"losses", "models", "data", "train_step"}
