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
from sldistill.sweep import _folder_decision, plan_sweep, run_sweep, summarize_runs, write_sweep_report
from sldistill.sweep_run import _run_parallel

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


def test_a_run_stopped_while_starting_is_trained_again(tmp_path: Path) -> None:
    job = _plan(tmp_path, seeds=1)[0]
    job.run_dir.mkdir(parents=True)
    (job.run_dir / "log.txt").write_text("run folder: ...\n")  # no config.yaml, no checkpoint
    assert _folder_decision(job, rerun=False) == "overwrite"


def test_finished_run_is_reused_only_for_the_same_config(tmp_path: Path) -> None:
    jobs = _plan(tmp_path, seeds=1)
    assert _folder_decision(jobs[0], rerun=False) == "train"
    _write_stub_runs(jobs)
    assert _folder_decision(jobs[0], rerun=False) == "reuse"
    assert _folder_decision(jobs[0], rerun=True) == "overwrite"
    other = plan_sweep([KD], 1, ["SOLVER.EPOCHS", "4", "DATASET.TRAIN_SUBSET", "500"], out=tmp_path / "sw",
                       labels=["kd"])[0]
    assert other.run_dir == jobs[0].run_dir
    with pytest.raises(ValueError, match=r"of a different config \(SOLVER.EPOCHS: 3 -> 4\); not replacing it"):
        _folder_decision(other, rerun=False)


def test_a_sweep_never_replaces_a_finished_run_of_another_config(tmp_path: Path) -> None:
    train, calls = _stub_train()
    run_sweep([KD], 1, ["SOLVER.EPOCHS", "3", "DATASET.TRAIN_SUBSET", "500"], out=tmp_path / "sw", labels=["kd"],
              train_fn=train)
    folder = _plan(tmp_path, seeds=1)[0].run_dir
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    calls.clear()
    with pytest.raises(ValueError, match="not replacing it"):
        run_sweep([KD], 1, ["SOLVER.EPOCHS", "4", "DATASET.TRAIN_SUBSET", "500"], out=tmp_path / "sw", labels=["kd"],
                  train_fn=train)
    assert calls == [] and {p.name: p.read_bytes() for p in folder.iterdir()} == before


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


def test_a_device_named_twice_runs_two_at_once(tmp_path: Path) -> None:
    jobs = plan_sweep([KD], 4, out=tmp_path / "sw")
    log: list = []
    _run_parallel(jobs, ["cpu", "cpu"], tmp_path / "sw", launch=lambda job, dev, path: _FakeProc(log, job, dev, 0),
                  poll=0.0)
    running, most = 0, 0
    for kind, _seed, _dev in log:
        running += 1 if kind == "start" else -1
        most = max(most, running)
    assert most == 2 and sorted(e[1] for e in log if e[0] == "start") == [0, 1, 2, 3]


# ------------------------------------------------------------------ views, paired comparisons, published numbers


def test_budget_views_come_from_the_distiller_not_the_trainer_alias(tmp_path: Path) -> None:
    from sldistill.engine.config import load_config
    from sldistill.report import budget_of

    kd_ours = load_config(KD, ["SOLVER.TRAINER", "ours"]).to_dict()
    sld_base = load_config(SLD, ["SOLVER.TRAINER", "base"]).to_dict()
    assert "1 view" in budget_of(kd_ours) and "strong" not in budget_of(kd_ours)
    assert "2 views" in budget_of(sld_base) and "+strong" in budget_of(sld_base)


def _stub_train(curves=CURVES):
    """A train() stand-in: writes the run folder a finished run would (recorded curves)."""
    from types import SimpleNamespace

    from sldistill.sweep import SweepJob

    calls = []

    def train(cfg, **_flags):
        job = SweepJob(str(cfg.EXPERIMENT.PROJECT), int(cfg.EXPERIMENT.SEED), cfg)
        calls.append((job.method, job.seed))
        _write_stub_runs([job], curves)
        return SimpleNamespace(status="finished")

    return train, calls


