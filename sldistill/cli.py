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

Every subcommand that takes ``KEY VALUE`` overrides accepts them before, between and after its
options (``sldistill train --cfg X.yaml DATASET.ROOT d --resume SOLVER.EPOCHS 10``).
``docs/cli.md`` lists every subcommand's options; it is generated from these parsers by
:mod:`sldistill.cli_docs` (``python -m sldistill.engine.config.reference --write`` rewrites it
with the other generated pages).

Set ``SLDISTILL_DEBUG=1`` to get tracebacks instead of one-line errors.

Exit codes: 0 success; 2 bad configuration or arguments (message on stderr, no traceback);
3 a non-finite loss stopped training; 130 / 143 stopped by SIGINT / SIGTERM after saving
a checkpoint; 141 the reader of stdout went away (``sldistill methods | head -3``: the
output stops quietly, as for a program ended by SIGPIPE).
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
           "cmd_sweep", "cmd_bench", "SubcommandParser", "EXIT_BROKEN_PIPE"]

#: exit status when stdout is closed by its reader (128 + SIGPIPE, what a shell reports for such a program)
EXIT_BROKEN_PIPE = 141


class SubcommandParser(argparse.ArgumentParser):
    """The parser of each subcommand: positionals (``KEY VALUE`` overrides) may come before,
    between and after options (argparse's intermixed parsing), and an argument it does not know
    is an error printed with this subcommand's usage (not the top-level one)."""

    _inner = False

    def parse_known_args(self, args=None, namespace=None):
        if self._inner:  # the two passes of parse_known_intermixed_args
            return super().parse_known_args(args, namespace)
        intermixed = not any(a.nargs in (argparse.PARSER, argparse.REMAINDER) for a in self._get_positional_actions())
        self._inner = True
        try:
            if intermixed:
                namespace, extras = self.parse_known_intermixed_args(args, namespace)
            else:  # a parser of sub-subcommands (teachers, teacher-cache): those parse intermixed
                namespace, extras = super().parse_known_args(args, namespace)
        finally:
            self._inner = False
        if extras:  # name the unknown options alone when there are some (not the overrides that follow them)
            self.error("unrecognized arguments: " + " ".join([e for e in extras if e.startswith("--")] or extras))
        return namespace, []


def _positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (valid: 1, 2, 3, ...), got {value}")
    return value


def _warn(args: argparse.Namespace, message: str) -> None:
    """One warning line on stderr (rank 0 only under torchrun)."""
    if os.environ.get("RANK", "0") == "0":
        print(f"sldistill {args.command}: warning: {message}", file=sys.stderr)


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


def load_cli_plugins(plugins: Sequence[str], opts: Sequence[str]) -> None:
    """Import the ``--plugin`` modules, then those an ``EXPERIMENT.PLUGINS`` override names, before
    the config is read, so that an import error names where the module name came from (the option,
    the command line; the file's own ``EXPERIMENT.PLUGINS`` are blamed on the file by load_config)."""
    from sldistill.engine.config import load_plugins
    from sldistill.engine.config.load import _plugins_named

    load_plugins(list(plugins), "--plugin")
    load_plugins(_plugins_named({}, list(opts)), "<command line>")


