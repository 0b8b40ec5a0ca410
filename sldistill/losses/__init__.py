"""Pure loss functions, callable from any training loop.

Logit losses (:mod:`sldistill.losses.logit`): ``kd``, ``dkd``, ``mlkd``, ``sld``.
Parameter-free feature losses (:mod:`sldistill.losses.feature`): ``at``, ``nst``, ``sp``,
``kdsvd``, ``pkt``, ``rkd``.
"""
from sldistill.losses.logit import *  # noqa: F401,F403
from sldistill.losses.logit import __all__ as _logit_all
from sldistill.losses.feature import *  # noqa: F401,F403
from sldistill.losses.feature import __all__ as _feature_all

__all__ = list(_logit_all) + list(_feature_all)
