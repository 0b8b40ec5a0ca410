"""The ``sldistill`` command line: ``train``, ``eval``, ``configs``.

Examples::

    sldistill train --cfg configs/cifar100/sld/res32x4_res8x4.yaml
    sldistill train --cfg ../shared/seed_configs/sld/cifar100/sld/res32x4_res8x4.yaml SOLVER.EPOCHS 10
    torchrun --nproc_per_node=8 -m sldistill train --cfg configs/imagenet/r34_r18/sld.yaml
    sldistill train --cfg ... --resume          # continue from <run dir>/latest.pth
    sldistill eval --model resnet8x4 --ckpt output/.../best.pth --cfg configs/cifar100/sld/res32x4_res8x4.yaml
    sldistill eval --run output/sld_cifar100_baselines/sld,res32x4,res8x4
    sldistill configs

Each subcommand is one ``add_<name>_parser(subparsers)`` function that registers its
arguments and sets ``func`` to a ``cmd_<name>(args) -> int`` handler; :data:`SUBCOMMANDS`
lists the adders, so a new subcommand is one more pair of functions and one entry there.

Set ``SLDISTILL_DEBUG=1`` to get tracebacks instead of one-line errors.

Exit codes: 0 success; 2 bad configuration or arguments (message on stderr, no traceback);
3 a non-finite loss stopped training; 130 / 143 stopped by SIGINT / SIGTERM after saving
a checkpoint.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Callable, Sequence

__all__ = ["main", "build_parser", "SUBCOMMANDS", "cmd_train", "cmd_eval", "cmd_configs"]


def _add_config_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--cfg", required=required, metavar="FILE",
                   help="experiment YAML (ours under configs/, or a published one unchanged)")
    p.add_argument("--base", default=None, metavar="NAME",
                   help="which published codebase's defaults the file assumes (default: the file's BASE key, else sld)")
    p.add_argument("opts", nargs="*", metavar="KEY VALUE",
                   help="config overrides: KEY VALUE pairs (SOLVER.LR 0.1) or KEY=VALUE")


def _load_cfg(args: argparse.Namespace):
    from sldistill.engine.config import load_config

    return load_config(args.cfg, list(args.opts or []), base=args.base)


# ---------------------------------------------------------------------------- train
def add_train_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``sldistill train --cfg FILE [--resume] [KEY VALUE ...]``."""
    p = sub.add_parser("train", help="train a student as a config says (torchrun-aware)",
                       description="Train a student with the distiller, data and schedule of a config file.")
    _add_config_args(p, required=True)
    p.add_argument("--resume", action="store_true", help="continue from <run dir>/latest.pth")
    p.add_argument("--logit-stand", action="store_true",
                   help="logit standardization as the logit-standardization release's flag (z-score logits, "
                        "KD temperature --base-temp, KD weight --kd-weight)")
    p.add_argument("--base-temp", type=float, default=2.0, help="with --logit-stand: KD temperature (default 2)")
    p.add_argument("--kd-weight", type=float, default=9.0, help="with --logit-stand: KD weight (default 9)")
    p.add_argument("--log-interval", type=int, default=20, metavar="N",
                   help="iterations between progress updates / non-finite checks (default 20)")
    p.set_defaults(func=cmd_train)
    return p


def cmd_train(args: argparse.Namespace) -> int:
    """Run ``sldistill train``."""
    from sldistill.engine.trainer import STOP, install_signal_handlers

    STOP.clear()
    restore = install_signal_handlers(STOP)
    try:
        cfg = _load_cfg(args)
        if args.logit_stand:
            from sldistill.engine.config import apply_logit_stand, validate_config

            cfg = apply_logit_stand(cfg, base_temp=args.base_temp, kd_weight=args.kd_weight)
            validate_config(cfg, "<command line>")
        from sldistill.engine.run import train

        result = train(cfg, resume=args.resume, stop_flag=STOP, log_interval=args.log_interval)
    finally:
        restore()
    if result.status == "interrupted":
        return 128 + (STOP.signum or signal.SIGINT)
    return 0


