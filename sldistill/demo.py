"""The Fashion-MNIST demo: one cached ResNet20 teacher, ResNet8 students by several methods.

``sldistill demo`` (what ``bash scripts/demo.sh`` runs):

1. builds the teacher's config from ``configs/fashion_mnist/vanilla/resnet20.yaml`` and trains
   it with the ordinary trainer into ``<out>/teacher/<key>/``, where ``key`` is a hash of the
   teacher's configuration (data, subset, epochs, schedule, seed); a later demo with the same
   teacher configuration reuses it (``--retrain-teacher`` trains it again);
2. measures the teacher's test error and, on the (un-augmented) training subset, the
   fraction of images whose teacher logits the swap / sort processors change (exactly the
   rows whose arg-max is not the label);
3. trains one ResNet8 student per method and seed from the method's shipped config
   (``configs/fashion_mnist/<method>/...``), each an ordinary run folder
   ``<out>/students/<method>-seed<S>/``;
4. reads the students' ``metrics.csv`` files and writes ``<out>/results.csv``,
   ``<out>/accuracy.png`` (test top-1 per epoch per method) and ``<out>/report.md``, and
   prints the table (best and last top-1 per method, teacher error, swapped fraction).

Every run uses the same budget: the same training subset (``DATASET.SUBSET_SEED`` fixed, so
every seed and the teacher see the same images), the full test set, the same epochs, batch
and learning-rate schedule. Schedules are scaled to the run length:

* learning rate: decayed by 10x at 62.5 %, 75 % and 87.5 % of the epochs (the published
  150/180/210 of 240);
* SLD: ``SLD.GAMMA_FRACTION`` (default 0.625 = 150/240 as published): the pseudo-teacher
  term switches on after ``round(0.625 * epochs)`` epochs;
* DKD: ``DKD.WARMUP = max(1, round(DKD_WARMUP_FRACTION * epochs))`` with the demo's
  ``--dkd-warmup-fraction`` (default 20/240, the published 20-epoch warm-up of 240), so a
  short run is not spent mostly in the warm-up.

The default (4,000 training images, 5 student epochs, an 8-epoch teacher, the six methods CE,
KD, KD+sort, DKD, MLKD, SLD, one seed) is sized to finish within 10 minutes on 2 quiet CPU
cores (measured from a fresh clone on a 2-core machine: 5.3-5.7 minutes; teacher about 1.5
minutes, one-view students 22-35 s, two-view students about 55 s each). ``--epochs``,
``--subset 0`` (the whole training set), ``--methods`` and ``--seeds`` enlarge it.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

__all__ = [
    "METHODS",
    "DEFAULT_METHODS",
    "DemoOptions",
    "DemoResult",
    "lr_stages",
    "method_config",
    "teacher_config",
    "teacher_key",
    "ensure_teacher",
    "teacher_statistics",
    "run_demo",
]

#: method name -> (label in tables, shipped config relative to configs/)
METHODS: dict[str, tuple[str, str]] = {
    "ce": ("CE", "fashion_mnist/vanilla/resnet8.yaml"),
    "kd": ("KD", "fashion_mnist/kd/resnet20_resnet8.yaml"),
    "kd_sort": ("KD+sort", "fashion_mnist/kd_sort/resnet20_resnet8.yaml"),
    "dkd": ("DKD", "fashion_mnist/dkd/resnet20_resnet8.yaml"),
    "dkd_sort": ("DKD+sort", "fashion_mnist/dkd_sort/resnet20_resnet8.yaml"),
    "mlkd": ("MLKD", "fashion_mnist/mlkd/resnet20_resnet8.yaml"),
    "sld": ("SLD", "fashion_mnist/sld/resnet20_resnet8.yaml"),
    "sld_sort": ("SLD+sort", "fashion_mnist/sld_sort/resnet20_resnet8.yaml"),
}
DEFAULT_METHODS: tuple[str, ...] = ("ce", "kd", "kd_sort", "dkd", "mlkd", "sld")
TEACHER_CONFIG = "fashion_mnist/vanilla/resnet20.yaml"
#: the published learning-rate decay points (150, 180, 210 of 240 epochs) as fractions
LR_DECAY_FRACTIONS: tuple[float, ...] = (150 / 240, 180 / 240, 210 / 240)
PUBLISHED_GAMMA_FRACTION = 150 / 240
PUBLISHED_DKD_WARMUP_FRACTION = 20 / 240

DEFAULT_SUBSET = 4000
DEFAULT_EPOCHS = 5
DEFAULT_TEACHER_EPOCHS = 8


@dataclass
class DemoOptions:
    """Everything ``sldistill demo`` can be told (the command-line options map one to one)."""

    out: Path = Path("runs/demo")
    data_root: str = ""
    methods: Sequence[str] = DEFAULT_METHODS
    seeds: int = 1
    first_seed: int = 0
    epochs: int = DEFAULT_EPOCHS
    teacher_epochs: int = DEFAULT_TEACHER_EPOCHS
    subset: int = DEFAULT_SUBSET
    subset_seed: int = 0
    batch_size: int = 64
    gamma_fraction: float = PUBLISHED_GAMMA_FRACTION
    dkd_warmup_fraction: float = PUBLISHED_DKD_WARMUP_FRACTION
    retrain_teacher: bool = False
    num_workers: int = 2
    device: str = "auto"
    progress: bool = True
    overrides: Sequence[str] = ()

    def check(self) -> None:
        """Raise ``ValueError`` naming any bad option and what is valid."""
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ValueError(f"unknown demo method(s) {bad or '(none given)'}; valid: {', '.join(METHODS)}")
        for name in ("seeds", "epochs", "teacher_epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.subset < 0:
            raise ValueError(f"--subset must be >= 0 (0 = the whole training set), got {self.subset}")
        if not 0.0 <= self.gamma_fraction <= 1.0:
            raise ValueError(f"--gamma-fraction must be in [0, 1], got {self.gamma_fraction}")
        if not 0.0 < self.dkd_warmup_fraction <= 1.0:
            raise ValueError(f"--dkd-warmup-fraction must be in (0, 1], got {self.dkd_warmup_fraction}")


@dataclass
class DemoResult:
    """What :func:`run_demo` produced."""

    table: str
    rows: list[dict[str, Any]]
    teacher: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)
    records: list[Any] = field(default_factory=list)


def lr_stages(epochs: int, fractions: Sequence[float] = LR_DECAY_FRACTIONS) -> list[int]:
    """Learning-rate decay epochs for a run of ``epochs``: the published fractions of 240,
    rounded, at least 1, without repeats (e.g. 6 -> [4, 5], 240 -> [150, 180, 210])."""
    return sorted({max(1, int(round(f * epochs))) for f in fractions})


def _common_overrides(opts: DemoOptions, epochs: int, seed: int) -> list[tuple[str, Any]]:
    return [
        ("DATASET.ROOT", str(opts.data_root or "")),
        ("DATASET.TRAIN_SUBSET", int(opts.subset)),
        ("DATASET.SUBSET_SEED", int(opts.subset_seed)),
        ("DATASET.NUM_WORKERS", int(opts.num_workers)),
        ("SOLVER.EPOCHS", int(epochs)),
        ("SOLVER.LR_DECAY_STAGES", lr_stages(epochs)),
        ("SOLVER.BATCH_SIZE", int(opts.batch_size)),
        ("EXPERIMENT.SEED", int(seed)),
        ("EXPERIMENT.DEVICE", str(opts.device)),
        ("LOG.PREFIX", str(opts.out)),
        ("LOG.TENSORBOARD", False),
        ("LOG.PROGRESS", bool(opts.progress)),
        ("LOG.SAVE_CHECKPOINT_FREQ", 10**6),  # latest.pth and best.pth only
    ]


def teacher_config(opts: DemoOptions) -> Any:
    """The teacher's resolved config (before its cache folder is chosen)."""
    from sldistill.engine.config import load_config, merge_overrides

    cfg = load_config(TEACHER_CONFIG)
    merge_overrides(cfg, _common_overrides(opts, opts.teacher_epochs, 0), source="<demo>")
    merge_overrides(cfg, [("EXPERIMENT.PROJECT", "teacher")], source="<demo>")
    return cfg


