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

__all__ = ["main", "build_parser", "SUBCOMMANDS", "cmd_train", "cmd_eval", "cmd_configs", "cmd_methods",
           "cmd_sweep", "cmd_bench"]


def _add_config_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--cfg", required=required, metavar="FILE",
                   help="experiment YAML (ours under configs/, or a published one unchanged)")
    p.add_argument("--base", default=None, metavar="NAME",
                   help="which published codebase's defaults the file assumes (default: the file's BASE key, else sld)")
    _add_plugin_arg(p)
    p.add_argument("opts", nargs="*", metavar="KEY VALUE",
                   help="config overrides: KEY VALUE pairs (SOLVER.LR 0.1) or KEY=VALUE")


def _add_trust_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="unpickle weight files in full (they may run code; only for files you trust); the same "
                        "as DISTILLER.TRUST_CHECKPOINT true")


def _add_plugin_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (repeatable), so that the distillers, models and datasets it "
                        "registers can be used; also the config key EXPERIMENT.PLUGINS")


def _load_cfg(args: argparse.Namespace):
    from sldistill.engine.config import load_config

    opts = list(args.opts or [])
    if getattr(args, "trust_checkpoint", False):
        opts += ["DISTILLER.TRUST_CHECKPOINT", "true"]
    cfg_file = args.cfg
    if cfg_file is None and opts and _looks_like_config(opts[0]):
        cfg_file = opts.pop(0)  # `sldistill train cifar100/sld/resnet32x4_resnet8x4`
    return load_config(cfg_file, opts, base=args.base, plugins=list(args.plugin or []))


