"""The published numbers as package data, the statistics of the reports (t-quantiles, intervals,
seeds needed) and ``sldistill report RUN_DIRS...``."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
from conftest import run_subcommand
from runfiles import write_run_folder

from sldistill import models
from sldistill.engine.config import load_config
from sldistill.published import PUBLISHED, SOURCES, experiment_key, lookup, teacher_top1
from sldistill.report import MethodSummary, mean_ci, seeds_needed, t_quantile
from sldistill.zoo_cli import group_records

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


# ------------------------------------------------------------------ published data


def test_published_table_as_in_the_sources() -> None:
    assert len(PUBLISHED) == 8 * 14 + 13 + 6
    assert all(r.source in SOURCES and r.url.startswith("https://github.com/") for r in PUBLISHED)
    for r in PUBLISHED:  # every name is a zoo model of its dataset
        for name in filter(None, (r.teacher, r.student)):
            assert models.resolve_name(name, r.dataset, notice=False) == name, (r, name)
    # spot checks read off ../shared/published_results.md
    assert lookup("KD", "resnet32x4", "resnet8x4", "cifar100").top1 == 73.33
    assert lookup("MLKD+LS", "ResNet50", "MobileNetV2", "cifar100").top1 == 71.19
    assert lookup("DKD", "wrn_40_2", "wrn_16_2", "cifar100").top1 == 76.24
    assert "76.23" in lookup("DKD", "wrn_40_2", "wrn_16_2", "cifar100").note
    assert lookup("CTKD+LS", "wrn_40_2", "resnet8x4", "cifar100").top1 == 77.03
    assert lookup("DKD", "wrn_40_2", "ShuffleV1", "cifar100").source == "DKD"
    assert lookup("KD+DOT", "ResNet50", "MobileNetV1", "imagenet").top1 == 73.09
    assert lookup("vanilla", "anything", "resnet32x4", "cifar100").top1 == 79.42
    assert lookup("SLD", "resnet32x4", "resnet8x4", "cifar100") is None  # no confirmed SLD number
    for t in models.CIFAR_TEACHERS.values():  # one table for the teachers
        assert teacher_top1(t.name) == t.top1


@pytest.mark.parametrize("rel,key", [
    ("cifar100/kd/resnet32x4_resnet8x4.yaml", ("KD", "resnet32x4", "resnet8x4", "cifar100")),
    ("cifar100/kd_ls/wrn_40_2_wrn_16_2.yaml", ("KD+LS", "wrn_40_2", "wrn_16_2", "cifar100")),
    ("cifar100/dkd_sort/vgg13_MobileNetV2.yaml", ("DKD+sort", "vgg13", "MobileNetV2", "cifar100")),
    ("cifar100/mlkd/resnet32x4_ShuffleV1.yaml", ("MLKD", "resnet32x4", "ShuffleV1", "cifar100")),
    ("imagenet/resnet50_mobilenetv1/dkd.yaml", ("DKD", "ResNet50", "MobileNetV1", "imagenet")),
    ("cifar100/vanilla/wrn_40_2.yaml", ("vanilla", "", "wrn_40_2", "cifar100")),
])
def test_experiment_key_of_shipped_configs(rel: str, key: tuple) -> None:
    cfg = load_config(CONFIGS / rel)
    assert experiment_key(cfg) == key
    assert experiment_key(cfg.to_dict()) == key  # the plain dict of a run's config.yaml too
    assert experiment_key(load_config(CONFIGS / rel, ["SOLVER.TYPE", "DOT"]))[0] == key[0] + "+DOT" or \
        key[0] == "vanilla"


def test_published_mobilenetv2_on_imagenet_is_mobilenetv1() -> None:
    cfg = load_config(None, ["DATASET.TYPE", "imagenet", "DISTILLER.TYPE", "KD", "DISTILLER.TEACHER", "ResNet50",
                             "DISTILLER.STUDENT", "MobileNetV2"])
    assert lookup(*experiment_key(cfg)).top1 == 70.50


# ------------------------------------------------------------------ statistics


@pytest.mark.parametrize("p,df,value", [  # standard t-table values
    (0.975, 1, 12.7062), (0.975, 2, 4.3027), (0.975, 4, 2.7764), (0.975, 9, 2.2622), (0.975, 30, 2.0423),
    (0.8, 10, 0.8791), (0.8, 2, 1.0607), (0.99, 5, 3.3649), (0.975, 1e6, 1.9600), (0.5, 3, 0.0),
])
def test_t_quantile(p: float, df: float, value: float) -> None:
    assert t_quantile(p, df) == pytest.approx(value, abs=1e-4)
    assert t_quantile(1 - p, df) == pytest.approx(-value, abs=1e-4)


def test_mean_ci_and_in_interval() -> None:
    lo, hi = mean_ci([75.5, 76.0, 77.0])
    half = 4.302653 * math.sqrt(((0.5 + 2 / 3 - 0.5) ** 2 + (1 / 6) ** 2 + (5 / 6) ** 2) / 2) / math.sqrt(3)
    assert (lo, hi) == pytest.approx((76.1667 - half, 76.1667 + half), abs=1e-3)
    with pytest.raises(ValueError, match="at least 2"):
        mean_ci([1.0])
    pub = lookup("KD", "resnet32x4", "resnet8x4", "cifar100")
    s = MethodSummary("kd", 3, 76.17, 0.76, 75.0, 1.0, "", best_values=[75.5, 76.0, 77.0], published=pub)
    assert s.published_in_ci is False  # 73.33 lies below [74.27, 78.06]
    assert MethodSummary("kd", 1, 73.0, 0.0, 73.0, 0.0, "", best_values=[73.0], published=pub).published_in_ci is None


def test_seeds_needed_for_half_a_point() -> None:
    """The numbers docs/reproducing.md quotes (two-sided 5% test, 80% power)."""
    assert seeds_needed(0.5, 0.26) == 6  # single-run sd 0.26: five runs spanning 0.6 points
    assert seeds_needed(0.5, 0.6) == 24  # single-run sd 0.6
    assert seeds_needed(0.5, 0.6, paired=True) == 14  # paired, sd of the differences 0.6
    n = seeds_needed(0.5, 0.6)  # the smallest n that satisfies the two-sample t formula
    need = lambda k: 2 * (t_quantile(0.975, 2 * k - 2) + t_quantile(0.8, 2 * k - 2)) ** 2 * 0.36 / 0.25  # noqa: E731
    assert n >= need(n) and n - 1 < need(n - 1)


# ------------------------------------------------------------------ sldistill report


_run = run_subcommand




def _run_folder(path: Path, rel: str, seed: int, acc: list[float], *extra: str) -> Path:
    return write_run_folder(path, seed, acc, *extra, config=rel, lr=0.05, summary=True)


KD = "cifar100/kd/resnet32x4_resnet8x4.yaml"
DKD = "cifar100/dkd/resnet32x4_resnet8x4.yaml"
KD_BEST = {0: [72.0, 74.0, 73.5], 1: [73.0, 74.2, 73.5], 2: [72.1, 73.9, 73.4]}
DKD_BEST = {0: [75.0, 76.6, 76.1], 1: [76.2, 76.0, 75.8], 2: [75.9, 76.4, 76.3]}


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """Output folders as `sldistill train` leaves them, one per seed, named freely."""
    out = tmp_path / "output"
    for seed in range(3):
        _run_folder(out / f"kd_s{seed}", KD, seed, KD_BEST[seed], "EXPERIMENT.NAME", f"kd_s{seed}")
        _run_folder(out / f"dkd_s{seed}", DKD, seed, DKD_BEST[seed], "EXPERIMENT.NAME", f"dkd_s{seed}")
    return out


def test_report_groups_seeds_and_compares_with_the_published(runs: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    assert _run(["report", str(runs), "--out", str(tmp_path / "r.md"), "--csv", str(tmp_path / "r.csv")]) == 0
    out = capsys.readouterr().out
    kd = next(line for line in out.splitlines() if line.startswith("| kd,resnet32x4,resnet8x4 |"))
    dkd = next(line for line in out.splitlines() if line.startswith("| dkd,resnet32x4,resnet8x4 |"))
    best = [max(v) for v in KD_BEST.values()]  # 74.0, 74.2, 73.9
    lo, hi = mean_ci(best)
    assert f"| 3 | {sum(best) / 3:.2f} ± " in kd and f"[{lo:.2f}, {hi:.2f}]" in kd
    assert "| 73.33 | no, runs higher | LS |" in kd  # 73.33 lies below the interval
    assert "| 76.32 | yes | LS |" in dkd
    assert "'best' is the highest epoch" in out and "logit-standardization-KD" in out
    assert (tmp_path / "r.md").read_text().startswith("# Reproduction report")
    rows = {r["method"]: r for r in csv.DictReader(open(tmp_path / "r.csv"))}
    assert rows["kd,resnet32x4,resnet8x4"]["seeds"] == "0 1 2"
    assert rows["dkd,resnet32x4,resnet8x4"]["published_in_ci"] == "true"


def test_report_baseline_and_grouping(runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert _run(["report", *sorted(map(str, runs.iterdir())), "--baseline", "kd,resnet32x4,resnet8x4"]) == 0
    out = capsys.readouterr().out
    diffs = [max(DKD_BEST[s]) - max(KD_BEST[s]) for s in range(3)]
    lo, hi = mean_ci(diffs)
    assert f"| {sum(diffs) / 3:+.2f} [{lo:.2f}, {hi:.2f}] |" in out and "paired by seed" in out
    with pytest.raises(ValueError, match="baseline 'nope'"):
        _run(["report", str(runs), "--baseline", "nope"])
    # another config (here LR and epochs) under the same TAG is another experiment, told apart by a number
    _run_folder(runs / "kd_lr", KD, 0, [70.0, 71.0], "SOLVER.LR", "0.1")
    _run(["report", str(runs)])
    out = capsys.readouterr().out
    assert "| kd,resnet32x4,resnet8x4 #1 | 1 |" in out and "| kd,resnet32x4,resnet8x4 #2 | 3 |" in out
    # --group-by dir: a sweep's <out>/<method>/seed<S>
    sweep = tmp_path / "sweep"
    for seed in range(2):
        _run_folder(sweep / "kd" / f"seed{seed}", KD, seed, KD_BEST[seed])
    _run(["report", str(sweep), "--group-by", "dir"])
    assert "| kd | 2 |" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="no run folder"):
        _run(["report", str(tmp_path / "empty")])


def test_group_records_by_config_ignores_seed_name_and_places(runs: Path) -> None:
    from sldistill.report import read_run

    recs = [read_run(p) for p in sorted(runs.iterdir())]
    assert {r.method for r in recs} == {f"{m}_s{s}" for m in ("kd", "dkd") for s in range(3)}  # NAME by default
    grouped = group_records(recs)
    assert sorted({r.method for r in grouped}) == ["dkd,resnet32x4,resnet8x4", "kd,resnet32x4,resnet8x4"]
    assert group_records(recs, by="tag")[0].method == grouped[0].method
    with pytest.raises(ValueError, match="config, tag or dir"):
        group_records(recs, by="seed")
