"""Published teachers and the config entry points ``build_teacher`` / ``build_student``.

The published CIFAR-100 teachers come in ``cifar_teachers.tar`` (mdistiller GitHub release
"checkpoints"); extracted under the teacher root (default ``./download_ckpts``) they lie at
``cifar_teachers/<name>_vanilla/ckpt_epoch_240.pth``. The root is ``DISTILLER.TEACHER_ROOT``
or ``$SLDISTILL_TEACHER_ROOT``; ``DISTILLER.TEACHER_CKPT`` names a file directly. ImageNet
teachers of the zoo use torchvision's ImageNet-1k weights unless a file is given.

:func:`download_teachers` fetches and unpacks the archive (``sldistill teachers download``):
into a temporary file renamed only when complete, its size checked against the server's
``Content-Length`` and its SHA-256 against a given hash, every member checked to stay inside
the target before anything is unpacked (:mod:`sldistill.models.archive`). The published
archive's SHA-256 is not recorded here (:data:`TEACHER_ARCHIVE_SHA256` is ``None``): without
``sha256=`` only the size is checked.
Each download writes :data:`DOWNLOAD_RECORD` under the root (the URL, the archive's size and
SHA-256, and each unpacked file's SHA-256), so the archive can be pinned later and
``sldistill teachers verify`` can tell a file changed since it was unpacked.

This module reads the config object it is handed; it does not import ``sldistill.engine``.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from torch import nn

from sldistill._cfg import cfg_value
from sldistill.published import teacher_top1

from .archive import ArchiveError, check_members, extract_archive, fetch, file_sha256
from .checkpoint import extract_state_dict, load_state_dict_checked, load_weights, read_checkpoint
from .imagenet import TORCHVISION_WEIGHTS
from .registry import create, family_of, resolve_name

__all__ = [
    "PublishedTeacher",
    "CIFAR_TEACHERS",
    "TEACHER_RELEASE_URL",
    "TEACHER_ARCHIVE_URL",
    "TEACHER_ARCHIVE_SHA256",
    "DEFAULT_TEACHER_ROOT",
    "ArchiveError",
    "fetch",
    "check_members",
    "extract_archive",
    "download_teachers",
    "DOWNLOAD_RECORD",
    "read_download_record",
    "recorded_sha256",
    "file_sha256",
    "teacher_root",
    "teacher_checkpoint_path",
    "build_teacher",
    "build_student",
]

TEACHER_RELEASE_URL = "https://github.com/megvii-research/mdistiller/releases/tag/checkpoints"
#: the archive itself (an asset of that release)
TEACHER_ARCHIVE_URL = "https://github.com/megvii-research/mdistiller/releases/download/checkpoints/cifar_teachers.tar"
#: SHA-256 of the published archive: not known to this package (pass ``sha256=`` to pin one)
TEACHER_ARCHIVE_SHA256: str | None = None
DEFAULT_TEACHER_ROOT = "./download_ckpts"
#: written under the teacher root by :func:`download_teachers`: what was fetched, with hashes
DOWNLOAD_RECORD = "cifar_teachers.download.json"
ENV_TEACHER_ROOT = "SLDISTILL_TEACHER_ROOT"


@dataclass(frozen=True)
class PublishedTeacher:
    """One published CIFAR-100 teacher checkpoint.

    Attributes:
        name: the zoo name (``DISTILLER.TEACHER``).
        relpath: path below the teacher root.
        top1: published CIFAR-100 top-1 accuracy (%).
        sha256: SHA-256 of the file where known, else ``None`` (not checked).
    """

    name: str
    relpath: str
    top1: float
    sha256: str | None = None


def _published(name: str, sha256: str | None = None) -> PublishedTeacher:
    top1 = teacher_top1(name)
    assert top1 is not None, name
    return PublishedTeacher(name, f"cifar_teachers/{name}_vanilla/ckpt_epoch_240.pth", top1, sha256)


#: the teachers in ``cifar_teachers.tar`` with their published CIFAR-100 top-1 (sldistill.published)
CIFAR_TEACHERS: dict[str, PublishedTeacher] = {
    t.name: t for t in (_published(n) for n in ("resnet56", "resnet110", "resnet32x4", "wrn_40_2", "vgg13",
                                                  "ResNet50"))
}


def teacher_root(cfg: Any = None) -> Path:
    """The teacher root: an explicit ``DISTILLER.TEACHER_ROOT`` (other than the default),
    else ``$SLDISTILL_TEACHER_ROOT``, else ``./download_ckpts``."""
    configured = str(cfg_value(cfg, "DISTILLER.TEACHER_ROOT") or "") if cfg is not None else ""
    env = os.environ.get(ENV_TEACHER_ROOT, "")
    if configured and configured != DEFAULT_TEACHER_ROOT:
        return Path(configured).expanduser()
    if env:
        return Path(env).expanduser()
    return Path(configured or DEFAULT_TEACHER_ROOT).expanduser()


def teacher_checkpoint_path(name: str, root: str | os.PathLike | None = None) -> Path:
    """Where the published teacher ``name`` is expected below ``root``.

    Also accepts a root that points at the extracted ``cifar_teachers`` folder itself.

    Raises:
        ValueError: ``name`` is not a published CIFAR teacher (lists those that are).
        FileNotFoundError: the file is not there; the message says where it is expected and
            where it comes from.
    """
    if name not in CIFAR_TEACHERS:
        raise ValueError(
            f"no published CIFAR-100 checkpoint for teacher {name!r}; published teachers: "
            f"{', '.join(CIFAR_TEACHERS)}. Set DISTILLER.TEACHER_CKPT to your own checkpoint file."
        )
    base = Path(root) if root is not None else teacher_root()
    entry = CIFAR_TEACHERS[name]
    path = base / entry.relpath
    if path.is_file():
        return path
    alt = base / Path(entry.relpath).relative_to("cifar_teachers")
    if alt.is_file():
        return alt
    raise FileNotFoundError(
        f"published teacher {name!r} not found: expected {path}. Download cifar_teachers.tar from "
        f"{TEACHER_RELEASE_URL} and extract it under {base} (tar xf cifar_teachers.tar -C {base}), or set "
        f"DISTILLER.TEACHER_ROOT / ${ENV_TEACHER_ROOT} to the folder holding cifar_teachers/, "
        "or DISTILLER.TEACHER_CKPT to the file."
    )


def download_teachers(root: str | os.PathLike | None = None, *, url: str = TEACHER_ARCHIVE_URL,
                      sha256: str | None = TEACHER_ARCHIVE_SHA256, progress: bool = True,
                      keep_archive: bool = False) -> list[Path]:
    """Fetch ``cifar_teachers.tar`` (:func:`fetch`) and unpack it under ``root`` (default
    :func:`teacher_root`) with :func:`extract_archive`; return the files written. The archive is
    kept as ``root/cifar_teachers.tar`` with ``keep_archive``, else removed. ``root/``
    :data:`DOWNLOAD_RECORD` records the URL, the archive's size and SHA-256 and every unpacked
    file's SHA-256 (path relative to ``root``)."""
    base = Path(root) if root is not None else teacher_root()
    tmp = fetch(url, base, sha256=sha256, progress=progress)
    try:
        record = {"url": url, "archive_bytes": tmp.stat().st_size, "archive_sha256": file_sha256(tmp),
                  "downloaded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        files = extract_archive(tmp, base)
        record["files"] = {f.relative_to(base).as_posix(): file_sha256(f) for f in files if f.is_file()}
        if keep_archive:
            os.replace(tmp, base / (os.path.basename(urlparse(url).path) or "cifar_teachers.tar"))
    finally:
        tmp.unlink(missing_ok=True)
    staged = base / (DOWNLOAD_RECORD + ".tmp")
    staged.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    os.replace(staged, base / DOWNLOAD_RECORD)
    return files


def read_download_record(root: str | os.PathLike) -> dict[str, Any] | None:
    """The :data:`DOWNLOAD_RECORD` under ``root`` (see :func:`download_teachers`), or ``None``
    when there is none (the files were unpacked by hand). An unreadable record is an error."""
    path = Path(root) / DOWNLOAD_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        if not isinstance(record.get("files"), dict):
            raise ValueError("no 'files' table")
    except (ValueError, AttributeError) as exc:
        raise ValueError(f"{path}: not a download record ({exc}); remove it or download again") from exc
    return record


def recorded_sha256(path: Path, root: Path, record: dict[str, Any] | None) -> str | None:
    """The SHA-256 that ``record`` holds for ``path`` (a file below ``root``), else ``None``."""
    if record is None:
        return None
    try:
        rel = path.resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return None
    value = record["files"].get(rel)
    return str(value) if value else None


def _torchvision_pretrained(model: nn.Module, weights_name: str, download: bool, what: str) -> None:
    """Load torchvision ImageNet weights (``"ResNet50_Weights.IMAGENET1K_V1"``) into ``model``
    strictly: from the torch hub cache, else downloaded when allowed."""
    import torch.hub
    import torchvision

    weights = torchvision.models.get_weight(weights_name)
    filename = os.path.basename(urlparse(weights.url).path)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not cached.is_file():
        if not download:
            raise FileNotFoundError(
                f"{what}: torchvision's ImageNet weights {weights_name} are not in the torch hub cache "
                f"(expected {cached}) and downloading is off. Download {weights.url} to that path, "
                "or set DISTILLER.TEACHER_CKPT to a weight file."
            )
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)  # a fresh machine has no hub checkpoints/ folder
            torch.hub.download_url_to_file(weights.url, str(cached), progress=True)
        except Exception as e:  # no network, HTTP error, disk full, ...
            raise FileNotFoundError(
                f"{what}: could not download torchvision's ImageNet weights {weights.url} ({e}). Put the "
                f"file at {cached}, or set DISTILLER.TEACHER_CKPT to a weight file."
            ) from e
    sd = extract_state_dict(read_checkpoint(cached), str(cached))
    load_state_dict_checked(model, sd, strict=True, source=str(cached))


