"""``docs/cli.md``: every subcommand's usage, options, defaults and help, generated from the
argument parsers of :func:`sldistill.cli.build_parser`, and the environment variables read.

``python -m sldistill.engine.config.reference --write`` rewrites it (with docs/configs.md);
a test fails while it is out of date.
"""
from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["render_cli_docs", "cli_docs_path", "ENVIRONMENT"]

#: the environment variables sldistill reads, and what each does (listed in docs/cli.md)
ENVIRONMENT = [
    ("SLDISTILL_DEBUG", "set (non-empty): a failing command shows the full traceback instead of one line"),
    ("SLDISTILL_DATA", "the dataset folder when `DATASET.ROOT` is empty (and of `sldistill demo` without "
                       "`--data-root`); else `./data`"),
    ("SLDISTILL_TEACHER_ROOT", "the teacher root when `DISTILLER.TEACHER_ROOT` is left at its default "
                               "`./download_ckpts` (also `sldistill teachers` without `--root`)"),
    ("SLDISTILL_CONFIGS", "the folder of shipped configs (`sldistill configs`, short config names); default "
                          "`configs/` of the source checkout"),
    ("WANDB_MODE", "read by Weights & Biases with `LOG.WANDB true`: `offline` logs locally (`wandb sync` uploads "
                   "later), `disabled` turns it off"),
    ("WANDB_DIR", "where W&B writes its files; when unset, the run folder"),
    ("RANK, WORLD_SIZE, LOCAL_RANK", "set by `torchrun`: the process's place in a multi-process run; only rank 0 "
                                     "prints errors and warnings and writes files"),
    ("CUDA_VISIBLE_DEVICES", "the GPUs `EXPERIMENT.DEVICE auto`/`cuda` and `sldistill sweep` may use"),
    ("CUBLAS_WORKSPACE_CONFIG", "set to `:4096:8` (when unset) by `EXPERIMENT.DETERMINISTIC true` on CUDA"),
]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _option_rows(parser: argparse.ArgumentParser) -> list[str]:
    fmt = argparse.HelpFormatter(parser.prog)
    rows = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if action.option_strings:
            name = ", ".join(action.option_strings)
            if action.nargs != 0:
                name += " " + fmt._format_args(action, action.dest.upper())
        else:
            name = fmt._format_args(action, action.dest)
        if action.nargs == 0 or action.default in (None, [], "", argparse.SUPPRESS):
            default = ""
        else:
            default = f"`{action.default}`"
        text = " ".join(fmt._expand_help(action).split()) if action.help else ""
        cell = text.replace("|", r"\|")  # a literal | inside a markdown table cell
        rows.append(f"| `{name}` | {default} | {cell} |")
    return rows


def _parser_section(parser: argparse.ArgumentParser, level: int) -> list[str]:
    fmt = argparse.HelpFormatter(parser.prog, width=10_000)
    fmt.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    lines = [f"{'#' * level} `{parser.prog}`", ""]
    if parser.description:
        lines += [" ".join(parser.description.split()), ""]
    lines += ["```text", fmt.format_help().strip(), "```", ""]
    rows = _option_rows(parser)
    if rows:
        lines += ["| option | default | meaning |", "|---|---|---|", *rows, ""]
    if parser.epilog:
        lines += [" ".join(parser.epilog.split()), ""]
    for child in _subparsers(parser).values():
        lines += _parser_section(child, level + 1)
    return lines


def render_cli_docs() -> str:
    """``docs/cli.md``: every subcommand and sub-subcommand with its usage, options, defaults and
    help, from the argparse parsers of :func:`build_parser`, and the environment variables read."""
    from sldistill.cli import build_parser

    parser = build_parser()
    lines = ["# Command line reference", "",
             "Generated from the argument parsers by `python -m sldistill.engine.config.reference --write`; "
             "do not edit by hand.",
             "", "Overrides (`KEY VALUE` pairs or `KEY=VALUE`, see [configs.md](configs.md)) may come before, "
             "between and after a subcommand's options. An empty default means none (or off, for a flag).", "",
             "Exit codes: 0 success; 1 a check failed (`teachers verify`, `teacher-cache build` while another "
             "process builds); 2 bad configuration or arguments (one line on stderr); 3 a non-finite loss stopped "
             "training; 130 / 143 stopped by SIGINT / SIGTERM after saving a checkpoint; 141 stdout was closed "
             "by its reader (`sldistill methods | head -3`), the output stops quietly.", ""]
    lines += _parser_section(parser, 2)
    lines += ["## Environment variables", "", "| variable | effect |", "|---|---|"]
    lines += [f"| `{name}` | {text} |" for name, text in ENVIRONMENT]
    return "\n".join(lines) + "\n"


def cli_docs_path() -> Path:
    """``docs/cli.md`` of the source checkout."""
    return Path(__file__).resolve().parents[1] / "docs" / "cli.md"
