"""sldistill: knowledge distillation for image classifiers.

Swapped Logit Distillation (SLD), the parameter-free sorting mechanism, and the baselines they
are measured against (KD, DKD, MLKD, logit standardization, mdistiller's feature distillers).
"""
__version__ = "0.1.0"