def test_run_sweep_reports_paired_differences_to_the_baseline(tmp_path: Path) -> None:
    from sldistill.sweep import run_sweep

    train, calls = _stub_train()
    res = run_sweep([KD, SLD], 3, ["SOLVER.EPOCHS", "3", "DATASET.TRAIN_SUBSET", "500"], out=tmp_path / "sw",
                    labels=["kd", "sld"], baseline="kd", train_fn=train)
    assert calls == [("kd", 0), ("sld", 0), ("kd", 1), ("sld", 1), ("kd", 2), ("sld", 2)]
    best = next(d for d in res.paired if d.which == "best")
    last = next(d for d in res.paired if d.which == "last")
    # sld best 78, 79, 80 minus kd best 75.5, 76, 77 -> 2.5, 3, 3
    assert (best.method, best.baseline, best.n, best.seeds) == ("sld", "kd", 3, [0, 1, 2])
    assert best.mean == pytest.approx(17 / 6) and best.std == pytest.approx(statistics.stdev([2.5, 3, 3]))
    half = 4.302653 * statistics.stdev([2.5, 3, 3]) / math.sqrt(3)  # t(0.975, 2)
    assert best.ci == pytest.approx((17 / 6 - half, 17 / 6 + half), abs=1e-5)
    assert last.mean == pytest.approx(statistics.mean([77.5 - 74.0, 79.0 - 76.0, 78.0 - 75.0]))
    # unpaired, the methods' best-epoch intervals overlap; paired, the difference excludes 0
    kd, sld = res.summaries
    assert kd.best_ci[1] > sld.best_ci[0] and best.ci[0] > 0
    md = (tmp_path / "sw" / "summary.md").read_text()
    assert "| Δ best vs kd (95% CI) | Δ last vs kd (95% CI) |" in md and "| +2.83 [2.12, 3.55] |" in md
    assert "| kd | 3 | 76.17 ± 0.76 | 75.00 ± 1.00 | [74.27, 78.06] | baseline | baseline |" in md
    assert "paired by seed" in md and "t-interval" in md and "not paired" not in md
    assert "| Δ best" in res.table
    rows = {r["method"]: r for r in csv.DictReader(open(tmp_path / "sw" / "summary.csv"))}
    assert rows["sld"]["baseline"] == "kd" and float(rows["sld"]["delta_best"]) == pytest.approx(17 / 6, abs=1e-4)
    assert rows["kd"]["delta_best"] == "" and float(rows["kd"]["best_ci_low"]) == pytest.approx(74.2694, abs=1e-3)
    # the finished runs are reused; an unknown baseline stops before anything trains
    calls.clear()
    run_sweep([KD, SLD], 3, ["SOLVER.EPOCHS", "3", "DATASET.TRAIN_SUBSET", "500"], out=tmp_path / "sw",
              labels=["kd", "sld"], train_fn=train)
    assert calls == []
    with pytest.raises(ValueError, match="'dkd' is not one of the sweep's methods: kd, sld"):
        run_sweep([KD, SLD], 1, out=tmp_path / "other", labels=["kd", "sld"], baseline="dkd", train_fn=train)
    assert calls == [] and not (tmp_path / "other").exists()


def test_sweep_report_puts_the_published_number_beside_the_runs(tmp_path: Path) -> None:
    from sldistill.sweep import run_sweep

    kd_file = "cifar100/kd/resnet32x4_resnet8x4.yaml"  # KD resnet32x4 -> resnet8x4: 73.33 (source LS)
    dkd_file = "cifar100/dkd/resnet32x4_resnet8x4.yaml"  # DKD: 76.32
    curves = {("kd", 0): [70.0, 73.1], ("kd", 1): [73.6, 73.0], ("kd", 2): [73.2, 72.0],
              ("dkd", 0): [75.0, 75.4], ("dkd", 1): [75.6, 75.1], ("dkd", 2): [75.5, 75.0]}
    train, _ = _stub_train(curves)
    res = run_sweep([kd_file, dkd_file], 3, ["SOLVER.EPOCHS", "2"], out=tmp_path / "sw", labels=["kd", "dkd"],
                    train_fn=train)
    kd, dkd = res.summaries
    assert kd.published is not None and (kd.published.top1, kd.published.source) == (73.33, "LS")
    assert kd.published_in_ci is True and dkd.published.top1 == 76.32 and dkd.published_in_ci is False
    md = (tmp_path / "sw" / "summary.md").read_text()
    assert "| published | published in CI | source |" in md
    assert "| 73.33 | yes | LS |" in md and "| 76.32 | no, runs lower | LS |" in md
    assert "logit-standardization-KD" in md  # the source is named
    rows = {r["method"]: r for r in csv.DictReader(open(tmp_path / "sw" / "summary.csv"))}
    assert rows["dkd"]["published"] == "76.3200" and rows["dkd"]["published_in_ci"] == "false"


