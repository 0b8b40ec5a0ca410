"""Pure loss functions, callable from any training loop.

Logit losses (:mod:`sldistill.losses.logit`): ``kd``, ``dkd``, ``mlkd``, ``sld``.
Feature losses (:mod:`sldistill.losses.feature`): the parameter-free ``at``, ``nst``, ``sp``,
``kdsvd``, ``pkt``, ``rkd``, those fed by connectors (``fitnet_hint``, ``ofd_margin_loss``,
``vid_nll``, ``hcl``, ``crd_nce``), and ``adaptive_pool``, the deterministic resizing they use.
Every loss computes in at least float32, also under autocast
(:func:`sldistill.losses.precision.float32_loss`; decorate a new loss with it).

This package re-exports the names in the ``__all__`` of ``logit.py`` and ``feature.py``: a new
loss there is ``losses.<name>`` once its name is added to that module's ``__all__``.
"""
from sldistill.losses.feature import *  # noqa: F401,F403
from sldistill.losses.feature import __all__ as _feature_all
from sldistill.losses.logit import *  # noqa: F401,F403
from sldistill.losses.logit import __all__ as _logit_all

__all__ = list(_logit_all) + list(_feature_all)