def teacher_key(cfg: Any) -> str:
    """12 hex digits of a SHA-256 over what determines the teacher's weights: the config minus
    logging, worker count, device and names, with the data root resolved to an absolute path."""
    from sldistill.data import resolve_root
    from sldistill.engine.config import format_config

    c = cfg.to_dict()
    c.pop("LOG", None)
    for k in ("NAME", "TAG", "PROJECT", "DEVICE"):
        c["EXPERIMENT"].pop(k, None)
    for k in ("NUM_WORKERS", "PIN_MEMORY"):
        c["DATASET"].pop(k, None)
    c["DATASET"]["ROOT"] = str(Path(resolve_root(cfg.DATASET.ROOT)).resolve())
    return hashlib.sha256(format_config(c).encode()).hexdigest()[:12]


def method_config(method: str, opts: DemoOptions, seed: int, teacher_ckpt: str | Path) -> Any:
    """A student's resolved config: the shipped file of ``method`` with the demo's budget,
    scaled schedules, the cached teacher and the run folder ``<out>/students/<method>-seed<S>``."""
    from sldistill.engine.config import load_config, merge_overrides

    if method not in METHODS:
        raise ValueError(f"unknown demo method {method!r}; valid: {', '.join(METHODS)}")
    cfg = load_config(METHODS[method][1], list(opts.overrides))
    pairs = _common_overrides(opts, opts.epochs, seed) + [
        ("EXPERIMENT.PROJECT", "students"),
        ("EXPERIMENT.NAME", f"{method}-seed{seed}"),
        ("SLD.GAMMA_FRACTION", float(opts.gamma_fraction)),
        ("DKD.WARMUP", max(1, int(round(opts.dkd_warmup_fraction * opts.epochs)))),
    ]
    if str(cfg.DISTILLER.TYPE).upper() != "NONE":
        pairs.append(("DISTILLER.TEACHER_CKPT", str(teacher_ckpt)))
    merge_overrides(cfg, pairs, source="<demo>")
    return cfg