def test_unpaired_data_settings_are_named(tmp_path: Path) -> None:
    from sldistill.sweep import unpaired_seeds

    jobs = plan_sweep([KD, SLD], 2, ["SOLVER.EPOCHS", "3"], out=tmp_path / "sw", labels=["kd", "sld"])
    assert unpaired_seeds(jobs) == []
    other = plan_sweep([SLD], 2, ["SOLVER.EPOCHS", "3", "DATASET.SUBSET_SEED", "7"], out=tmp_path / "sw",
                       labels=["sld7"])
    assert unpaired_seeds(jobs + other) == [0, 1] and unpaired_seeds(jobs + other[:1]) == [0]
    _write_stub_runs(jobs)
    summaries, records = summarize_runs(jobs)
    md = write_sweep_report(summaries, records, tmp_path / "sw", plot=False, unpaired=[1])["md"].read_text()
    assert "seed(s) 1" in md and "not paired" in md


def test_methods_of_a_seed_see_the_same_data_and_start_from_the_same_student(tmp_path: Path) -> None:
    """What `sweep` relies on for paired comparisons: with one EXPERIMENT.SEED, KD, DKD and SLD (two
    views) get identical first batches (order, crops, flips: SLD's weak view is the others' view),
    and the student starts from the same weights; another seed changes both."""
    import torch

    from datagen import write_fashion_mnist
    from sldistill import models
    from sldistill.engine.run import build_distiller_for, build_run_loaders, seed_everything

    data = write_fashion_mnist(tmp_path / "fm", n_train=64, n_test=16)
    teacher = tmp_path / "teacher.pth"
    torch.save({"model": models.create("resnet20", num_classes=10, dataset="fashion_mnist").state_dict()}, teacher)
    dkd = "fashion_mnist/dkd/resnet20_resnet8.yaml"

    def first(path: str, seed: int):
        jobs = plan_sweep([path], [seed], ["DATASET.ROOT", str(data), "DATASET.TRAIN_SUBSET", "0",
                                           "DATASET.NUM_WORKERS", "0", "SOLVER.BATCH_SIZE", "16",
                                           "DISTILLER.TEACHER_CKPT", str(teacher)], out=tmp_path / "sw")
        cfg = jobs[0].cfg
        seed_everything(seed)  # what train() does, in its order: seed, loaders, then the distiller
        loaders = build_run_loaders(cfg, rank=0, world_size=1, device=torch.device("cpu"), seed=seed)
        distiller = build_distiller_for(cfg, loaders.num_classes, loaders.num_train)
        return next(iter(loaders.train)), distiller.student.state_dict()

    (kd_b, kd_w), (dkd_b, dkd_w), (sld_b, sld_w) = first(KD, 3), first(dkd, 3), first(SLD, 3)
    assert len(kd_b["views"]) == 1 and len(sld_b["views"]) == 2
    for b in (dkd_b, sld_b):
        assert torch.equal(b["index"], kd_b["index"]) and torch.equal(b["target"], kd_b["target"])
        assert torch.equal(b["views"][0], kd_b["views"][0])
    assert not torch.equal(sld_b["views"][1], sld_b["views"][0])  # the strong view on top
    for w in (dkd_w, sld_w):
        assert all(torch.equal(w[k], kd_w[k]) for k in kd_w)
    other_b, other_w = first(KD, 4)
    assert not torch.equal(other_b["views"][0], kd_b["views"][0])
    assert not all(torch.equal(other_w[k], kd_w[k]) for k in kd_w)
