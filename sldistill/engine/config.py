"""Experiment configuration: defaults, attribute-style access.

The key names are those of the published YAML files (mdistiller / SLD / MLKD / SortKD /
logit-standardization); their defaults are the SLD/mdistiller ones. Keys that the published
code hard-codes or lacks are added with the released behaviour as their default.
"""
from __future__ import annotations

import copy
from typing import Any, Iterator, Mapping

__all__ = ["CfgNode", "DEFAULTS", "get_defaults"]


class CfgNode(dict):
    """A nested ``dict`` whose keys can also be read and written as attributes.

    ``cfg.KD.TEMPERATURE`` and ``cfg["KD"]["TEMPERATURE"]`` are the same value. Nested
    mappings are converted to :class:`CfgNode` on construction.
    """

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        for key, value in (data or {}).items():
            self[key] = CfgNode(value) if isinstance(value, Mapping) else value

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}; keys here: {sorted(self)}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = CfgNode(value) if isinstance(value, Mapping) and not isinstance(value, CfgNode) else value

    def __deepcopy__(self, memo: dict) -> "CfgNode":
        return CfgNode({k: copy.deepcopy(v, memo) for k, v in self.items()})

    def walk(self, prefix: str = "") -> Iterator[tuple[str, Any]]:
        """Yield ``(dotted.key, value)`` for every leaf."""
        for key, value in self.items():
            name = f"{prefix}{key}"
            if isinstance(value, CfgNode):
                yield from value.walk(name + ".")
            else:
                yield name, value

    def to_dict(self) -> dict:
        """A plain nested ``dict`` copy (for YAML/JSON dumps)."""
        return {k: v.to_dict() if isinstance(v, CfgNode) else copy.deepcopy(v) for k, v in self.items()}


