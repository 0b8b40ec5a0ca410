"""An exact teacher-logit cache: every weak view of every training image, computed once.

The weak view of the CIFAR-style recipes (random crop of 32 from the image padded by 4, and
a horizontal flip) has exactly ``9 * 9 * 2 = 162`` outcomes per image, and the teacher is
frozen in eval mode. So its logits for all of them are computed once, into one memory-mapped
file, and every run with that teacher and data (any seed, any logit method) reads them,
with the values the live teacher gives (float32 rounding aside). The loaders give each weak
view's id (``batch["view_id"]``, see :class:`sldistill.data.transforms.CropFlipGrid`);
``(batch["index"], batch["view_id"])`` names the row.

API:

* :func:`expected_header` ``(cfg) -> dict``: what a cache for ``cfg`` records;
* :func:`build_cache` ``(cfg, path=None, *, batch_size=None, progress=True) -> Path``:
  build (or finish an interrupted build of) the cache;
* :func:`open_cache` ``(path) -> TeacherCache``: a finished cache, mapped read-only;
  :meth:`TeacherCache.check` ``(cfg)`` refuses a cache of another configuration, naming the
  first field; :meth:`TeacherCache.lookup` ``(index, view_id) -> float32 [B, C]``;
* :func:`cache_info` ``(path) -> str``; :func:`default_cache_path` ``(cfg) -> Path``;
* :func:`teacher_cache_cost`, :func:`plan_teacher_caches`, :func:`cache_problem`: whether
  building pays (for ``sweep``);
* :func:`add_teacher_cache_parser`: ``sldistill teacher-cache build | info | check``.

Modules: :mod:`.fileformat` (the file layout), :mod:`.header` (what a cache depends on),
:mod:`.cache` (reading), :mod:`.build`, :mod:`.cost`, :mod:`.cli`. Reading a cache imports
nothing of :mod:`sldistill.engine`; building uses the engine's device and precision helpers
(imported when called), and the command line its ``load_config``.
"""
from .build import build_cache
from .cache import TeacherCache, cache_info, data_sha256, open_cache
from .cli import add_teacher_cache_parser, cmd_teacher_cache_build, cmd_teacher_cache_check, cmd_teacher_cache_info
from .cost import CacheCost, CachePlan, CachePlanning, cache_problem, plan_teacher_caches, teacher_cache_cost
from .fileformat import DATA_OFFSET, FORMAT_VERSION, CacheFileError, read_header
from .header import (
    DEPENDS_FIELDS,
    NotCacheableError,
    cache_key,
    dataset_fingerprint,
    default_cache_path,
    expected_header,
    first_mismatch,
    teacher_weights,
    weak_transform_problem,
)

__all__ = [
    "expected_header", "build_cache", "open_cache", "TeacherCache", "cache_info", "default_cache_path", "cache_key",
    "first_mismatch", "DEPENDS_FIELDS", "NotCacheableError", "CacheFileError", "read_header", "FORMAT_VERSION",
    "DATA_OFFSET", "data_sha256", "dataset_fingerprint", "teacher_weights", "weak_transform_problem",
    "teacher_cache_cost", "plan_teacher_caches", "cache_problem", "CacheCost", "CachePlan", "CachePlanning",
    "add_teacher_cache_parser", "cmd_teacher_cache_build", "cmd_teacher_cache_info", "cmd_teacher_cache_check",
]
