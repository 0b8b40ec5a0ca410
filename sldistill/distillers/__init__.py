"""Distillers by published ``DISTILLER.TYPE`` name.

Importing this package registers every distiller; use :func:`build_distiller`.
"""
from sldistill.distillers.base import (
    Distiller,
    available_distillers,
    build_distiller,
    get_distiller_class,
    register,
)
from sldistill.distillers import logit  # noqa: F401  (registers NONE, KD, DKD, MLKD, SLD)
from sldistill.distillers import feature  # noqa: F401  (registers the mdistiller feature distillers)

__all__ = ["Distiller", "available_distillers", "build_distiller", "get_distiller_class", "register"]