# The defaults. Published keys first (values as in SLD's / mdistiller's defaults), then the
# keys this toolkit adds (each commented with its meaning; released behaviour by default).
DEFAULTS: dict[str, Any] = {
    "EXPERIMENT": {
        "PROJECT": "distill",
        "NAME": "",
        "TAG": "default",
        "LOGIT_STAND": False,  # published (logit-standardization): z-score student and teacher logits
        # added:
        "SEED": 0,  # seeds python, numpy and torch (+ loader workers)
        "DETERMINISTIC": False,  # torch.use_deterministic_algorithms + cudnn.deterministic
        "DEVICE": "auto",  # auto | cpu | cuda | cuda:N
    },
    "DATASET": {
        "TYPE": "cifar100",  # cifar100 | imagenet | tiny_imagenet | fashion_mnist | folder
        "NUM_WORKERS": 2,
        "TEST": {"BATCH_SIZE": 64},
        # added:
        "ROOT": "",  # '' -> $SLDISTILL_DATA or ./data
        "DOWNLOAD": True,  # download where the dataset allows it and the machine has internet
        "TRAIN_SUBSET": 0,  # >0: seeded class-balanced subset of that many training images
        "PIN_MEMORY": True,  # only takes effect on CUDA
    },
    "DISTILLER": {
        "TYPE": "NONE",
        "TEACHER": "ResNet50",
        "STUDENT": "resnet32",
        # added:
        "LOGIT_PROCESSOR": "none",  # none | sort | swap | zscore (logit methods; zscore acts on both)
        "TEACHER_ROOT": "./download_ckpts",  # or $SLDISTILL_TEACHER_ROOT
        "TEACHER_CKPT": "",  # a teacher checkpoint file, overriding the published-teacher table
        "STUDENT_CKPT": "",  # optional initial student weights
    },
    "SOLVER": {
        "TRAINER": "base",  # base | ours (two views) | crd | dot | aug | crd_dot
        "BATCH_SIZE": 64,  # global batch (split over DDP processes)
        "EPOCHS": 240,
        "LR": 0.05,
        "LR_DECAY_STAGES": [150, 180, 210],
        "LR_DECAY_RATE": 0.1,
        "WEIGHT_DECAY": 0.0001,
        "MOMENTUM": 0.9,
        "TYPE": "SGD",
        "DOT": {"DELTA": 0.075},
        # added:
        "SCHEDULER": "step",  # step (published) | cosine
        "WARMUP_EPOCHS": 0,  # linear warm-up length in epochs (0 = none, as published)
        "NESTEROV": False,
        "AMP": "none",  # none | bf16 | fp16 (fp16 on CUDA only, with a grad scaler)
        "CHANNELS_LAST": True,
        "SYNC_BN": False,  # CUDA + DDP only
        "FUSE_STUDENT_VIEWS": False,  # one student forward over both views (changes BN statistics)
        "COMPILE": False,  # torch.compile the student
    },
    "LOG": {
        "PREFIX": "./output",
        "SAVE_CHECKPOINT_FREQ": 40,
        "TENSORBOARD_FREQ": 500,
        "WANDB": False,
        # added:
        "TENSORBOARD": True,
        "PROGRESS": True,  # progress bars
    },
    "KD": {"TEMPERATURE": 4, "LOSS": {"CE_WEIGHT": 0.1, "KD_WEIGHT": 0.9}},
    "DKD": {"CE_WEIGHT": 1.0, "ALPHA": 1.0, "BETA": 8.0, "T": 4.0, "WARMUP": 20},
    "MLKD": {
        # added: False = the released computation (masks act as a scalar, two strong-view terms
        # read the weak logits); True = per-sample masks and each view's own logits.
        "CLEAN": False,
    },
    "SLD": {
        # added: the release hard-codes these; our defaults are the released values.
        "TEMPERATURES": [1, 2, 3, 4, 5, 6],
        "GAMMA": 150,  # the pseudo-teacher (swapped student) term is on when epoch > GAMMA
        "GAMMA_FRACTION": 0.0,  # >0: GAMMA = round(GAMMA_FRACTION * SOLVER.EPOCHS) (scaled schedules)
        "DETACH_PSEUDO_TEACHER": False,  # released: gradient flows through the pseudo-teacher
        "TEACHER_PROCESSOR": "swap",  # swap | sort | none | zscore
        "STUDENT_PROCESSOR": "swap",  # swap | sort | none | zscore
    },
    "AT": {"P": 2, "LOSS": {"CE_WEIGHT": 1.0, "FEAT_WEIGHT": 1000.0}},
    "CRD": {
        "MODE": "exact",
        "FEAT": {"DIM": 128, "STUDENT_DIM": 256, "TEACHER_DIM": 256},
        "LOSS": {"CE_WEIGHT": 1.0, "FEAT_WEIGHT": 0.8},
        "NCE": {"K": 16384, "MOMENTUM": 0.5, "TEMPERATURE": 0.07},
    },
    "FITNET": {"HINT_LAYER": 2, "INPUT_SIZE": [32, 32], "LOSS": {"CE_WEIGHT": 1.0, "FEAT_WEIGHT": 100.0}},
    "KDSVD": {"K": 1, "LOSS": {"CE_WEIGHT": 1.0, "FEAT_WEIGHT": 1.0}},
    "NST": {"LOSS": {"CE_WEIGHT": 1.0, "FEAT_WEIGHT": 50.0}},
    "OFD": {"CONNECTOR": {"KERNEL_SIZE": 1}, "LOSS": {"CE_WEIGHT": 1.0, "FEAT_WEIGHT": 0.001}},
    "PKT": {"LOSS": {"CE_WEIGHT": 1.0, "FEAT_WEIGHT": 30000.0}},
    "REVIEWKD": {
        "CE_WEIGHT": 1.0,
        "REVIEWKD_WEIGHT": 1.0,
        "WARMUP_EPOCHS": 20,
        "SHAPES": [1, 8, 16, 32],
        "OUT_SHAPES": [1, 8, 16, 32],
        "IN_CHANNELS": [64, 128, 256, 256],
        "OUT_CHANNELS": [64, 128, 256, 256],
        "MAX_MID_CHANNEL": 512,
        "STU_PREACT": False,
    },
    "RKD": {
        "DISTANCE_WEIGHT": 25,
        "ANGLE_WEIGHT": 50,
        "LOSS": {"CE_WEIGHT": 1.0, "FEAT_WEIGHT": 1.0},
        "PDIST": {"EPSILON": 1e-12, "SQUARED": False},
    },
    "SP": {"LOSS": {"CE_WEIGHT": 1.0, "FEAT_WEIGHT": 3000.0}},
    "VID": {"LOSS": {"CE_WEIGHT": 1.0, "FEAT_WEIGHT": 1.0}, "EPS": 1e-5, "INIT_PRED_VAR": 5.0, "INPUT_SIZE": [32, 32]},
}


def get_defaults() -> CfgNode:
    """A fresh, mutable copy of the default configuration."""
    return CfgNode(copy.deepcopy(DEFAULTS))
