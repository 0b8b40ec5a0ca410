"""``sldistill demo``: the command-line side of the Fashion-MNIST demo (:mod:`sldistill.demo`)."""
from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_demo_parser", "cmd_demo"]


def add_demo_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``sldistill demo [options]``: the Fashion-MNIST teacher/students demo (sldistill.demo)."""
    from sldistill import demo as d

    p = sub.add_parser(
        "demo", help="Fashion-MNIST demo: cached ResNet20 teacher, ResNet8 students by several methods",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train (once, cached) a ResNet20 teacher on a class-balanced Fashion-MNIST subset, then "
                    "ResNet8 students with each method on the same budget; print a table of best/last top-1, "
                    "the teacher's test error and the fraction of training images whose teacher logits are "
                    "swapped/sorted; write <out>/report.md with a plot of test top-1 per epoch.",
        epilog="Schedules scale with the run length: LR decay at 150/180/210 of 240 of the epochs; SLD's "
               "pseudo-teacher switches on after round(GAMMA_FRACTION * epochs) epochs (SLD.GAMMA_FRACTION, "
               "--gamma-fraction, default 0.625 = 150/240 as published); DKD.WARMUP = max(1, round("
               "DKD_WARMUP_FRACTION * epochs)) (--dkd-warmup-fraction, default 20/240 as published). The teacher "
               "is cached in <out>/teacher/<hash of its config>/ and reused while its config is unchanged. "
               "The default is sized for < 10 minutes on 2 CPU cores.")
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="output folder (default runs/demo)")
    p.add_argument("--data-root", default="", metavar="DIR",
                   help="folder with the Fashion-MNIST IDX files (default: $SLDISTILL_DATA, ./data, "
                        "/usr/share/datasets/fashion-mnist)")
    p.add_argument("--methods", default=",".join(d.DEFAULT_METHODS), metavar="LIST",
                   help=f"comma-separated methods (default {','.join(d.DEFAULT_METHODS)}; "
                        f"available: {','.join(d.METHODS)}; 'all' for every one)")
    p.add_argument("--seeds", type=int, default=1, metavar="N", help="student seeds per method (default 1)")
    p.add_argument("--first-seed", type=int, default=0, metavar="S", help="first seed (default 0)")
    p.add_argument("--epochs", type=int, default=d.DEFAULT_EPOCHS, metavar="E",
                   help=f"student epochs (default {d.DEFAULT_EPOCHS})")
    p.add_argument("--teacher-epochs", type=int, default=d.DEFAULT_TEACHER_EPOCHS, metavar="E",
                   help=f"teacher epochs (default {d.DEFAULT_TEACHER_EPOCHS})")
    p.add_argument("--subset", type=int, default=d.DEFAULT_SUBSET, metavar="N",
                   help=f"class-balanced training images (default {d.DEFAULT_SUBSET}; 0 = all 60,000)")
    p.add_argument("--full", action="store_true", help="use the whole training set (same as --subset 0)")
    p.add_argument("--subset-seed", type=int, default=0, metavar="S", help="seed of the subset draw (default 0)")
    p.add_argument("--batch-size", type=int, default=64, metavar="B", help="batch size (default 64)")
    p.add_argument("--gamma-fraction", type=float, default=d.PUBLISHED_GAMMA_FRACTION, metavar="F",
                   help="SLD.GAMMA_FRACTION (default 0.625 = 150/240)")
    p.add_argument("--dkd-warmup-fraction", type=float, default=d.PUBLISHED_DKD_WARMUP_FRACTION, metavar="F",
                   help="DKD warm-up as a fraction of the epochs (default 20/240)")
    p.add_argument("--retrain-teacher", action="store_true", help="train the teacher again even if cached")
    p.add_argument("--workers", type=int, default=2, metavar="N", help="data-loader workers (default 2)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("opts", nargs="*", metavar="KEY VALUE", help="extra config overrides for the students")
    p.set_defaults(func=cmd_demo)
    return p


def cmd_demo(args: argparse.Namespace) -> int:
    """Run ``sldistill demo``."""
    from sldistill.demo import METHODS, DemoOptions, run_demo

    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    methods = list(METHODS) if args.methods.strip() == "all" else names
    opts = DemoOptions(out=Path(args.out), data_root=args.data_root, methods=methods, seeds=args.seeds,
                       first_seed=args.first_seed, epochs=args.epochs, teacher_epochs=args.teacher_epochs,
                       subset=0 if args.full else args.subset, subset_seed=args.subset_seed,
                       batch_size=args.batch_size, gamma_fraction=args.gamma_fraction,
                       dkd_warmup_fraction=args.dkd_warmup_fraction, retrain_teacher=args.retrain_teacher,
                       num_workers=args.workers, device=args.device, progress=not args.no_progress,
                       overrides=list(args.opts or []))
    run_demo(opts)
    return 0


