"""What a cache depends on: the header a config expects, fingerprints, and comparing headers.

The header's ``depends`` section lists, in a fixed order, everything the cached logits are a
function of; :func:`first_mismatch` walks it in that order, so a refusal names the field that
matters first (another teacher before another dataset before another precision).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from sldistill._cfg import cfg_get
from sldistill.models.teachers import file_sha256

from .fileformat import FORMAT_VERSION

__all__ = ["DEPENDS_FIELDS", "NotCacheableError", "expected_header", "first_mismatch", "cache_key",
           "default_cache_path", "weak_transform_problem", "dataset_fingerprint", "teacher_weights", "file_sha256"]

#: the fields of a header's ``depends`` section, in the order they are compared, and what sets each
DEPENDS_FIELDS: dict[str, str] = {
    "teacher": "DISTILLER.TEACHER",
    "teacher_weights": "the teacher's weights: SHA-256 of DISTILLER.TEACHER_CKPT or of the published file under "
                       "DISTILLER.TEACHER_ROOT (torchvision weights: their name)",
    "dataset": "DATASET.TYPE",
    "train_subset": "DATASET.TRAIN_SUBSET",
    "subset_seed": "DATASET.SUBSET_SEED (EXPERIMENT.SEED when it is -1; null without a subset)",
    "num_images": "the number of training images (after DATASET.TRAIN_SUBSET)",
    "num_classes": "the dataset's class count",
    "dataset_fingerprint": "the training images: SHA-256 of the arrays (in-memory datasets) or of the files' "
                           "paths and sizes (file datasets), in index order",
    "mean": "the dataset's normalisation mean",
    "std": "the dataset's normalisation std",
    "weak_view": "the weak view's transform and its parameters (DATASET.TYPE, DATASET.IMAGE_SIZE)",
    "precision": "SOLVER.AMP (the teacher's precision)",
    "channels_last": "SOLVER.CHANNELS_LAST",
}


class NotCacheableError(ValueError):
    """The run's weak view has no finite set of views (the message names the transform)."""


def teacher_weights(cfg: Any) -> tuple[str, str]:
    """``(identity, file)`` of the teacher's weights as :func:`sldistill.models.build_teacher`
    finds them: ``("sha256:<hex>", path)`` for a file (``DISTILLER.TEACHER_CKPT``, else the
    published checkpoint under the teacher root), ``("torchvision:<weights>", "")`` for
    torchvision's ImageNet weights."""
    from sldistill.models.registry import family_of, resolve_name
    from sldistill.models.teachers import teacher_checkpoint_path, teacher_root

    name = str(cfg_get(cfg, "DISTILLER.TEACHER", ""))
    dataset = str(cfg_get(cfg, "DATASET.TYPE", "cifar100"))
    ckpt = str(cfg_get(cfg, "DISTILLER.TEACHER_CKPT", "") or "")
    if not name:
        raise ValueError("DISTILLER.TEACHER is empty: name a teacher model")
    if ckpt:
        path = Path(ckpt).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"DISTILLER.TEACHER_CKPT {ckpt}: no such file")
    elif family_of(dataset) == "imagenet":
        import torchvision

        from sldistill.models.imagenet import TORCHVISION_WEIGHTS

        if name.startswith("torchvision:"):
            return f"torchvision:{torchvision.models.get_model_weights(name.split(':', 1)[1]).DEFAULT}", ""
        resolved = resolve_name(name, dataset, notice=False) if ":" not in name else name
        if resolved not in TORCHVISION_WEIGHTS:
            raise ValueError(f"teacher {name!r}: no known ImageNet weights; set DISTILLER.TEACHER_CKPT")
        return f"torchvision:{TORCHVISION_WEIGHTS[resolved]}", ""
    else:
        path = teacher_checkpoint_path(name, teacher_root(cfg))
    return f"sha256:{file_sha256(path)}", str(path.resolve())


def dataset_fingerprint(dataset: Any, source: str = "") -> str:
    """SHA-256 naming a training set's images in index order: of the ``uint8`` array (shape,
    dtype and bytes) for in-memory datasets; of the ``(path, size)`` list for file datasets,
    paths relative to ``source`` (the data folder) where they lie below it."""
    h = hashlib.sha256()
    data = getattr(dataset, "data", None)
    if isinstance(data, np.ndarray):
        h.update(f"array {list(data.shape)} {data.dtype.str}\n".encode())
        h.update(np.ascontiguousarray(data).reshape(-1).data)
        return h.hexdigest()
    samples = getattr(dataset, "samples", None)
    if samples is None:
        raise TypeError(f"cannot fingerprint a {type(dataset).__name__}: expected an ArrayDataset or a FileDataset")
    base = os.path.abspath(source) if source else ""
    h.update(b"files\n")
    for path, _ in samples:
        full = os.path.abspath(path)
        rel = os.path.relpath(full, base) if base and full.startswith(base + os.sep) else full
        h.update(f"{rel}\t{os.path.getsize(full)}\n".encode())
    return h.hexdigest()


def weak_transform_problem(cfg: Any) -> tuple[Any, str | None]:
    """``(weak transform, problem)`` of ``cfg``'s dataset: the first training view's transform and
    ``None`` if it has a finite set of views, else a sentence naming it (no data is read)."""
    from sldistill.data import view_transforms
    from sldistill.data.transforms import finite_view_problem

    kind = str(cfg_get(cfg, "DATASET.TYPE", "cifar100"))
    weak, _ = view_transforms(kind, cfg)
    problem = finite_view_problem(weak)
    if problem is None:
        return weak, None
    return weak, (f"the weak view of DATASET.TYPE {kind!r} cannot be cached: {problem}. A teacher cache needs a "
                  "finite set of views per image (the CIFAR-style crop and flip); the strong view always runs live")