def build_teacher(cfg: Any, num_classes: int, *, download: bool | None = None) -> nn.Module:
    """The teacher named by the config, with its weights loaded strictly, in eval mode.

    Reads ``DISTILLER.TEACHER``, ``DATASET.TYPE``, ``DISTILLER.TEACHER_CKPT`` and
    ``DISTILLER.TEACHER_ROOT`` / ``$SLDISTILL_TEACHER_ROOT``. Weights come from
    ``TEACHER_CKPT`` when set; otherwise, for the CIFAR family, from the published teacher
    table (CIFAR-100, 100 classes); for ImageNet zoo ResNets and ``torchvision:NAME``, from
    torchvision's ImageNet weights (hub cache, or downloaded unless ``download=False``;
    default: ``DATASET.DOWNLOAD``, else True).

    Raises:
        ValueError: unknown name, or no published weights for this name/dataset.
        FileNotFoundError: the weight file is missing (the message says where it is expected).
        CheckpointError / WeightsMismatchError: the file is unreadable or does not fit.
    """
    name = str(cfg_value(cfg, "DISTILLER.TEACHER"))
    dataset = str(cfg_value(cfg, "DATASET.TYPE"))
    ckpt = str(cfg_value(cfg, "DISTILLER.TEACHER_CKPT") or "")
    if download is None:
        download = bool(cfg_value(cfg, "DATASET.DOWNLOAD"))
    if not name:
        raise ValueError("DISTILLER.TEACHER is empty: name a teacher model")
    model = create(name, num_classes, dataset)
    trust = bool(cfg_value(cfg, "DISTILLER.TRUST_CHECKPOINT"))
    if ckpt:
        load_weights(model, ckpt, strict=True, trust=trust)
    elif family_of(dataset) == "imagenet":
        _load_imagenet_pretrained(model, name, dataset, num_classes, download)
    else:
        if dataset != "cifar100" or num_classes != 100:
            raise ValueError(
                f"teacher {name!r} on dataset {dataset!r} with {num_classes} classes: the published teachers are "
                "CIFAR-100 models; set DISTILLER.TEACHER_CKPT to a teacher trained on this dataset"
            )
        path = teacher_checkpoint_path(name, teacher_root(cfg))
        expected = CIFAR_TEACHERS[name].sha256
        if expected is not None and file_sha256(path) != expected:
            raise ValueError(
                f"{path}: SHA-256 differs from the published {expected}; re-download it from {TEACHER_RELEASE_URL}"
            )
        load_weights(model, path, strict=True, trust=trust)
    return model.eval()


