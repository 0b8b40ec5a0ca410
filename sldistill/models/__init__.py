"""Models: the CIFAR and ImageNet zoos under the published names, wrappers, weight loading.

- :func:`create` ``(name, num_classes=100, dataset="cifar100")``: a model whose forward returns
  ``(logits, {"feats", "preact_feats", "pooled_feat"})``;
- :func:`load_weights` ``(model, path, strict=True)``: published / raw / prefixed / run
  checkpoints, ``weights_only`` loading;
- :func:`build_teacher` / :func:`build_student` ``(cfg, num_classes)``: the config entry points;
- :data:`CIFAR_TEACHERS`: the published CIFAR-100 teachers (path, top-1, SHA-256).
"""
from __future__ import annotations

from .checkpoint import CheckpointError, LoadReport, WeightsMismatchError, load_state_dict_checked, load_weights
from .common import ZooModel
from .registry import available_models, create, family_of, register_model, resolve_name
from .teachers import (
    CIFAR_TEACHERS,
    TEACHER_RELEASE_URL,
    PublishedTeacher,
    build_student,
    build_teacher,
    teacher_checkpoint_path,
    teacher_root,
)
from .wrappers import WrappedModel

__all__ = [
    "create",
    "register_model",
    "load_weights",
    "load_state_dict_checked",
    "build_teacher",
    "build_student",
    "available_models",
    "family_of",
    "resolve_name",
    "CIFAR_TEACHERS",
    "TEACHER_RELEASE_URL",
    "PublishedTeacher",
    "teacher_root",
    "teacher_checkpoint_path",
    "CheckpointError",
    "WeightsMismatchError",
    "LoadReport",
    "WrappedModel",
    "ZooModel",
]