@contextlib.contextmanager
def _quiet(log: Path):
    """Send the trainer's printed lines (config dump, per-epoch lines) to ``log``; progress
    bars (stderr) stay on the terminal."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as f, contextlib.redirect_stdout(f):
        yield


def _say(msg: str) -> None:
    print(msg, file=sys.__stdout__ if sys.stdout is None else sys.stdout, flush=True)


def ensure_teacher(opts: DemoOptions) -> tuple[Path, Any]:
    """Train the teacher into ``<out>/teacher/<key>/`` unless a finished one is there (and
    ``retrain_teacher`` is false). Returns ``(run folder, config)``; the weights used are
    ``latest.pth`` (the final epoch, not the test-selected best)."""
    from sldistill.engine.config import merge_overrides
    from sldistill.engine.run import train

    cfg = teacher_config(opts)
    key = teacher_key(cfg)
    merge_overrides(cfg, [("EXPERIMENT.NAME", key)], source="<demo>")
    folder = Path(opts.out) / "teacher" / key
    done = (folder / "summary.json").is_file() and (folder / "latest.pth").is_file()
    if done and not opts.retrain_teacher:
        _say(f"[demo] teacher: reusing {folder} (same configuration; --retrain-teacher to train again)")
        return folder, cfg
    if folder.exists():
        shutil.rmtree(folder)
    _say(f"[demo] teacher: training {cfg.DISTILLER.STUDENT} for {opts.teacher_epochs} epochs -> {folder}")
    t0 = time.perf_counter()
    with _quiet(Path(opts.out) / "demo.log"):
        result = train(cfg)
    if result.status != "finished":
        raise RuntimeError(f"teacher training ended {result.status!r}; run the demo again")
    _say(f"[demo] teacher: top-1 {result.last_acc:.2f} after {result.last_epoch} epochs "
         f"({time.perf_counter() - t0:.0f} s)")
    return folder, cfg


def teacher_statistics(folder: Path, cfg: Any, progress: bool = True) -> dict[str, Any]:
    """Teacher test top-1/error (final epoch) and, on the un-augmented training subset, the
    fraction of rows that swap / sort change. Cached in ``teacher_stats.json``."""
    stats_file = folder / "teacher_stats.json"
    if stats_file.is_file():
        return json.loads(stats_file.read_text())
    import torch
    from torch.utils.data import DataLoader

    from sldistill import models
    from sldistill.data import ArrayDataset, FileDataset, build_datasets
    from sldistill.logits import sort, swap

    summary = json.loads((folder / "summary.json").read_text())
    ds = build_datasets(cfg, seed=int(cfg.EXPERIMENT.SEED))
    train = ds.train
    assert isinstance(train, (ArrayDataset, FileDataset)) and ds.test_transform is not None  # one view, no CRD
    plain = train.with_views([ds.test_transform])
    loader = DataLoader(plain, batch_size=256, shuffle=False, collate_fn=ds.val_collate, num_workers=0)
    model = models.create(str(cfg.DISTILLER.STUDENT), num_classes=ds.num_classes, dataset=str(cfg.DATASET.TYPE))
    models.load_weights(model, str(folder / "latest.pth"), strict=True)
    model.eval()
    counts = torch.zeros(4, dtype=torch.float64)  # n, wrong arg-max, swap changed, sort changed
    it = loader
    if progress:
        from tqdm import tqdm

        it = tqdm(loader, desc="teacher logits (train)", leave=False, dynamic_ncols=True, file=sys.stderr)
    with torch.no_grad():
        for batch in it:
            image, target = batch["image"], batch["target"]
            logits = model(image)[0].float()
            counts[0] += target.numel()
            counts[1] += (logits.argmax(1) != target).sum()
            counts[2] += (swap(logits, target) != logits).any(1).sum()
            counts[3] += (sort(logits, target) != logits).any(1).sum()
    n, wrong, swapped, sorted_ = counts.tolist()
    stats = {
        "teacher": str(cfg.DISTILLER.STUDENT),
        "test_top1": float(summary["last_acc"]),
        "test_error": 100.0 - float(summary["last_acc"]),
        "epochs": int(summary["last_epoch"]),
        "train_images": int(n),
        "train_wrong_fraction": wrong / max(n, 1.0),
        "train_swapped_fraction": swapped / max(n, 1.0),
        "train_sorted_fraction": sorted_ / max(n, 1.0),
    }
    stats_file.write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def _results_table(opts: DemoOptions, summaries: Sequence[Any], teacher: dict[str, Any]) -> str:
    from sldistill.report import format_pm

    lines = ["| method | runs | best top-1 (%) | last top-1 (%) | budget |", "|---|---|---|---|---|"]
    for s in summaries:
        lines.append(f"| {s.method} | {s.n} | {format_pm(s.best_mean, s.best_std, s.n)} | "
                     f"{format_pm(s.last_mean, s.last_std, s.n)} | {s.budget} |")
    lines += [
        "",
        f"Teacher {teacher['teacher']} ({teacher['epochs']} epochs): test error {teacher['test_error']:.2f} % "
        f"(top-1 {teacher['test_top1']:.2f} %).",
        f"Training images whose teacher logits are swapped / sorted: "
        f"{100 * teacher['train_swapped_fraction']:.2f} % / {100 * teacher['train_sorted_fraction']:.2f} % "
        f"of {teacher['train_images']} (rows whose arg-max is not the label: "
        f"{100 * teacher['train_wrong_fraction']:.2f} %).",
    ]
    if opts.seeds > 1:
        lines.append(f"Mean ± sample std (N - 1) over {opts.seeds} seeds.")
    return "\n".join(lines)


def run_demo(opts: DemoOptions) -> DemoResult:
    """Teacher (cached), students, table, plot and report; see the module docstring."""
    from sldistill.engine.run import train
    from sldistill.report import aggregate, plot_curves, read_run

    opts.check()
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    folder, tcfg = ensure_teacher(opts)
    teacher = teacher_statistics(folder, tcfg, progress=opts.progress)
    seeds = list(range(opts.first_seed, opts.first_seed + opts.seeds))
    jobs = [(m, s) for s in seeds for m in opts.methods]
    records = []
    bar = None
    if opts.progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="students", unit="run", dynamic_ncols=True, file=sys.stderr)
    for method, seed in jobs:
        label = METHODS[method][0]
        cfg = method_config(method, opts, seed, folder / "latest.pth")
        run = Path(cfg.LOG.PREFIX) / cfg.EXPERIMENT.PROJECT / cfg.EXPERIMENT.NAME
        if run.exists():
            shutil.rmtree(run)
        if bar is not None:
            bar.set_postfix_str(f"{label} seed {seed}")
        t0 = time.perf_counter()
        with _quiet(out / "demo.log"):
            result = train(cfg)
        if result.status != "finished":
            raise RuntimeError(f"{label} seed {seed} ended {result.status!r}")
        rec = read_run(run, method=label)
        records.append(rec)
        msg = (f"[demo] {label:9s} seed {seed}: best {rec.best:.2f} (epoch {rec.best_epoch})  last {rec.last:.2f}"
               f"  ({time.perf_counter() - t0:.0f} s)")
        if bar is not None:
            bar.write(msg, file=sys.stdout)
            bar.update(1)
        else:
            _say(msg)
    if bar is not None:
        bar.close()
    order = [METHODS[m][0] for m in opts.methods]
    summaries = aggregate(records, order=order)
    table = _results_table(opts, summaries, teacher)
    files = {"png": plot_curves(records, out / "accuracy.png", order=order,
                                title=f"Fashion-MNIST, ResNet20 -> ResNet8, {opts.epochs} epochs")}
    rows = []
    for s in summaries:
        rows.append({"method": s.method, "runs": s.n, "best_mean": round(s.best_mean, 4),
                     "best_std": round(s.best_std, 4),
                     "last_mean": round(s.last_mean, 4), "last_std": round(s.last_std, 4), "budget": s.budget})
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    files["csv"] = out / "results.csv"
    (out / "teacher.json").write_text(json.dumps(teacher, indent=2) + "\n")
    files["teacher"] = out / "teacher.json"
    elapsed = time.perf_counter() - t_start
    report = [
        "# sldistill demo: Fashion-MNIST, ResNet20 teacher -> ResNet8 students", "",
        f"Students: {len(records)} runs ({', '.join(order)}; seeds {', '.join(map(str, seeds))}), "
        f"{opts.epochs} epochs each on "
        f"{'the whole training set' if opts.subset == 0 else f'{opts.subset} training images'}"
        f" (class-balanced, subset seed {opts.subset_seed}); test top-1 on the full test set after every epoch.",
        f"Schedules scaled to {opts.epochs} epochs: LR decay at epochs {lr_stages(opts.epochs)}, "
        f"SLD pseudo-teacher after epoch {int(round(opts.gamma_fraction * opts.epochs))} "
        f"(SLD.GAMMA_FRACTION {opts.gamma_fraction:g}), DKD warm-up "
        f"{max(1, int(round(opts.dkd_warmup_fraction * opts.epochs)))} epoch(s).", "",
        table, "",
        "![test top-1 per epoch](accuracy.png)", "",
        f"Teacher: `{folder}` (cached by configuration). Student runs: `{out / 'students'}`. "
        f"Wall time of this demo: {elapsed / 60:.1f} min.",
        "",
        "A few epochs on a subset are a smoke test of the methods, not a ranking: differences of a "
        "few tenths of a point are within seed noise (use `--seeds 3` or `sldistill sweep`).",
        "",
    ]
    (out / "report.md").write_text("\n".join(report), encoding="utf-8")
    files["md"] = out / "report.md"
    _say("\n" + table + f"\n\nreport: {out / 'report.md'}  plot: {files['png']}  ({elapsed / 60:.1f} min)")
    return DemoResult(table, rows, teacher, files, records)
