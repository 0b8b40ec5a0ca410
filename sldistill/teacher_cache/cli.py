"""``sldistill teacher-cache build | info | check``: the command-line side of the cache.

The adder :func:`add_teacher_cache_parser` has the shape of those in :mod:`sldistill.cli`
(registered there in ``SUBCOMMANDS``); each handler returns an exit code.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

__all__ = ["add_teacher_cache_parser", "cmd_teacher_cache_build", "cmd_teacher_cache_info",
           "cmd_teacher_cache_check"]


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cfg", required=True, metavar="FILE", help="the experiment YAML of the runs that will read it")
    p.add_argument("--base", default=None, metavar="NAME", help="which published codebase's defaults the file assumes")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (repeatable): distillers, models and datasets of your own")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="unpickle the teacher's weight file in full (only for files you trust)")
    p.add_argument("opts", nargs="*", metavar="KEY VALUE", help="config overrides (KEY VALUE pairs or KEY=VALUE)")


def _load(args: argparse.Namespace):
    from sldistill.cli import load_cli_plugins
    from sldistill.engine.config import load_config

    opts = list(args.opts or [])
    if args.trust_checkpoint:
        opts += ["DISTILLER.TRUST_CHECKPOINT", "true"]
    load_cli_plugins(args.plugin or [], opts)  # an import error names --plugin or the override
    return load_config(args.cfg, opts, base=args.base, plugins=list(args.plugin or []))


def add_teacher_cache_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``sldistill teacher-cache build --cfg FILE [--out PATH] [--batch-size N] [KEY VALUE ...]``,
    ``sldistill teacher-cache info PATH`` and ``sldistill teacher-cache check --cfg FILE [--cache PATH]``."""
    p = sub.add_parser(
        "teacher-cache", help="build or inspect an exact cache of the teacher's weak-view logits",
        description="The teacher's logits for every weak view (crop and flip) of every training image, computed "
                    "once into one memory-mapped file; runs with DISTILLER.TEACHER_CACHE: PATH read them instead "
                    "of running the teacher on the weak view. See docs/teacher_cache.md.")
    actions = p.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    b = actions.add_parser(
        "build", help="compute the cache of a config (resumes an interrupted build)",
        description="Run the config's teacher on every weak view of every training image (no grad, eval mode, "
                    "EXPERIMENT.DEVICE, SOLVER.AMP, SOLVER.CHANNELS_LAST) and store the float32 logits. Run it "
                    "again after an interruption to continue. Refuses datasets whose weak view is not finite.")
    _config_args(b)
    b.add_argument("--out", default=None, metavar="PATH",
                   help="the cache file (default <DISTILLER.TEACHER_ROOT>/cache/<teacher>_<dataset>_<hash>.tcache)")
    b.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="views per teacher forward at most (default 64 on the CPU, 4096 on CUDA)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar or lines")
    b.set_defaults(func=cmd_teacher_cache_build)
    i = actions.add_parser("info", help="print a cache file's header",
                           description="Print the state (complete or how far the build got), shape, size and "
                                       "header of a cache file.")
    i.add_argument("path", metavar="PATH")
    i.add_argument("--verify", action="store_true", help="also re-hash the logits against their recorded SHA-256")
    i.add_argument("--json", action="store_true", help="print the raw header as JSON")
    i.set_defaults(func=cmd_teacher_cache_info)
    c = actions.add_parser("check", help="say whether a cache fits a config",
                           description="Exit 0 if the cache (--cache PATH, else the config's DISTILLER.TEACHER_CACHE) "
                                       "is finished and built for this config, else print the first header field "
                                       "that differs and exit 2.")
    c.add_argument("--cache", default=None, metavar="PATH", help="the cache file (default DISTILLER.TEACHER_CACHE)")
    _config_args(c)
    c.set_defaults(func=cmd_teacher_cache_check)
    return p


def cmd_teacher_cache_build(args: argparse.Namespace) -> int:
    """Run ``sldistill teacher-cache build`` (one process: under torchrun the ranks would race
    for the one file, so several processes are refused)."""
    from .build import build_cache
    from .cache import open_cache

    world = os.environ.get("WORLD_SIZE", "1")
    if world.isdigit() and int(world) > 1:
        raise ValueError(f"teacher-cache build runs in one process, not under torchrun (WORLD_SIZE={world}): "
                         "build the cache once with `sldistill teacher-cache build ...`, then give it to the "
                         "multi-process run as DISTILLER.TEACHER_CACHE")
    cfg = _load(args)
    try:
        path = build_cache(cfg, args.out, batch_size=args.batch_size, progress=not args.no_progress)
    except RuntimeError as e:  # another process holds the file
        print(f"sldistill teacher-cache: {e}", file=sys.stderr)
        return 1
    print(f"{open_cache(path)!r}\nuse it with: DISTILLER.TEACHER_CACHE {path}")
    return 0


def cmd_teacher_cache_info(args: argparse.Namespace) -> int:
    """Run ``sldistill teacher-cache info``."""
    from .cache import cache_info
    from .fileformat import read_header

    if args.json:
        print(json.dumps(read_header(args.path)[0], indent=2))
    else:
        print(cache_info(args.path, verify=args.verify))
    return 0


def cmd_teacher_cache_check(args: argparse.Namespace) -> int:
    """Run ``sldistill teacher-cache check``: raises ``ValueError`` (exit 2) naming the mismatch."""
    from .cache import open_cache

    cfg = _load(args)
    path = args.cache or str(cfg.DISTILLER.TEACHER_CACHE or "")
    if not path:
        raise ValueError("name the cache: --cache PATH, or DISTILLER.TEACHER_CACHE in the config")
    cache = open_cache(path)
    cache.check(cfg)
    print(f"{cache!r} fits this config")
    return 0
