"""``sldistill sweep``: the command-line side of seed sweeps (:mod:`sldistill.sweep`).

The adder :func:`add_sweep_parser` has the shape of those in :mod:`sldistill.cli` (registered
there in ``SUBCOMMANDS``); :func:`cmd_sweep` returns the exit code: 0, or 130 / 143 when a
stop signal ended the sweep (:class:`sldistill.sweep.SweepInterrupted`).
"""
from __future__ import annotations

import argparse
import sys

__all__ = ["add_sweep_parser", "cmd_sweep"]


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
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (repeatable): distillers, models and datasets of your own; recorded "
                        "in every run's EXPERIMENT.PLUGINS (so runs on other devices import it too)")
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

    from sldistill.cli import load_cli_plugins
    from sldistill.sweep import SweepInterrupted, run_sweep

    devices = [d.strip() for d in args.devices.split(",") if d.strip()] or None
    command = "sldistill " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["sweep"] else ""
    opts = list(args.opts or [])
    load_cli_plugins(args.plugin or [], opts)
    if args.plugin:  # every run's config names them: a run in a subprocess imports them too
        opts += ["EXPERIMENT.PLUGINS", ",".join(args.plugin)]
    try:
        res = run_sweep(args.cfg, args.seeds, opts, out=args.out, base=args.base,
                        first_seed=args.first_seed, labels=args.label, devices=devices, rerun=args.rerun,
                        command=command, baseline=args.baseline, teacher_cache=args.teacher_cache)
    except SweepInterrupted as exc:  # the sweep said where it stopped; 130 / 143 as for train
        return exc.code
    print(res.table)
    print("std: sample standard deviation (N - 1) over seeds; written: "
          + ", ".join(str(p) for p in res.files.values()))
    return 0
