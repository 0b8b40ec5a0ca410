"""Distillers by ``DISTILLER.TYPE`` name, and the public API to add one.

Importing this package registers every built-in distiller. A method of your own::

    from sldistill.distillers import Distiller, Key, register

    @register("MYKD")
    class MyKD(Distiller):
        config = {"MYKD.T": Key(4.0, "temperature", gt=0)}
        def forward_train(self, views, target, epoch, **extras): ...

and ``sldistill train --plugin my_module ...`` (see docs/contributing.md).
"""
from sldistill.distillers import (
    feature,  # noqa: F401,E402  (registers the mdistiller feature distillers)
    logit,  # noqa: F401,E402  (registers NONE, KD, DKD, MLKD, SLD)
)
from sldistill.distillers.base import (
    Distiller,
    Key,
    Unreleased,
    available_distillers,
    build_distiller,
    canonical_name,
    distiller_keys,
    get_distiller_class,
    register,
)

__all__ = ["Distiller", "Key", "Unreleased", "available_distillers", "build_distiller", "canonical_name",
           "distiller_keys", "get_distiller_class", "register"]
