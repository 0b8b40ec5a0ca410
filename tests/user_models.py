"""A user's own model factory for the `package.module:callable` model form (used by tests)."""
from torch import nn


def ten_class_net(num_classes: int = 10) -> nn.Module:
    """Ignores ``num_classes`` on purpose: always 10 outputs (a classifier/dataset mismatch)."""
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
