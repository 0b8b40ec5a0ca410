"""Where config files are: the shipped ``configs/`` folder, name resolution, listing."""
from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Sequence

__all__ = ["configs_root", "resolve_config_path", "list_configs", "format_config_list"]


def _close(word: str, options: Sequence[str], n: int = 3, cutoff: float = 0.6) -> list[str]:
    """Close matches of ``word`` among ``options`` (case-insensitive)."""
    lower: dict[str, str] = {}
    for o in options:
        lower.setdefault(o.lower(), o)
    return [lower[h] for h in difflib.get_close_matches(word.lower(), list(lower), n=n, cutoff=cutoff)]


def configs_root() -> Path:
    """The shipped ``configs/`` folder: ``$SLDISTILL_CONFIGS`` if set, else ``configs/`` beside
    the ``sldistill`` package directory (the repository root of a source checkout or editable
    install; a wheel does not carry it)."""
    env = os.environ.get("SLDISTILL_CONFIGS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "configs"


def _case_insensitive(path: Path) -> Path | None:
    """Find ``path`` matching each component case-insensitively (``SLD/`` for ``sld/``)."""
    parts = path.parts
    cur = Path(parts[0]) if path.is_absolute() else Path(".")
    rest = parts[1:] if path.is_absolute() else parts
    for part in rest:
        if part in (".", ".."):
            cur = cur / part
            continue
        if (cur / part).exists():
            cur = cur / part
            continue
        try:
            hits = [c for c in cur.iterdir() if c.name.lower() == part.lower()]
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return None
        if len(hits) != 1:
            return None
        cur = hits[0]
    return cur if cur.is_file() else None


#: the abbreviations of the published file names (SLD/MLKD releases) -> our model names
_SHORT_NAMES = {
    "res8x4": "resnet8x4", "res32x4": "resnet32x4", "res20": "resnet20", "res32": "resnet32",
    "res56": "resnet56", "res110": "resnet110", "res50": "ResNet50", "res34": "resnet34",
    "res18": "resnet18", "shuv1": "ShuffleV1", "shuv2": "ShuffleV2", "mv2": "MobileNetV2",
    "mv1": "mobilenetv1", "wrn40_2": "wrn_40_2", "r34": "resnet34", "r18": "resnet18",
    "r50": "resnet50",
}


def _expand_short_names(stem: str) -> str:
    """``res32x4_res8x4`` -> ``resnet32x4_resnet8x4``; ``wrn40_2_shuv1`` -> ``wrn_40_2_ShuffleV1``."""
    return re.sub(r"(?<![A-Za-z0-9])(" + "|".join(sorted(_SHORT_NAMES, key=len, reverse=True)) + r")(?![A-Za-z0-9])",
                  lambda m: _SHORT_NAMES[m.group(1)], stem)


def resolve_config_path(path: str | Path) -> Path:
    """Locate a config file given as a path or as a name relative to the shipped configs.

    Tries, in order: the path as given; the same path matching folder/file names
    case-insensitively (the SLD README writes ``configs/cifar100/SLD/...`` for ``sld/``); the
    path relative to :func:`configs_root` (with or without a leading ``configs/`` and the
    ``.yaml`` suffix). Otherwise raises ``FileNotFoundError`` naming the closest shipped files.
    """
    p = Path(path).expanduser()
    candidates = [p]
    root = configs_root()
    rel = Path(*p.parts[1:]) if p.parts and p.parts[0] == "configs" and len(p.parts) > 1 else p
    if not p.is_absolute():
        candidates += [root / rel]
    for c in list(candidates):
        if c.suffix not in (".yaml", ".yml"):
            candidates.append(c.with_name(c.name + ".yaml"))
    for c in candidates:
        if c.is_file():
            return c
    for c in candidates:
        hit = _case_insensitive(c)
        if hit is not None:
            return hit
    for c in candidates:  # the published releases' short file names (res32x4_res8x4.yaml)
        stem = _expand_short_names(c.stem)
        if stem != c.stem:
            hit = _case_insensitive(c.with_name(stem + c.suffix))
            if hit is not None:
                return hit
    shipped = [str(q.relative_to(root)) for q in list_configs(root)] if root.is_dir() else []
    hits = _close(str(rel), shipped, n=5, cutoff=0.5)
    msg = f"config file {str(path)!r} not found (also looked under {root})"
    if hits:
        msg += f"; closest shipped configs: {', '.join(hits)}"
    raise FileNotFoundError(msg)


def list_configs(root: str | Path | None = None) -> list[Path]:
    """Every ``*.yaml`` file under ``root`` (default :func:`configs_root`), sorted.

    Raises:
        FileNotFoundError: ``root`` is not a folder (e.g. a non-editable install; set
            ``$SLDISTILL_CONFIGS``).
    """
    folder = Path(root) if root is not None else configs_root()
    if not folder.is_dir():
        raise FileNotFoundError(f"configs folder {folder} not found; set $SLDISTILL_CONFIGS or use a source checkout")
    return sorted(p for p in folder.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def _group(rel: Path) -> tuple[str, str, str]:
    """(dataset, method, item) of a shipped path: ``<dataset>/<method>/<pair>.yaml`` or, for
    ImageNet, ``imagenet/<pair>/<method>.yaml``."""
    parts = rel.with_suffix("").parts
    if len(parts) >= 3 and parts[0] == "imagenet":
        return parts[0], parts[-1], "/".join(parts[1:-1])
    if len(parts) >= 3:
        return parts[0], "/".join(parts[1:-1]), parts[-1]
    if len(parts) == 2:
        return parts[0], parts[1], ""
    return "", parts[0], ""


def format_config_list(root: str | Path | None = None, paths: Sequence[Path] | None = None) -> str:
    """The text of ``sldistill configs``: shipped files grouped by dataset, then method."""
    folder = Path(root) if root is not None else configs_root()
    files = list(paths) if paths is not None else list_configs(folder)
    groups: dict[str, dict[str, list[str]]] = {}
    for p in files:
        rel = p.relative_to(folder) if p.is_absolute() and folder in p.parents else p
        dataset, method, item = _group(Path(rel))
        groups.setdefault(dataset, {}).setdefault(method, []).append(item)
    lines = [f"{len(files)} configs under {folder} (use e.g. `sldistill train <dataset>/<method>/<name>`):"]
    for dataset in sorted(groups):
        methods = groups[dataset]
        lines.append(f"{dataset or '.'}:")
        for method in sorted(methods):
            items = sorted(i for i in methods[method] if i)
            tail = f" ({len(items)}): {', '.join(items)}" if items else ""
            lines.append(f"  {method}{tail}")
    return "\n".join(lines)
