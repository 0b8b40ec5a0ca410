"""The published top-1 accuracies that reproductions are compared with, as package data.

Every number is the original authors' (best test top-1 over the epochs, usually averaged over
several runs), with its source (:data:`SOURCES`). :func:`lookup` finds the entry of a
(method, teacher, student, dataset); :func:`experiment_key` derives that key from a run's
configuration (a ``CfgNode`` or the plain dict of its ``config.yaml``), so the reports can put
the published number beside a run's.

Method names: ``KD``, ``DKD``, ``MLKD``, ``CTKD``, with ``+LS`` for logit standardization
(z-scored logits), ``+DOT`` for the DOT optimizer, ``+sort`` / ``+swap`` for those logit
processors; ``vanilla`` for a model trained alone (its teacher is ``""``). Model names are the
zoo's (``resnet32x4``, ``wrn_40_2``, ``ShuffleV2``, ``ResNet50``, ...). No SLD or sort-paper
numbers are included: none of them could be confirmed from those papers' tables.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sldistill._cfg import cfg_get

__all__ = ["PublishedResult", "SOURCES", "PUBLISHED", "lookup", "experiment_key", "teacher_top1"]

#: source id -> (what it is, where; how many runs its numbers average where stated)
SOURCES: dict[str, tuple[str, str]] = {
    "LS": ("README of logit-standardization-KD (Sun et al., CVPR 2024); its KD/CTKD/DKD/MLKD rows repeat those "
           "methods' papers, averaged over 4 runs; MLKD there trains on weak + strong views for 480 epochs "
           "(960 for resnet32x4 -> ShuffleV1/V2)", "https://github.com/sunshangquan/logit-standardization-KD"),
    "DKD": ("README of mdistiller (DKD, CVPR 2022, 5 runs; DOT, ICCV 2023)",
            "https://github.com/megvii-research/mdistiller"),
    "teachers": ("README of RepDistiller: the CIFAR-100 teachers that mdistiller's cifar_teachers.tar ships",
                 "https://github.com/HobbitLong/RepDistiller"),
}


@dataclass(frozen=True)
class PublishedResult:
    """One published number: top-1 (%) of ``method`` with ``teacher`` -> ``student`` on ``dataset``."""

    method: str
    teacher: str
    student: str
    dataset: str
    top1: float
    source: str
    note: str = ""

    @property
    def pair(self) -> str:
        """``teacher -> student`` (the student alone for ``vanilla``)."""
        return f"{self.teacher} -> {self.student}" if self.teacher else self.student

    @property
    def url(self) -> str:
        """Where the source is published."""
        return SOURCES[self.source][1]


_SAME = ("resnet32x4>resnet8x4", "vgg13>vgg8", "wrn_40_2>wrn_40_1", "wrn_40_2>wrn_16_2", "resnet56>resnet20",
         "resnet110>resnet32", "resnet110>resnet20")
_DIFFERENT = ("resnet32x4>ShuffleV2", "resnet32x4>wrn_16_2", "resnet32x4>wrn_40_2", "wrn_40_2>resnet8x4",
              "wrn_40_2>MobileNetV2", "vgg13>MobileNetV2", "ResNet50>MobileNetV2")
#: source LS, CIFAR-100: method -> top-1 per pair of _SAME, then of _DIFFERENT
_LS_TABLE: dict[str, tuple[float, ...]] = {
    "KD": (73.33, 72.98, 73.54, 74.92, 70.66, 73.08, 70.67, 74.45, 74.90, 77.70, 73.97, 68.36, 67.37, 67.35),
    "KD+LS": (76.62, 74.36, 74.37, 76.11, 71.43, 74.17, 71.48, 75.56, 75.26, 77.92, 77.11, 69.23, 68.61, 69.02),
    "CTKD": (73.39, 73.52, 73.93, 75.45, 71.19, 73.52, 70.99, 75.37, 74.57, 77.66, 74.61, 68.34, 68.50, 68.67),
    "CTKD+LS": (76.67, 74.47, 74.58, 76.08, 71.34, 74.01, 71.39, 76.18, 75.16, 77.99, 77.03, 69.53, 68.98, 69.36),
    "DKD": (76.32, 74.68, 74.81, 76.24, 71.97, 74.11, 71.06, 77.07, 75.70, 78.46, 75.56, 69.28, 69.71, 70.35),
    "DKD+LS": (77.01, 74.81, 74.89, 76.39, 72.32, 74.29, 71.85, 77.37, 76.19, 78.95, 76.75, 70.01, 69.98, 70.45),
    "MLKD": (77.08, 75.18, 75.35, 76.63, 72.19, 74.11, 71.89, 78.44, 76.52, 79.26, 77.33, 70.78, 70.57, 71.04),
    "MLKD+LS": (78.28, 75.22, 75.56, 76.95, 72.33, 74.32, 72.27, 78.76, 77.53, 79.66, 77.68, 71.61, 70.94, 71.19),
}
_LS_NOTES = {("DKD", "wrn_40_2>wrn_16_2"): "mdistiller's README gives 76.23",
             ("KD", "resnet32x4>ShuffleV2"): "mdistiller's README labels this column MobileNetV2; the LS and DOT "
                                             "tables give it as ShuffleNetV2",
             ("DKD", "resnet32x4>ShuffleV2"): "mdistiller's README labels this column MobileNetV2; the LS and DOT "
                                              "tables give it as ShuffleNetV2"}
#: source DKD: (method, teacher>student, dataset, top-1) not in the LS table
_DKD_ROWS: tuple[tuple[str, str, str, float], ...] = (
    ("KD", "resnet32x4>ShuffleV1", "cifar100", 74.07), ("DKD", "resnet32x4>ShuffleV1", "cifar100", 76.45),
    ("KD", "wrn_40_2>ShuffleV1", "cifar100", 74.83), ("DKD", "wrn_40_2>ShuffleV1", "cifar100", 76.70),
    ("KD+DOT", "resnet32x4>resnet8x4", "cifar100", 75.12), ("KD+DOT", "vgg13>vgg8", "cifar100", 73.77),
    ("KD+DOT", "resnet32x4>ShuffleV2", "cifar100", 75.55),
    ("KD", "ResNet34>ResNet18", "imagenet", 71.03), ("DKD", "ResNet34>ResNet18", "imagenet", 71.70),
    ("KD+DOT", "ResNet34>ResNet18", "imagenet", 71.72),
    ("KD", "ResNet50>MobileNetV1", "imagenet", 70.50), ("DKD", "ResNet50>MobileNetV1", "imagenet", 72.05),
    ("KD+DOT", "ResNet50>MobileNetV1", "imagenet", 73.09),
)
#: source teachers: the CIFAR-100 teachers of cifar_teachers.tar
_TEACHERS: dict[str, float] = {"resnet56": 72.34, "resnet110": 74.31, "resnet32x4": 79.42, "wrn_40_2": 75.61,
                               "vgg13": 74.64, "ResNet50": 79.34}


def _build() -> tuple[PublishedResult, ...]:
    rows: list[PublishedResult] = []
    for method, values in _LS_TABLE.items():
        for pair, top1 in zip(_SAME + _DIFFERENT, values):
            teacher, student = pair.split(">")
            rows.append(PublishedResult(method, teacher, student, "cifar100", top1, "LS",
                                        _LS_NOTES.get((method, pair), "")))
    for method, pair, dataset, top1 in _DKD_ROWS:
        teacher, student = pair.split(">")
        rows.append(PublishedResult(method, teacher, student, dataset, top1, "DKD"))
    for name, top1 in _TEACHERS.items():
        rows.append(PublishedResult("vanilla", "", name, "cifar100", top1, "teachers"))
    return tuple(rows)


#: every published number
PUBLISHED: tuple[PublishedResult, ...] = _build()
_INDEX = {(r.method, r.teacher, r.student, r.dataset): r for r in PUBLISHED}


def lookup(method: str, teacher: str, student: str, dataset: str) -> PublishedResult | None:
    """The published entry of (method, teacher, student, dataset), or ``None``."""
    return _INDEX.get((method, teacher if method != "vanilla" else "", student, dataset))


def teacher_top1(name: str) -> float | None:
    """The published CIFAR-100 top-1 of teacher checkpoint ``name`` (``None`` if not published)."""
    return _TEACHERS.get(name)


_TYPE_ALIASES = {"KD_ours": "MLKD", "NONE": "vanilla"}
_PROCESSOR_SUFFIX = {"zscore": "+LS", "sort": "+sort", "swap": "+swap"}


def _zoo_name(name: str, dataset: str) -> str:
    try:
        from sldistill.models import resolve_name

        return resolve_name(name, dataset, notice=False)
    except (ValueError, ImportError):
        return name


def experiment_key(cfg: Any) -> tuple[str, str, str, str] | None:
    """``(method, teacher, student, dataset)`` of a run's configuration, in the names of
    :data:`PUBLISHED` (``None`` when the config has no ``DISTILLER.TYPE``).

    ``EXPERIMENT.LOGIT_STAND`` or ``DISTILLER.LOGIT_PROCESSOR zscore`` add ``+LS``, ``sort`` /
    ``swap`` add ``+sort`` / ``+swap``, ``SOLVER.TYPE DOT`` adds ``+DOT``; ``KD_ours`` is MLKD and
    ``NONE`` is ``vanilla`` (teacher ``""``).
    """
    dtype = cfg_get(cfg, "DISTILLER.TYPE", None)
    if dtype is None:
        return None
    method = _TYPE_ALIASES.get(str(dtype), str(dtype))
    dataset = str(cfg_get(cfg, "DATASET.TYPE", "cifar100"))
    student = _zoo_name(str(cfg_get(cfg, "DISTILLER.STUDENT", "")), dataset)
    if method == "vanilla":
        return method, "", student, dataset
    processor = "zscore" if bool(cfg_get(cfg, "EXPERIMENT.LOGIT_STAND", False)) else \
        str(cfg_get(cfg, "DISTILLER.LOGIT_PROCESSOR", "none"))
    method += _PROCESSOR_SUFFIX.get(processor, "")
    if str(cfg_get(cfg, "SOLVER.TYPE", "SGD")).upper() == "DOT":
        method += "+DOT"
    return method, _zoo_name(str(cfg_get(cfg, "DISTILLER.TEACHER", "")), dataset), student, dataset
