"""The keys the engine itself reads (experiment, models, solver, logging) and the bases.

Methods declare their own keys on their distiller classes, datasets in :mod:`sldistill.data`;
:mod:`.schema` puts them together. Published key names; defaults are the SLD release's (which
are mdistiller's); keys this toolkit adds have the released behaviour as their default.
"""
from __future__ import annotations

import re
from typing import Any

from sldistill.options import Key

__all__ = ["ENGINE_KEYS", "BASES", "TRAINER_ALIASES", "SECTION_ORDER"]

#: what :func:`sldistill.engine.distributed.resolve_device` accepts (no MPS: it is untested here)
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _device(v: str) -> str | None:
    return None if _DEVICE_RE.match(v) else f"got {v!r}; valid: auto, cpu, cuda, cuda:N"


def _known_distiller(name: str) -> str | None:
    from sldistill.distillers import available_distillers

    names = available_distillers()
    if name in names:
        return None
    import difflib

    close = difflib.get_close_matches(name, names, n=3)
    return (f"unknown distiller {name!r}; valid: {', '.join(names)}"
            + (f"; did you mean: {', '.join(close)}?" if close else "")
            + " (a distiller of your own is imported with --plugin MODULE or EXPERIMENT.PLUGINS)"
            + "".join(f"; note: the {what}" for what in _failed_entry_points()))


def _failed_entry_points() -> list[str]:
    from .schema import entry_point_failures

    return entry_point_failures("sldistill.distillers")


#: ``SOLVER.TRAINER`` values of the published files and what each implies. The engine derives
#: the views from the distiller and CRD sampling from its needs; only DOT is taken from here
#: (as ``SOLVER.TYPE: DOT``). ``aug`` (MLKD's DKD_aug trainer) is implemented by no release.
TRAINER_ALIASES: dict[str, str] = {
    "base": "one view (derived from the distiller)",
    "ours": "weak + strong views (derived from the distiller)",
    "crd": "CRD sampling (derived from the distiller)",
    "dot": "SOLVER.TYPE DOT",
    "crd_dot": "SOLVER.TYPE DOT (CRD sampling derived from the distiller)",
    "aug": "refused: no release implements it",
}

_CE = "weight of the cross-entropy term"

