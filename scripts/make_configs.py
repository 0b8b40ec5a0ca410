#!/usr/bin/env python
"""Write the project's experiment files under ``configs/`` from the published ones.

Each published experiment (``../shared/seed_configs/<codebase>/...``) is resolved the way its
own release runs it: that codebase's defaults (``sldistill.engine.config.BASES``), the file,
and, for logit standardization, the release's ``--logit-stand --base-temp 2 --kd-weight 9``
recipe (:func:`sldistill.engine.config.apply_logit_stand`). The effective hyper-parameters are
then written in our format: every value that matters set explicitly (so a file never depends on
another codebase's defaults), our own project/tag names, and a one-line header naming the
published experiment::

    # <title> | published: <codebase>/<path> | defaults: <base> | recipe: <none|logit-stand ...>

``tests/test_config.py`` re-derives every shipped file from that header and checks that the
two agree. Usage::

    python scripts/make_configs.py [--seed ../shared/seed_configs] [--out configs] [--check]

``--check`` writes nothing and exits 1 if a file would change.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from sldistill.engine.config import CfgNode, apply_logit_stand, load_config

REPO = Path(__file__).resolve().parents[1]

#: our method folder -> (published codebase folder, glob under <codebase>/cifar100, base, recipe)
CIFAR: list[tuple[str, str, str, str, str]] = [
    ("sld", "sld", "sld/*.yaml", "sld", "none"),
    ("mlkd", "mlkd", "ours/*.yaml", "mlkd", "none"),
    ("mlkd", "sld", "mlkd/*.yaml", "sld", "none"),  # pairs the MLKD release lacks (wrn_40_2 -> vgg8)
    ("dkd", "mdistiller", "dkd/*.yaml", "mdistiller", "none"),
    ("kd", "mdistiller", "kd.yaml", "mdistiller", "none"),
    ("kd", "logit-standardization", "kd/*.yaml", "mdistiller", "none"),  # more pairs, mdistiller KD values
    ("kd_sort", "sortkd", "kd.yaml", "sortkd", "none"),
    ("kd_sort", "logit-standardization", "kd/*.yaml", "sortkd", "none"),
    ("dkd_sort", "sortkd", "dkd/*.yaml", "sortkd", "none"),
    ("kd_ls", "logit-standardization", "kd/*.yaml", "logit-standardization", "logit-stand"),
    ("dkd_ls", "logit-standardization", "dkd/*.yaml", "logit-standardization", "logit-stand"),
    ("mlkd_ls", "logit-standardization", "mlkd/*.yaml", "logit-standardization", "logit-stand"),
    ("vanilla", "mdistiller", "vanilla.yaml", "mdistiller", "none"),
]

#: our method -> (codebase, file name under <codebase>/imagenet/<pair>/, base, recipe)
IMAGENET: list[tuple[str, str, str, str, str]] = [
    ("sld", "sld", "sld.yaml", "sld", "none"),
    ("kd", "mdistiller", "kd.yaml", "mdistiller", "none"),
    ("dkd", "mdistiller", "dkd.yaml", "mdistiller", "none"),
    ("mlkd", "mlkd", "kd_ours.yaml", "mlkd", "none"),
    ("kd_sort", "sortkd", "kd.yaml", "sortkd", "none"),
    ("dkd_sort", "sortkd", "dkd.yaml", "sortkd", "none"),
    ("kd_ls", "logit-standardization", "kd.yaml", "logit-standardization", "logit-stand"),
    ("dkd_ls", "logit-standardization", "dkd.yaml", "logit-standardization", "logit-stand"),
    # MLKD+LS on ImageNet is not generated: the release's file names KD_ours, which its
    # --logit-stand switch ignores, so it would be plain MLKD.
]

LS_BASE_TEMP = 2.0
LS_KD_WEIGHT = 9.0

NAMES = {"KD": "KD", "DKD": "DKD", "MLKD": "MLKD", "KD_ours": "MLKD", "SLD": "SLD", "NONE": "vanilla"}
SOLVER_KEYS = ("TRAINER", "BATCH_SIZE", "EPOCHS", "LR", "LR_DECAY_STAGES", "LR_DECAY_RATE",
               "WEIGHT_DECAY", "MOMENTUM", "TYPE")


def canonical(cfg: CfgNode) -> tuple[str, str, str]:
    """(distiller type, teacher, student) with the published aliases resolved: ``KD_ours`` is
    MLKD, and the ImageNet ``MobileNetV2`` of SLD/MLKD/LS is a MobileNetV1 network."""
    dtype = "MLKD" if cfg.DISTILLER.TYPE == "KD_ours" else cfg.DISTILLER.TYPE
    student = cfg.DISTILLER.STUDENT
    if cfg.DATASET.TYPE == "imagenet" and student == "MobileNetV2":
        student = "MobileNetV1"
    return dtype, cfg.DISTILLER.TEACHER, student


def resolve_published(path: Path, base: str, recipe: str) -> CfgNode:
    """A published file as its own release runs it (defaults of ``base``, then ``recipe``)."""
    cfg = load_config(path, base=base)
    if recipe == "logit-stand":
        apply_logit_stand(cfg, LS_BASE_TEMP, LS_KD_WEIGHT)
    elif recipe != "none":
        raise ValueError(f"unknown recipe {recipe!r}; valid: none, logit-stand")
    return cfg


def ours(cfg: CfgNode, method: str) -> dict[str, Any]:
    """Our file's content: the effective hyper-parameters of a resolved published config."""
    dtype, teacher, student = canonical(cfg)
    dataset = cfg.DATASET.TYPE
    out: dict[str, Any] = {
        "EXPERIMENT": {"PROJECT": dataset, "TAG": f"{method},{teacher},{student}" if dtype != "NONE" else f"{method},{student}"},
        "DATASET": {"TYPE": dataset},
        "DISTILLER": {"TYPE": dtype, "TEACHER": teacher, "STUDENT": student},
        "SOLVER": {k: cfg.SOLVER[k] for k in SOLVER_KEYS},
    }
    if cfg.EXPERIMENT.LOGIT_STAND:
        out["EXPERIMENT"]["LOGIT_STAND"] = True
    if dataset != "cifar100":
        out["DATASET"]["NUM_WORKERS"] = cfg.DATASET.NUM_WORKERS
        out["DATASET"]["TEST"] = {"BATCH_SIZE": cfg.DATASET.TEST.BATCH_SIZE}
    if dtype != "NONE":  # explicit even when 'none': a --base sortkd would otherwise sort KD/DKD
        out["DISTILLER"]["LOGIT_PROCESSOR"] = cfg.DISTILLER.LOGIT_PROCESSOR
    if dtype in ("KD", "MLKD", "SLD"):
        out["KD"] = {"TEMPERATURE": cfg.KD.TEMPERATURE,
                     "LOSS": {"CE_WEIGHT": cfg.KD.LOSS.CE_WEIGHT, "KD_WEIGHT": cfg.KD.LOSS.KD_WEIGHT}}
    if dtype == "DKD":
        out["DKD"] = {k: cfg.DKD[k] for k in ("CE_WEIGHT", "ALPHA", "BETA", "T", "WARMUP")}
    if dtype == "SLD":
        out["SLD"] = {"TEMPERATURES": list(cfg.SLD.TEMPERATURES), "GAMMA": cfg.SLD.GAMMA}
    if dataset != "cifar100":
        out["LOG"] = {"SAVE_CHECKPOINT_FREQ": cfg.LOG.SAVE_CHECKPOINT_FREQ,
                      "TENSORBOARD_FREQ": cfg.LOG.TENSORBOARD_FREQ}
    return out


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


