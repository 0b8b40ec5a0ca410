"""sldistill.sweep / sldistill.report: planning, aggregation on recorded (stub) results, reuse,
one-run-per-device scheduling, report files."""
from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import pytest

from sldistill.engine.config import save_config
from sldistill.report import aggregate, mean_std, read_run
from sldistill.sweep import _finished_same, _run_parallel, plan_sweep, summarize_runs, write_sweep_report

KD = "fashion_mnist/kd/resnet20_resnet8.yaml"
SLD = "fashion_mnist/sld/resnet20_resnet8.yaml"

# recorded test top-1 per epoch, per (method, seed): made-up curves with known best/last
CURVES = {
    ("kd", 0): [70.0, 75.5, 74.0],
    ("kd", 1): [71.0, 73.0, 76.0],
    ("kd", 2): [69.0, 77.0, 75.0],
    ("sld", 0): [72.0, 78.0, 77.5],
    ("sld", 1): [73.5, 76.0, 79.0],
    ("sld", 2): [70.0, 80.0, 78.0],
}


def _write_stub_runs(jobs, curves=CURVES, epochs_done=None) -> None:
    """What a finished run leaves behind: config.yaml, metrics.csv, summary.json."""
    for job in jobs:
        d = job.run_dir
        d.mkdir(parents=True, exist_ok=True)
        save_config(job.cfg, d / "config.yaml")
        acc = curves[(job.method, job.seed)][: epochs_done]
        with open(d / "metrics.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["epoch", "lr", "train_loss", "test_acc", "test_acc_top5"])
            for i, a in enumerate(acc, 1):
                w.writerow([i, 0.05, 1.0, a, 99.0])
        (d / "summary.json").write_text(json.dumps({"best_acc": max(acc), "last_acc": acc[-1]}))


def _plan(tmp_path: Path, seeds=3):
    return plan_sweep([KD, SLD], seeds, ["SOLVER.EPOCHS", "3", "DATASET.TRAIN_SUBSET", "500"],
                      out=tmp_path / "sw", labels=["kd", "sld"])


def test_plan_sets_seeds_folders_and_shared_overrides(tmp_path: Path) -> None:
    jobs = plan_sweep([KD, SLD], 2, ["SOLVER.EPOCHS", "3"], out=tmp_path / "sw", first_seed=5)
    assert [(j.method, j.seed) for j in jobs] == [("kd,resnet20,resnet8", 5), ("sld,resnet20,resnet8", 5),
                                                  ("kd,resnet20,resnet8", 6), ("sld,resnet20,resnet8", 6)]
    for j in jobs:
        assert j.cfg.EXPERIMENT.SEED == j.seed
        assert j.cfg.SOLVER.EPOCHS == 3
        assert j.run_dir == tmp_path / "sw" / j.method / f"seed{j.seed}"
    assert jobs[1].cfg.SOLVER.TRAINER == "ours" and jobs[0].cfg.SOLVER.TRAINER == "base"


def test_plan_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--seeds must be >= 1"):
        plan_sweep([KD], 0, out=tmp_path)
    with pytest.raises(ValueError, match="share the method label"):
        plan_sweep([KD, KD], 1, out=tmp_path)
    with pytest.raises(ValueError, match="one label per --cfg"):
        plan_sweep([KD, SLD], 1, out=tmp_path, labels=["a"])
    with pytest.raises(ValueError, match="at least one"):
        plan_sweep([], 1, out=tmp_path)


def test_aggregate_recorded_results_mean_and_sample_std(tmp_path: Path) -> None:
    jobs = _plan(tmp_path)
    _write_stub_runs(jobs)
    summaries, records = summarize_runs(jobs)
    assert [s.method for s in summaries] == ["kd", "sld"]
    for s in summaries:
        curves = [CURVES[(s.method, seed)] for seed in range(3)]
        best = [max(c) for c in curves]
        last = [c[-1] for c in curves]
        assert s.n == 3 and s.seeds == [0, 1, 2] and s.incomplete == 0
        assert s.best_mean == pytest.approx(statistics.mean(best))
        assert s.best_std == pytest.approx(statistics.stdev(best))  # N - 1
        assert s.last_mean == pytest.approx(statistics.mean(last))
        assert s.last_std == pytest.approx(statistics.stdev(last))
    kd = summaries[0]
    # by hand: best 75.5, 76, 77 -> mean 76.1667, std sqrt(((.6667)^2+(.1667)^2+(.8333)^2)/2)
    assert kd.best_mean == pytest.approx(76.16667, abs=1e-4)
    assert kd.best_std == pytest.approx(math.sqrt((0.66667**2 + 0.16667**2 + 0.83333**2) / 2), abs=1e-4)
    assert "3 epochs" in kd.budget and "1 view" in kd.budget and "500 train images" in kd.budget
    assert "2 views" in summaries[1].budget and "strong" in summaries[1].budget


def test_report_files(tmp_path: Path) -> None:
    jobs = _plan(tmp_path)
    _write_stub_runs(jobs)
    summaries, records = summarize_runs(jobs)
    files = write_sweep_report(summaries, records, tmp_path / "sw", command="sldistill sweep ...")
    md = files["md"].read_text()
    assert "| kd | 3 | 76.17 ± 0.76 | 75.00 ± 1.00 |" in md
    assert "N - 1" in md and "sldistill sweep ..." in md
    rows = list(csv.DictReader(open(files["csv"])))
    assert [r["method"] for r in rows] == ["kd", "sld"]
    assert float(rows[1]["last_mean"]) == pytest.approx(statistics.mean([77.5, 79.0, 78.0]), abs=1e-4)
    assert rows[0]["seeds"] == "0 1 2"
    assert files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_different_budgets_are_flagged(tmp_path: Path) -> None:
    a = plan_sweep([KD], 2, ["SOLVER.EPOCHS", "3"], out=tmp_path / "sw", labels=["kd"])
    b = plan_sweep([SLD], 2, ["SOLVER.EPOCHS", "2"], out=tmp_path / "sw", labels=["sld"])
    _write_stub_runs(a)
    _write_stub_runs(b, epochs_done=2)
    summaries, records = summarize_runs(a + b)
    md = write_sweep_report(summaries, records, tmp_path / "sw", plot=False)["md"].read_text()
    assert "budgets differ" in md


def test_incomplete_runs_are_counted_and_mixed_budgets_refused(tmp_path: Path) -> None:
    jobs = _plan(tmp_path, seeds=2)
    _write_stub_runs(jobs, epochs_done=2)
    summaries, _ = summarize_runs(jobs)
    assert all(s.incomplete == 2 for s in summaries)
    assert summaries[0].last_mean == pytest.approx((75.5 + 73.0) / 2)
    recs = [read_run(j.run_dir, method="x") for j in jobs]  # kd (1 view) and sld (2 views) as one method
    with pytest.raises(ValueError, match="different budgets"):
        aggregate(recs)


def test_read_run_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="metrics"):
        read_run(tmp_path)
    (tmp_path / "metrics.csv").write_text("epoch,lr\n1,0.1\n")
    with pytest.raises(ValueError, match="test_acc"):
        read_run(tmp_path)
    assert mean_std([3.0]) == (3.0, 0.0)