def _load_imagenet_pretrained(model: nn.Module, name: str, dataset: str, num_classes: int, download: bool) -> None:
    what = f"teacher {name!r}"
    if num_classes != 1000:
        raise ValueError(
            f"{what}: pretrained ImageNet weights have 1000 classes, the dataset has {num_classes}; "
            "set DISTILLER.TEACHER_CKPT"
        )
    if name.startswith("torchvision:"):
        import torchvision

        tv_name = name.split(":", 1)[1]
        weights = torchvision.models.get_model_weights(tv_name).DEFAULT
        _torchvision_pretrained(model, str(weights), download, what)
        return
    if name.startswith("timm:"):
        raise ValueError(f"{what}: load timm weights with DISTILLER.TEACHER_CKPT (a file saved from the timm model)")
    resolved = resolve_name(name, dataset, notice=False) if ":" not in name else name
    if resolved not in TORCHVISION_WEIGHTS:
        raise ValueError(
            f"{what}: no pretrained ImageNet weights are known for {resolved!r} (known: "
            f"{', '.join(TORCHVISION_WEIGHTS)}); set DISTILLER.TEACHER_CKPT to a weight file"
        )
    _torchvision_pretrained(model, TORCHVISION_WEIGHTS[resolved], download, what)


def build_student(cfg: Any, num_classes: int) -> nn.Module:
    """The student named by ``DISTILLER.STUDENT`` for ``DATASET.TYPE``, with the optional
    initial weights of ``DISTILLER.STUDENT_CKPT`` (loaded strictly), in train mode."""
    name = str(cfg_value(cfg, "DISTILLER.STUDENT"))
    if not name:
        raise ValueError("DISTILLER.STUDENT is empty: name a student model")
    model = create(name, num_classes, str(cfg_value(cfg, "DATASET.TYPE")))
    ckpt = str(cfg_value(cfg, "DISTILLER.STUDENT_CKPT") or "")
    if ckpt:
        load_weights(model, ckpt, strict=True, trust=bool(cfg_value(cfg, "DISTILLER.TRUST_CHECKPOINT")))
    return model.train()