def render(header: str, content: dict[str, Any]) -> str:
    return f"# {header}\n" + yaml.dump(content, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def title(method: str, teacher: str, student: str, dataset: str) -> str:
    label = {"kd": "KD", "dkd": "DKD", "mlkd": "MLKD", "sld": "SLD", "kd_sort": "KD+sort",
             "dkd_sort": "DKD+sort", "kd_ls": "KD+LS", "dkd_ls": "DKD+LS", "mlkd_ls": "MLKD+LS",
             "vanilla": "vanilla"}[method]
    data = {"cifar100": "CIFAR-100", "imagenet": "ImageNet"}[dataset]
    return f"{label} {teacher} -> {student}, {data}" if method != "vanilla" else f"vanilla {student}, {data}"


def published_experiments(seed: Path) -> list[tuple[str, Path, str, str, Path]]:
    """(method, published file, base, recipe, our relative path) for every experiment."""
    rows: list[tuple[str, Path, str, str, Path]] = []
    taken: set[Path] = set()
    for method, codebase, pattern, base, recipe in CIFAR:
        for src in sorted((seed / codebase / "cifar100").glob(pattern)):
            cfg = load_config(src, base=base)
            dtype, teacher, student = canonical(cfg)
            if dtype in ("DKD_aug",) or cfg.SOLVER.TRAINER == "aug":
                continue
            name = f"{teacher}_{student}" if dtype != "NONE" else student
            rel = Path("cifar100") / method / f"{name}.yaml"
            if rel in taken:  # an earlier (more authoritative) source already gave this pair
                continue
            taken.add(rel)
            rows.append((method, src, base, recipe, rel))
    for method, codebase, fname, base, recipe in IMAGENET:
        for src in sorted((seed / codebase / "imagenet").glob(f"*/{fname}")):
            cfg = load_config(src, base=base)
            _, teacher, student = canonical(cfg)
            rel = Path("imagenet") / f"{teacher.lower()}_{student.lower()}" / f"{method}.yaml"
            if rel in taken:
                continue
            taken.add(rel)
            rows.append((method, src, base, recipe, rel))
    return rows


def fashion_mnist() -> dict[Path, str]:
    """The demo's files (not published experiments): ResNet20 teacher, ResNet8 student."""
    # SUBSET_SEED 0: every run (any EXPERIMENT.SEED) trains on the same 10k images as the teacher
    common_data = {"TYPE": "fashion_mnist", "NUM_WORKERS": 2, "TRAIN_SUBSET": 10000, "SUBSET_SEED": 0,
                   "TEST": {"BATCH_SIZE": 256}}
    solver = {"TRAINER": "base", "BATCH_SIZE": 64, "EPOCHS": 10, "LR": 0.05, "LR_DECAY_STAGES": [6, 8],
              "LR_DECAY_RATE": 0.1, "WEIGHT_DECAY": 0.0005, "MOMENTUM": 0.9, "TYPE": "SGD"}
    log = {"SAVE_CHECKPOINT_FREQ": 5}
    files: dict[Path, str] = {}

    def add(rel: str, header: str, content: dict[str, Any]) -> None:
        files[Path("fashion_mnist") / rel] = render(header + " | published: none (demo)", content)

    add("vanilla/resnet20.yaml", "demo teacher: vanilla ResNet20 on a 10k Fashion-MNIST subset",
        {"EXPERIMENT": {"PROJECT": "fashion_mnist", "TAG": "vanilla,resnet20"}, "DATASET": common_data,
         "DISTILLER": {"TYPE": "NONE", "STUDENT": "resnet20"}, "SOLVER": solver, "LOG": log})
    add("vanilla/resnet8.yaml", "demo baseline: vanilla ResNet8 on a 10k Fashion-MNIST subset",
        {"EXPERIMENT": {"PROJECT": "fashion_mnist", "TAG": "vanilla,resnet8"}, "DATASET": common_data,
         "DISTILLER": {"TYPE": "NONE", "STUDENT": "resnet8"}, "SOLVER": solver, "LOG": log})
    students = {
        "kd": ({"TYPE": "KD", "LOGIT_PROCESSOR": "none"}, {"KD": {"TEMPERATURE": 4, "LOSS": {"CE_WEIGHT": 0.1, "KD_WEIGHT": 0.9}}}, "base"),
        "kd_sort": ({"TYPE": "KD", "LOGIT_PROCESSOR": "sort"},
                    {"KD": {"TEMPERATURE": 4, "LOSS": {"CE_WEIGHT": 0.1, "KD_WEIGHT": 0.9}}}, "base"),
        "dkd": ({"TYPE": "DKD", "LOGIT_PROCESSOR": "none"}, {"DKD": {"CE_WEIGHT": 1.0, "ALPHA": 1.0, "BETA": 8.0, "T": 4.0, "WARMUP": 2}}, "base"),
        "dkd_sort": ({"TYPE": "DKD", "LOGIT_PROCESSOR": "sort"},
                     {"DKD": {"CE_WEIGHT": 1.0, "ALPHA": 1.0, "BETA": 8.0, "T": 4.0, "WARMUP": 2}}, "base"),
        "mlkd": ({"TYPE": "MLKD", "LOGIT_PROCESSOR": "none"},
                 {"KD": {"TEMPERATURE": 4, "LOSS": {"CE_WEIGHT": 0.1, "KD_WEIGHT": 0.9}}}, "ours"),
        "sld": ({"TYPE": "SLD", "LOGIT_PROCESSOR": "none"},
                {"KD": {"TEMPERATURE": 4, "LOSS": {"CE_WEIGHT": 0.1, "KD_WEIGHT": 0.9}},
                                  "SLD": {"TEMPERATURES": [1, 2, 3, 4, 5, 6], "GAMMA_FRACTION": 0.625}}, "ours"),
        # sort in place of swap, on the teacher's and on the student's (pseudo-teacher) logits
        "sld_sort": ({"TYPE": "SLD", "LOGIT_PROCESSOR": "none"},
                     {"KD": {"TEMPERATURE": 4, "LOSS": {"CE_WEIGHT": 0.1, "KD_WEIGHT": 0.9}},
                      "SLD": {"TEMPERATURES": [1, 2, 3, 4, 5, 6], "GAMMA_FRACTION": 0.625,
                              "TEACHER_PROCESSOR": "sort", "STUDENT_PROCESSOR": "sort"}}, "ours"),
    }
    for method, (distiller, extra, trainer) in students.items():
        content = {"EXPERIMENT": {"PROJECT": "fashion_mnist", "TAG": f"{method},resnet20,resnet8"},
                   "DATASET": common_data,
                   "DISTILLER": {**distiller, "TEACHER": "resnet20", "STUDENT": "resnet8",
                                 "TEACHER_CKPT": "./output/fashion_mnist/vanilla,resnet20/best.pth"},
                   "SOLVER": {**solver, "TRAINER": trainer}, **extra, "LOG": log}
        add(f"{method}/resnet20_resnet8.yaml",
            f"demo: {method} ResNet20 -> ResNet8 on a 10k Fashion-MNIST subset (teacher from vanilla/resnet20.yaml)",
            content)
    return files


def build(seed: Path) -> dict[Path, str]:
    """Relative path -> file text for every shipped config."""
    files: dict[Path, str] = {}
    for method, src, base, recipe, rel in published_experiments(seed):
        cfg = resolve_published(src, base, recipe)
        dtype, teacher, student = canonical(cfg)
        rec = f"logit-stand base-temp {LS_BASE_TEMP:g} kd-weight {LS_KD_WEIGHT:g}" if recipe == "logit-stand" else "none"
        header = (f"{title(method, teacher, student, cfg.DATASET.TYPE)} | published: "
                  f"{src.relative_to(seed).as_posix()} | defaults: {base} | recipe: {rec}")
        files[rel] = render(header, ours(cfg, method))
    files.update(fashion_mnist())
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=Path, default=REPO.parent / "shared" / "seed_configs")
    parser.add_argument("--out", type=Path, default=REPO / "configs")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file would change")
    args = parser.parse_args(argv)
    files = build(args.seed)
    changed = [rel for rel, text in files.items()
               if not (args.out / rel).is_file() or (args.out / rel).read_text() != text]
    if args.check:
        for rel in changed:
            print(f"would change: {rel}")
        return 1 if changed else 0
    for rel in changed:
        (args.out / rel).parent.mkdir(parents=True, exist_ok=True)
        (args.out / rel).write_text(files[rel])
    print(f"{len(files)} configs, {len(changed)} written under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