def _json(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, and so on)."""
    return json.loads(json.dumps(value))


def expected_header(cfg: Any, *, datasets: Any = None) -> dict[str, Any]:
    """The header a cache for ``cfg`` has (``progress`` at zero): what :meth:`TeacherCache.check`
    compares and what :func:`build_cache` starts from.

    Args:
        cfg: the run's configuration.
        datasets: the run's :class:`sldistill.data.Datasets` when already built (the trainer's
            ``loaders.datasets``), else they are built from ``cfg`` (the training images are read).

    Raises:
        NotCacheableError: the weak view has no finite set of views (naming the transform).
        FileNotFoundError: the teacher's weights or the data are missing.
    """
    import torch

    import sldistill
    from sldistill.data import build_datasets
    from sldistill.data.keys import data_option

    weak, problem = weak_transform_problem(cfg)
    if problem is not None:
        raise NotCacheableError(problem)
    if datasets is None:
        datasets = build_datasets(cfg, num_views=1)
    train = getattr(datasets.train, "base", datasets.train)  # a ContrastiveDataset wraps the images
    weak = getattr(datasets, "weak_transform", None) or train.views[0]
    if len(train) == 0:
        raise ValueError("the training set is empty: nothing to cache")
    first = train.image(0)
    num_views = int(weak.view_count(first))
    image_shape = list(train.data.shape[1:3]) if isinstance(getattr(train, "data", None), np.ndarray) else None
    identity, weights_file = teacher_weights(cfg)
    subset = int(data_option(cfg, "DATASET.TRAIN_SUBSET"))
    subset_seed = int(data_option(cfg, "DATASET.SUBSET_SEED"))
    if subset_seed < 0:
        subset_seed = int(cfg_get(cfg, "EXPERIMENT.SEED", 0))
    depends = {
        "teacher": str(cfg_get(cfg, "DISTILLER.TEACHER", "")),
        "teacher_weights": identity,
        "dataset": str(datasets.kind),
        "train_subset": subset,
        "subset_seed": subset_seed if subset > 0 else None,
        "num_images": len(train),
        "num_classes": int(datasets.num_classes),
        "dataset_fingerprint": dataset_fingerprint(train, getattr(datasets, "source", "")),
        "mean": list(datasets.mean),
        "std": list(datasets.std),
        "weak_view": {**weak.view_params(), "image_shape": image_shape, "num_views": num_views},
        "precision": str(cfg_get(cfg, "SOLVER.AMP", "none")),
        "channels_last": bool(cfg_get(cfg, "SOLVER.CHANNELS_LAST", True)),
    }
    return _json({
        "format": FORMAT_VERSION,
        "depends": depends,
        "shape": [len(train), num_views, int(datasets.num_classes)],
        "dtype": "float32",
        "progress": {"rows_done": 0, "complete": False, "batch_images": 0, "batch_views": 0},
        "data_sha256": None,
        "versions": {"sldistill": sldistill.__version__, "torch": torch.__version__, "numpy": np.__version__},
        "info": {"teacher_file": weights_file, "data_source": str(getattr(datasets, "source", "")),
                 "device": "", "teacher_output_dtype": ""},
        "build": {},
    })


def first_mismatch(expected: dict[str, Any], found: dict[str, Any], *,
                   strict_versions: bool = False) -> tuple[str, Any, Any] | None:
    """``(field, value in found, value expected)`` of the first ``depends`` field (in
    :data:`DEPENDS_FIELDS` order) that differs, then ``shape``, then (with
    ``strict_versions``) the torch and sldistill versions; ``None`` when all agree."""
    exp, got = expected.get("depends", {}), found.get("depends", {})
    for name in [*DEPENDS_FIELDS, *sorted((set(exp) | set(got)) - set(DEPENDS_FIELDS))]:
        if exp.get(name) != got.get(name):
            return name, got.get(name), exp.get(name)
    if expected.get("shape") != found.get("shape"):
        return "shape", found.get("shape"), expected.get("shape")
    if strict_versions:
        for name in ("torch", "sldistill"):
            a, b = found.get("versions", {}).get(name), expected.get("versions", {}).get(name)
            if a != b:
                return f"versions.{name}", a, b
    return None


def cache_key(header: dict[str, Any]) -> str:
    """A short hash of a header's ``depends`` section: equal for caches that stand in for each other."""
    text = json.dumps(header["depends"], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def default_cache_path(cfg: Any, header: dict[str, Any] | None = None) -> Path:
    """``<teacher root>/cache/<teacher>_<dataset>_<cache_key>.tcache``: the teacher root is
    ``DISTILLER.TEACHER_ROOT`` (or ``$SLDISTILL_TEACHER_ROOT``), where the teachers live, so
    every run and sweep with that teacher finds the same file."""
    from sldistill.models.teachers import teacher_root

    header = header if header is not None else expected_header(cfg)
    deps = header["depends"]
    teacher = re.sub(r"[^A-Za-z0-9._-]+", "-", deps["teacher"]).strip("-") or "teacher"
    return teacher_root(cfg) / "cache" / f"{teacher}_{deps['dataset']}_{cache_key(header)}.tcache"