ENGINE_KEYS: dict[str, Key] = {
    "BASE": Key("sld", "Which published codebase's defaults the file is read against (its `defaults.yaml`); "
                "also `--base` on the command line.", check=lambda v: None if v in BASES else
                f"invalid value {v!r}; valid: {', '.join(BASES)}"),
    "EXPERIMENT.PROJECT": Key("distill", "Second level of the run folder: `LOG.PREFIX/PROJECT/<NAME or TAG>`."),
    "EXPERIMENT.NAME": Key("", "Run folder name; when empty, `TAG` is used."),
    "EXPERIMENT.TAG": Key("default", "Run label (published files use `method,teacher,student`); the folder name "
                          "when `NAME` is empty."),
    "EXPERIMENT.LOGIT_STAND": Key(False, "Logit standardization: z-score the student's and teacher's logits in "
                                  "KD/DKD/MLKD (same as `DISTILLER.LOGIT_PROCESSOR: zscore`)."),
    "EXPERIMENT.SEED": Key(0, "Seed of python, numpy, torch and every data stream (shuffling, augmentation, CRD "
                           "sampling).", ge=0),
    "EXPERIMENT.DETERMINISTIC": Key(False, "Use deterministic algorithms (bitwise-reproducible runs and resumes "
                                    "on CPU; slower on GPU)."),
    "EXPERIMENT.DEVICE": Key("auto", "`auto` (CUDA when present, else CPU), `cpu`, `cuda` or `cuda:N`; under "
                             "torchrun each process takes its local rank's GPU.", check=_device),
    "EXPERIMENT.PLUGINS": Key([], "Python modules imported before the config is validated, so that the "
                              "distillers, models and datasets they register can be used (also `--plugin`).",
                              kind="list_str"),
    "DISTILLER.TYPE": Key("NONE", "The method, by its registered name (`sldistill methods` lists them).",
                          check=_known_distiller),
    "DISTILLER.TEACHER": Key("ResNet50", "Teacher architecture (a zoo name, `torchvision:NAME`, `timm:NAME` or "
                             "`package.module:callable`)."),
    "DISTILLER.STUDENT": Key("resnet32", "Student architecture (same forms as `TEACHER`)."),
    "DISTILLER.TEACHER_ROOT": Key("./download_ckpts", "Folder holding the published teachers "
                                  "(`cifar_teachers/<name>_vanilla/ckpt_epoch_240.pth`); `$SLDISTILL_TEACHER_ROOT` "
                                  "when left at its default."),
    "DISTILLER.TEACHER_CKPT": Key("", "A teacher checkpoint file, used instead of the published-teacher table."),
    "DISTILLER.STUDENT_CKPT": Key("", "Optional initial weights of the student."),
    "DISTILLER.TEACHER_CACHE": Key("", "A teacher-logit cache file (`sldistill teacher-cache build`): the weak "
                                   "view's teacher logits are read from it instead of computed (logit methods; the "
                                   "teacher still runs on strong views). Empty: no cache."),
    "DISTILLER.TRUST_CHECKPOINT": Key(False, "Unpickle teacher/student weight files in full (they may run code): "
                                      "only for files you trust. Without it, classes a file names are read as "
                                      "inert placeholders (also `--trust-checkpoint`)."),
    "SOLVER.TRAINER": Key("base", "Published trainer name, accepted as an alias: the views come from the "
                          "distiller, CRD sampling from its needs, DOT from `SOLVER.TYPE` (`dot`/`crd_dot` "
                          "set it to `DOT`); `aug` is refused (no release implements it).",
                          choices=tuple(TRAINER_ALIASES)),
    "SOLVER.BATCH_SIZE": Key(64, "Global training batch, split evenly over DDP processes.", gt=0),
    "SOLVER.EPOCHS": Key(240, "Training epochs.", gt=0),
    "SOLVER.LR": Key(0.05, "Initial learning rate.", ge=0),
    "SOLVER.LR_DECAY_STAGES": Key([150, 180, 210], "Epochs after which the step schedule multiplies the learning "
                                  "rate by `LR_DECAY_RATE`.", gt=0, increasing=True),
    "SOLVER.LR_DECAY_RATE": Key(0.1, "Factor of each step decay.", ge=0),
    "SOLVER.WEIGHT_DECAY": Key(0.0001, "SGD weight decay.", ge=0),
    "SOLVER.MOMENTUM": Key(0.9, "SGD momentum.", ge=0, le=1),
    "SOLVER.TYPE": Key("SGD", "Optimizer: `SGD` (published) or `DOT` (distillation-oriented trainer: separate "
                       "momenta for the task and distillation gradients).", choices=("SGD", "DOT")),
    "SOLVER.DOT.DELTA": Key(0.075, "DOT: the distillation gradient's momentum is `MOMENTUM + DELTA`, the task "
                            "gradient's `MOMENTUM - DELTA`.", ge=0),
    "SOLVER.SCHEDULER": Key("step", "`step` (published) or `cosine` (per iteration).", choices=("step", "cosine")),
    "SOLVER.WARMUP_EPOCHS": Key(0.0, "Linear learning-rate warm-up length in epochs (0: none, as published).",
                                kind="float", ge=0),
    "SOLVER.NESTEROV": Key(False, "Nesterov momentum."),
    "SOLVER.AMP": Key("none", "Mixed precision: `none`, `bf16` (CPU and CUDA) or `fp16` (CUDA only, with a "
                      "gradient scaler).", choices=("none", "bf16", "fp16")),
    "SOLVER.CHANNELS_LAST": Key(True, "Run models and inputs in channels_last memory layout."),
    "SOLVER.SYNC_BN": Key(False, "SyncBatchNorm across DDP processes (CUDA only; refused on CPU)."),
    "LOG.PREFIX": Key("./output", "Root of the run folders."),
    "LOG.SAVE_CHECKPOINT_FREQ": Key(40, "Keep an `epoch_N.pth` checkpoint every this many epochs (besides "
                                    "`latest.pth` and `best.pth`).", gt=0),
    "LOG.TENSORBOARD_FREQ": Key(500, "Accepted for compatibility with the published files; TensorBoard scalars "
                                "are written once per epoch.", gt=0, compat=True),
    "LOG.WANDB": Key(False, "Log the run to Weights & Biases (`pip install sldistill[wandb]`): project "
                     "`EXPERIMENT.PROJECT`, name `NAME` or `TAG`, tags from `TAG`'s comma-separated parts, the "
                     "resolved config, every per-epoch metric, `best_acc`/`last_acc` in the summary; `--resume` "
                     "continues the W&B run (`wandb_id.txt`)."),
    "LOG.TENSORBOARD": Key(True, "Write TensorBoard event files under the run folder's `tb/`."),
    "LOG.PROGRESS": Key(True, "Show progress bars (on terminals)."),
}

#: sections in the order the docs and the saved config list them (method sections follow)
SECTION_ORDER = ("BASE", "EXPERIMENT", "DATASET", "DISTILLER", "SOLVER", "LOG")

#: base name -> {"defaults": {dotted key: value}, "implicit": {DISTILLER.TYPE: {key: value}},
#: "about": one line}. Facts from each release's defaults.yaml; SortKD also sorts the teacher's
#: logits in its KD and DKD distillers (no key in its files), which "implicit" reproduces:
#: those values are set after the file and the overrides, only for keys neither of them set.
BASES: dict[str, dict[str, Any]] = {
    "sld": {"about": "Swapped-Logit-Distillation release (our defaults)", "defaults": {}, "implicit": {}},
    "mlkd": {"about": "Multi-Level-Logit-Distillation release (same defaults as SLD)", "defaults": {},
             "implicit": {}},
    "mdistiller": {"about": "mdistiller", "defaults": {"LOG.WANDB": True}, "implicit": {}},
    "sortkd": {
        "about": "SortKD release: KD and DKD sort the teacher's logits",
        "defaults": {"LOG.WANDB": True},
        "implicit": {"KD": {"DISTILLER.LOGIT_PROCESSOR": "sort"}, "DKD": {"DISTILLER.LOGIT_PROCESSOR": "sort"}},
    },
    "logit-standardization": {
        "about": "logit-standardization-KD release: KD.TEMPERATURE 2, KD.LOSS.KD_WEIGHT 9",
        "defaults": {"KD.TEMPERATURE": 2, "KD.LOSS.KD_WEIGHT": 9},
        "implicit": {},
    },
}