# ---------------------------------------------------------------------------- eval
def add_eval_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``sldistill eval --model NAME --ckpt FILE [--cfg FILE]`` or ``sldistill eval --run DIR``."""
    p = sub.add_parser("eval", help="top-1/top-5/loss of a checkpoint on a config's validation set",
                       description="Evaluate a model checkpoint (a published teacher, a student, or a run folder's "
                                   "best/latest checkpoint) on the validation set of a config.")
    _add_config_args(p, required=False)
    p.add_argument("--model", metavar="NAME", help="architecture name (e.g. resnet8x4, ResNet18, torchvision:NAME)")
    p.add_argument("--ckpt", metavar="FILE", help="weights: published format, raw state dict or a run checkpoint")
    p.add_argument("--run", metavar="DIR", help="a run folder: uses its config.yaml, student and checkpoint")
    p.add_argument("--which", default="best", choices=("best", "latest"), help="with --run: which checkpoint")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=cmd_eval)
    return p


def cmd_eval(args: argparse.Namespace) -> int:
    """Run ``sldistill eval``."""
    from sldistill.engine.config import load_config
    from sldistill.engine.run import evaluate_checkpoint

    if args.run:
        if args.model or args.ckpt:
            raise ValueError("give either --run DIR, or --model NAME with --ckpt FILE, not both")
        run = Path(args.run)
        if not (run / "config.yaml").is_file():
            raise FileNotFoundError(f"--run {run}: no config.yaml there (is it a run folder written by sldistill train?)")
        cfg = load_config(args.cfg or (run / "config.yaml"), list(args.opts or []), base=args.base)
        model, ckpt = str(cfg.DISTILLER.STUDENT), run / f"{args.which}.pth"
    else:
        if not (args.model and args.ckpt):
            raise ValueError("sldistill eval needs --model NAME and --ckpt FILE (with --cfg FILE for the dataset), "
                             "or --run DIR")
        cfg = load_config(args.cfg, list(args.opts or []), base=args.base)
        model, ckpt = args.model, Path(args.ckpt)
    res = evaluate_checkpoint(cfg, model, ckpt)
    if args.json:
        print(json.dumps({"model": model, "ckpt": str(ckpt), **res}))
    else:
        print(f"{model} {ckpt}: top-1 {res['top1']:.2f}  top-5 {res['top5']:.2f}  loss {res['loss']:.4f}")
    return 0


# ---------------------------------------------------------------------------- configs
def add_configs_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``sldistill configs [--root DIR]``."""
    p = sub.add_parser("configs", help="list the shipped experiment configs",
                       description="List the experiment YAML files shipped in configs/.")
    p.add_argument("--root", default=None, metavar="DIR", help="another folder of configs to list")
    p.set_defaults(func=cmd_configs)
    return p


def cmd_configs(args: argparse.Namespace) -> int:
    """Run ``sldistill configs``."""
    from sldistill.engine.config import format_config_list

    print(format_config_list(args.root))
    return 0


#: subcommand adders, in help order; each registers a parser whose ``func`` handles it
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], argparse.ArgumentParser]] = [
    add_train_parser,
    add_eval_parser,
    add_configs_parser,
]


def build_parser() -> argparse.ArgumentParser:
    """The ``sldistill`` argument parser with every subcommand in :data:`SUBCOMMANDS`."""
    from sldistill import __version__

    parser = argparse.ArgumentParser(prog="sldistill", description="Knowledge distillation for image classifiers "
                                     "(SLD, sorting, KD/DKD/MLKD, feature distillers).")
    parser.add_argument("--version", action="version", version=f"sldistill {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sldistill`` console script and ``python -m sldistill``."""
    from sldistill.engine.config import ConfigError
    from sldistill.engine.trainer import NonFiniteLossError

    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        if os.environ.get("SLDISTILL_DEBUG"):
            raise
        print(f"sldistill {args.command}: config error: {exc}", file=sys.stderr)
        return 2
    except NonFiniteLossError as exc:
        print(f"sldistill {args.command}: {exc}", file=sys.stderr)
        return 3
    except (ValueError, FileNotFoundError) as exc:
        if os.environ.get("SLDISTILL_DEBUG"):
            raise
        print(f"sldistill {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sldistill {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