def _looks_like_config(item: str) -> bool:
    """A positional item that names a config file rather than an override key."""
    import re

    return bool(item) and (item.endswith((".yaml", ".yml")) or "/" in item) and \
        not re.match(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+(=|$)", item)


# ---------------------------------------------------------------------------- train
def add_train_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``sldistill train --cfg FILE [--resume] [KEY VALUE ...]``."""
    p = sub.add_parser("train", help="train a student as a config says (torchrun-aware)",
                       description="Train a student with the distiller, data and schedule of a config file "
                                   "(--cfg FILE, or the file as the first argument: `sldistill train "
                                   "cifar100/sld/resnet32x4_resnet8x4`); without one, the defaults.")
    _add_config_args(p, required=False)
    _add_trust_arg(p)
    p.add_argument("--resume", action="store_true", help="continue the run in the run folder (from its latest.pth)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a run that the run folder already holds (without it, such a folder is refused)")
    p.add_argument("--allow-config-change", action="store_true",
                   help="with --resume: continue even if the models, method, data or seed changed")
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

        result = train(cfg, resume=args.resume, overwrite=args.overwrite,
                       allow_config_change=args.allow_config_change, stop_flag=STOP, log_interval=args.log_interval)
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
    _add_trust_arg(p)
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
            raise FileNotFoundError(f"--run {run}: no config.yaml there (is it a run folder written by "
                                    "sldistill train?)")
        cfg = load_config(args.cfg or (run / "config.yaml"), list(args.opts or []), base=args.base,
                          plugins=list(args.plugin or []))
        model, ckpt = str(cfg.DISTILLER.STUDENT), run / f"{args.which}.pth"
    else:
        if not (args.model and args.ckpt):
            raise ValueError("sldistill eval needs --model NAME and --ckpt FILE (with --cfg FILE for the dataset), "
                             "or --run DIR")
        cfg = load_config(args.cfg, list(args.opts or []), base=args.base, plugins=list(args.plugin or []))
        model, ckpt = args.model, Path(args.ckpt)
    if args.trust_checkpoint:
        cfg.DISTILLER.TRUST_CHECKPOINT = True
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


# ---------------------------------------------------------------------------- methods
def add_methods_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``sldistill methods [--plugin MODULE] [--keys]``: the registered distillers."""
    p = sub.add_parser("methods", help="list the registered distillers (with --plugin: yours too)",
                       description="List every registered DISTILLER.TYPE: its views, the extra batch items it "
                                   "needs, its aliases and (with --keys) the config keys it declares.")
    _add_plugin_arg(p)
    p.add_argument("--keys", action="store_true", help="also list each method's config keys and defaults")
    p.set_defaults(func=cmd_methods)
    return p


def cmd_methods(args: argparse.Namespace) -> int:
    """Run ``sldistill methods``."""
    from sldistill.distillers.base import Unreleased, _owners
    from sldistill.engine.config import load_plugins

    load_plugins(list(args.plugin or []), "--plugin")
    for name, cls in _owners():
        if issubclass(cls, Unreleased):
            continue
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        extra = [f"views {cls.num_views}"]
        if cls.needs:
            extra.append("needs " + ", ".join(cls.needs))
        if cls.aliases:
            extra.append("aliases " + ", ".join(cls.aliases))
        print(f"{name:10s} {'; '.join(extra):40s} {doc}")
        if args.keys:
            for key, spec in cls.config.items():
                print(f"    {key} = {spec.default!r}: {spec.help}")
    return 0


def add_demo_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``sldistill demo [options]``: the Fashion-MNIST demo (sldistill.demo_cli)."""
    from sldistill import demo_cli

    return demo_cli.add_demo_parser(sub)


# ---------------------------------------------------------------------------- sweep
def add_sweep_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``sldistill sweep --cfg FILE [--cfg FILE ...] --seeds N [KEY VALUE ...]`` (sldistill.sweep)."""
    p = sub.add_parser(
        "sweep", help="run configs over several seeds; mean ± std table of best/last top-1",
        description="Train each --cfg with seeds first..first+N-1 and the same overrides (one budget for all), "
                    "then write <out>/summary.md and summary.csv: per method, mean ± sample std (N-1) of the "
                    "best-epoch and last-epoch test top-1, with the budget (epochs, views, augmentation, images, "
                    "batch) beside it, and accuracy.png. Runs go one after another (CPU / one GPU) or one per "
                    "device on several GPUs. Finished runs of the same config are reused (--rerun to redo).")
    p.add_argument("--cfg", action="append", required=True, metavar="FILE",
                   help="experiment YAML; repeat for several methods")
    p.add_argument("--seeds", type=int, default=3, metavar="N", help="number of seeds (default 3)")
    p.add_argument("--first-seed", type=int, default=0, metavar="S", help="first seed (default 0)")
    p.add_argument("--label", action="append", default=None, metavar="NAME",
                   help="method label per --cfg, in order (default EXPERIMENT.NAME or TAG)")
    p.add_argument("--out", default="runs/sweep", metavar="DIR", help="sweep folder (default runs/sweep)")
    p.add_argument("--devices", default="", metavar="LIST",
                   help="comma-separated devices to spread runs over (default: every CUDA device if several)")
    p.add_argument("--base", default=None, metavar="NAME", help="codebase defaults the files assume")
    p.add_argument("--rerun", action="store_true", help="train again even where a finished run exists")
    p.add_argument("--teacher-cache", default="auto", choices=("auto", "off"),
                   help="auto (default): build or reuse an exact teacher-logit cache for the runs that share a "
                        "teacher and data where it saves more than it costs (said at start); off: never")
    p.add_argument("--baseline", default=None, metavar="LABEL",
                   help="method label: report every other method's paired difference to it (per seed, 95%% CI)")
    p.add_argument("opts", nargs="*", metavar="KEY VALUE", help="overrides applied to every run")
    p.set_defaults(func=cmd_sweep)
    return p


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run ``sldistill sweep``."""
    import shlex

    from sldistill.sweep import run_sweep

    devices = [d.strip() for d in args.devices.split(",") if d.strip()] or None
    command = "sldistill " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["sweep"] else ""
    res = run_sweep(args.cfg, args.seeds, list(args.opts or []), out=args.out, base=args.base,
                    first_seed=args.first_seed, labels=args.label, devices=devices, rerun=args.rerun,
                    command=command, baseline=args.baseline, teacher_cache=args.teacher_cache)
    print(res.table)
    print("std: sample standard deviation (N - 1) over seeds; written: "
          + ", ".join(str(p) for p in res.files.values()))
    return 0


#: subcommand adders, in help order; each registers a parser whose ``func`` handles it
# ---------------------------------------------------------------------------- bench
def add_bench_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``sldistill bench [--only ...] [--out FILE]``: every benchmark's ratio table."""
    p = sub.add_parser("bench", help="run the benchmarks (losses, models, data, training step) and print ratio tables",
                       description="Run benchmarks/run_all.py of the source checkout: each benchmark compares "
                                   "ours with a plain implementation of the same work in the same run.")
    p.add_argument("--only", default=None, metavar="NAMES",
                   help="comma-separated subset of: losses, models, data, train_step, teacher_cache")
    p.add_argument("--out", default=None, metavar="FILE", help="also write the outputs to a markdown file")
    p.set_defaults(func=cmd_bench)
    return p


def cmd_bench(args: argparse.Namespace) -> int:
    """Run ``sldistill bench``: the benchmarks live beside the package in a source checkout."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    if not (root / "benchmarks" / "run_all.py").is_file():
        raise FileNotFoundError(f"benchmarks/run_all.py not found under {root}: `sldistill bench` needs a source "
                                "checkout of sldistill (the benchmarks are not part of the installed package)")
    cmd = [sys.executable, "-m", "benchmarks.run_all"]
    if args.only:
        cmd += ["--only", args.only]
    if args.out:
        cmd += ["--out", str(Path(args.out).resolve())]
    return subprocess.run(cmd, cwd=root).returncode


def add_teachers_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``sldistill teachers list | download | verify`` (sldistill.zoo_cli)."""
    from sldistill import zoo_cli

    return zoo_cli.add_teachers_parser(sub)


def add_report_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``sldistill report RUN_DIRS...`` (sldistill.zoo_cli)."""
    from sldistill import zoo_cli

    return zoo_cli.add_report_parser(sub)


def add_teacher_cache_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``sldistill teacher-cache build | info | check`` (sldistill.teacher_cache)."""
    from sldistill.teacher_cache import add_teacher_cache_parser as add

    return add(sub)


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], argparse.ArgumentParser]] = [
    add_train_parser,
    add_eval_parser,
    add_configs_parser,
    add_methods_parser,
    add_demo_parser,
    add_sweep_parser,
    add_report_parser,
    add_teachers_parser,
    add_teacher_cache_parser,
    add_bench_parser,
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
    # under torchrun every rank fails alike: rank 0 alone says why
    say = (lambda msg: print(msg, file=sys.stderr)) if os.environ.get("RANK", "0") == "0" else (lambda msg: None)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        if os.environ.get("SLDISTILL_DEBUG"):
            raise
        say(f"sldistill {args.command}: config error: {exc}")
        return 2
    except NonFiniteLossError as exc:
        say(f"sldistill {args.command}: {exc}")
        return 3
    except (ValueError, FileNotFoundError) as exc:
        if os.environ.get("SLDISTILL_DEBUG"):
            raise
        say(f"sldistill {args.command}: error: {exc}")
        return 2
    except OSError as exc:  # read-only folder, disk full, ...: one line naming the path and the cause
        if os.environ.get("SLDISTILL_DEBUG"):
            raise
        where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        say(f"sldistill {args.command}: cannot use{where}: {exc.strerror or exc} (files written before are "
            "intact: checkpoints are replaced atomically)")
        return 2
    except KeyboardInterrupt:
        print(f"sldistill {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
