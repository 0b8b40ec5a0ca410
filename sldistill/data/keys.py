"""The ``DATASET.*`` configuration keys, declared where they are read.

The engine builds its schema, validation and ``docs/configs.md`` from :data:`DATA_KEYS`; the
loaders read the same declarations (:func:`data_option`), so a key's default lives here only.
"""
from __future__ import annotations

import os
from typing import Any

from sldistill._cfg import cfg_get
from sldistill.options import Key

from . import builtin  # noqa: F401 - the built-in datasets, named in DATASET.TYPE's description
from .registry import available_datasets

__all__ = ["DATA_KEYS", "data_option"]


def _registered_dataset(name: str) -> str | None:
    """Checked when the config is validated, so datasets registered by plugins count."""
    names = available_datasets()
    if name in names:
        return None
    import difflib

    close = difflib.get_close_matches(name, list(names), n=3)
    hint = f"; did you mean: {', '.join(close)}?" if close else ""
    return (f"unknown dataset {name!r}; valid: {', '.join(names)}{hint} (a dataset of your own is registered "
            "with sldistill.data.register_dataset in a module given to --plugin or EXPERIMENT.PLUGINS)")


DATA_KEYS: dict[str, Key] = {
    "DATASET.TYPE": Key("cifar100", "Which registered dataset (reader, transforms and normalisation) to use: "
                        + ", ".join(f"`{n}`" for n in available_datasets())
                        + ", or one registered with `sldistill.data.register_dataset`.", check=_registered_dataset),
    "DATASET.NUM_WORKERS": Key(2, "Data-loading worker processes per training process (persistent); 0 loads "
                               "in the main process.", ge=0),
    "DATASET.TEST.BATCH_SIZE": Key(64, "Batch size of evaluation (per process).", gt=0),
    "DATASET.ROOT": Key("", "Dataset folder; empty means `$SLDISTILL_DATA`, else `./data`."),
    "DATASET.DOWNLOAD": Key(True, "Download CIFAR-100 / Fashion-MNIST when missing and the machine has internet."),
    "DATASET.TRAIN_SUBSET": Key(0, "If > 0, train on a seeded, class-balanced subset of this many images "
                                "(0: the whole training set).", ge=0),
    "DATASET.SUBSET_SEED": Key(-1, "Seed of the `TRAIN_SUBSET` draw; -1 uses `EXPERIMENT.SEED` (set it >= 0 to "
                               "keep the subset fixed across seeds).", ge=-1),
    "DATASET.PIN_MEMORY": Key(True, "Pin host memory of batches (takes effect on CUDA only)."),
    "DATASET.IMAGE_SIZE": Key(0, "`folder` datasets (and registered ones without transforms of their own): "
                              "image side for training and test (0: the dataset's size, 32 for `folder`). "
                              "Refused for datasets with fixed views (CIFAR-100, ImageNet, ...).", ge=0),
    "DATASET.DROP_LAST": Key(False, "Drop the last short training batch (published loaders keep it; a one-image "
                             "batch is always dropped)."),
}


def data_option(cfg: Any, name: str) -> Any:
    """``cfg``'s value of the declared key ``name`` (its default when absent), checked.

    Raises:
        TypeError: the value has the wrong type; ValueError: it is out of range. Both name the key.
    """
    key = DATA_KEYS[name]
    value = cfg_get(cfg, name, key.default)
    if key.kind == "str" and isinstance(value, os.PathLike):
        value = os.fspath(value)
    try:
        value = key.coerce(value)
    except TypeError as e:
        raise TypeError(f"{name}: {e}") from None
    problem = key.problem(value)
    if problem:
        raise ValueError(f"{name}: {problem}")
    return value