def _cfg_opts(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """The config file and the overrides of ``args`` (the file may be the first positional)."""
    opts = list(args.opts or [])
    if getattr(args, "trust_checkpoint", False):
        opts += ["DISTILLER.TRUST_CHECKPOINT", "true"]
    cfg_file = args.cfg
    if cfg_file is None and opts and _looks_like_config(opts[0]):
        cfg_file = opts.pop(0)  # `sldistill train cifar100/sld/resnet32x4_resnet8x4`
    return cfg_file, opts


def _load_cfg(args: argparse.Namespace):
    from sldistill.engine.config import load_config

    cfg_file, opts = _cfg_opts(args)
    load_cli_plugins(args.plugin or [], opts)
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
    p.add_argument("--base-temp", type=float, default=None, metavar="T",
                   help="with --logit-stand: KD temperature (default 2)")
    p.add_argument("--kd-weight", type=float, default=None, metavar="W",
                   help="with --logit-stand: KD weight (default 9)")
    p.add_argument("--log-interval", type=_positive_int, default=20, metavar="N",
                   help="iterations between progress updates / non-finite checks, >= 1 (default 20)")
    p.set_defaults(func=cmd_train)
    return p


#: DISTILLER.TYPE -> the keys --logit-stand overwrites, with the option whose value it writes
#: (DKD.ALPHA and DKD.BETA are multiplied by --kd-weight, so an explicit value of those is used)
_LOGIT_STAND_SETS = {"KD": {"KD.TEMPERATURE": "--base-temp", "KD.LOSS.KD_WEIGHT": "--kd-weight"},
                     "DKD": {"DKD.T": "--base-temp"},
                     "MLKD": {"KD.TEMPERATURE": "--base-temp", "KD.LOSS.KD_WEIGHT": "--kd-weight"}}


def _logit_stand(args: argparse.Namespace, cfg):
    """``--logit-stand``: refused for a method it does not apply to, and where a command-line
    override sets a key it would overwrite; otherwise :func:`apply_logit_stand`."""
    from sldistill.engine.config import ConfigError, apply_logit_stand, parse_overrides, validate_config

    method = str(cfg.DISTILLER.TYPE)
    if method not in _LOGIT_STAND_SETS:
        raise ConfigError("--logit-stand", "DISTILLER.TYPE", f"applies to {', '.join(_LOGIT_STAND_SETS)} only (as in "
                          f"the logit-standardization release), not {method!r}")
    base_temp = 2.0 if args.base_temp is None else args.base_temp
    kd_weight = 9.0 if args.kd_weight is None else args.kd_weight
    values = {"--base-temp": base_temp, "--kd-weight": kd_weight}
    for key, value in parse_overrides(_cfg_opts(args)[1]):
        option = _LOGIT_STAND_SETS[method].get(key)
        if option is not None and value != values[option]:
            given = "" if getattr(args, option[2:].replace("-", "_")) is not None else " (its default)"
            raise ConfigError("<command line>", key, f"{value:g} conflicts with --logit-stand, which sets it to "
                              f"{option} {values[option]:g}{given}; give the value once: {option} {value:g}")
    cfg = apply_logit_stand(cfg, base_temp=base_temp, kd_weight=kd_weight)
    validate_config(cfg, "<command line>")
    return cfg


def cmd_train(args: argparse.Namespace) -> int:
    """Run ``sldistill train``."""
    from sldistill.engine.trainer import STOP, install_signal_handlers

    if args.allow_config_change and not args.resume:
        _warn(args, "--allow-config-change has no effect without --resume")
    if not args.logit_stand:
        for option, value in (("--base-temp", args.base_temp), ("--kd-weight", args.kd_weight)):
            if value is not None:
                _warn(args, f"{option} has no effect without --logit-stand")
    STOP.clear()
    restore = install_signal_handlers(STOP)
    try:
        cfg = _load_cfg(args)
        if args.logit_stand:
            cfg = _logit_stand(args, cfg)
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
    p.add_argument("--which", default=None, choices=("best", "latest"),
                   help="with --run: which checkpoint (default best)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=cmd_eval)
    return p


def cmd_eval(args: argparse.Namespace) -> int:
    """Run ``sldistill eval``."""
    from sldistill.engine.config import load_config
    from sldistill.engine.run import evaluate_checkpoint

    if args.which is not None and not args.run:
        _warn(args, "--which has no effect without --run")
    load_cli_plugins(args.plugin or [], args.opts or [])
    if args.run:
        if args.model or args.ckpt:
            raise ValueError("give either --run DIR, or --model NAME with --ckpt FILE, not both")
        run = Path(args.run)
        if not (run / "config.yaml").is_file():
            raise FileNotFoundError(f"--run {run}: no config.yaml there (is it a run folder written by "
                                    "sldistill train?)")
        cfg = load_config(args.cfg or (run / "config.yaml"), list(args.opts or []), base=args.base,
                          plugins=list(args.plugin or []))
        model, ckpt = str(cfg.DISTILLER.STUDENT), run / f"{args.which or 'best'}.pth"
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

    load_cli_plugins(args.plugin or [], [])
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
    """``sldistill sweep --cfg FILE [--cfg FILE ...] --seeds N [KEY VALUE ...]`` (sldistill.sweep_cli)."""
    from sldistill import sweep_cli

    return sweep_cli.add_sweep_parser(sub)


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run ``sldistill sweep`` (sldistill.sweep_cli)."""
    from sldistill import sweep_cli

    return sweep_cli.cmd_sweep(args)


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
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=SubcommandParser)
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
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
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


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it again at exit does not fail a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real file behind sys.stdout (tests capture it)
        pass


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main(sys.argv[1:]))