def test_finished_run_is_reused_only_for_the_same_config(tmp_path: Path) -> None:
    jobs = _plan(tmp_path, seeds=1)
    assert not _finished_same(jobs[0])
    _write_stub_runs(jobs)
    assert _finished_same(jobs[0])
    other = plan_sweep([KD], 1, ["SOLVER.EPOCHS", "4", "DATASET.TRAIN_SUBSET", "500"], out=tmp_path / "sw",
                       labels=["kd"])[0]
    assert other.run_dir == jobs[0].run_dir and not _finished_same(other)


class _FakeProc:
    def __init__(self, log: list, job, device: str, rc: int) -> None:
        self.job, self.device, self.rc, self.polls = job, device, rc, 0
        log.append(("start", job.seed, device))
        self.log = log

    def poll(self):
        self.polls += 1
        if self.polls >= 2:
            self.log.append(("end", self.job.seed, self.device))
            return self.rc
        return None


def test_parallel_runs_one_per_device(tmp_path: Path) -> None:
    jobs = plan_sweep([KD], 5, out=tmp_path / "sw")
    log: list = []
    _run_parallel(jobs, ["cuda:0", "cuda:1"], tmp_path / "sw",
                  launch=lambda job, dev, path: _FakeProc(log, job, dev, 0), poll=0.0)
    starts = [e for e in log if e[0] == "start"]
    assert sorted(s[1] for s in starts) == [0, 1, 2, 3, 4]
    busy: dict[str, int] = {}
    for kind, seed, dev in log:  # never two runs on one device at once
        if kind == "start":
            assert dev not in busy
            busy[dev] = seed
        else:
            assert busy.pop(dev) == seed
    assert {s[2] for s in starts} == {"cuda:0", "cuda:1"}
    with pytest.raises(RuntimeError, match="seed 1"):
        _run_parallel(jobs[:2], ["cuda:0", "cuda:1"], tmp_path / "sw",
                      launch=lambda job, dev, path: _FakeProc([], job, dev, job.seed), poll=0.0)
