"""The ``sldistill teachers`` and ``sldistill report`` subcommands (adders and handlers, in the
shape of :mod:`sldistill.cli`'s: ``add_<name>_parser(subparsers)`` sets ``func``).

Examples::

    sldistill teachers list                      # published CIFAR-100 teachers, present or not
    sldistill teachers download --root download_ckpts [--sha256 HEX]
    sldistill teachers verify DATASET.ROOT data  # each file loads; top-1 within 0.2 of the published
    sldistill report runs/sweep                  # every run folder below, by experiment
    sldistill report output/cifar100/kd_s0 output/cifar100/kd_s1 --out report.md
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Sequence

from sldistill.report import RunRecord, run_label

__all__ = ["add_teachers_parser", "add_report_parser", "cmd_teachers_list", "cmd_teachers_download",
           "cmd_teachers_verify", "cmd_report", "find_runs", "group_records", "fingerprint", "RUN_ONLY_KEYS"]


def _add_cfg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", default=None, metavar="DIR",
                   help="teacher root (default: DISTILLER.TEACHER_ROOT, else $SLDISTILL_TEACHER_ROOT, else "
                        "./download_ckpts)")
    p.add_argument("--cfg", default=None, metavar="FILE", help="a config whose DISTILLER/DATASET keys to use")
    p.add_argument("opts", nargs="*", metavar="KEY VALUE", help="config overrides (DATASET.ROOT data ...)")


def _config(args: argparse.Namespace, first: Sequence[str] = ()) -> Any:
    from sldistill.engine.config import load_config

    return load_config(args.cfg, [*first, *(args.opts or [])])


def _root(args: argparse.Namespace, cfg: Any) -> Path:
    from sldistill.models.teachers import teacher_root

    return Path(args.root).expanduser() if args.root else teacher_root(cfg)


def _present(name: str, root: Path) -> Path | None:
    from sldistill.models.teachers import teacher_checkpoint_path

    try:
        return teacher_checkpoint_path(name, root)
    except FileNotFoundError:
        return None


# ---------------------------------------------------------------------------- teachers
def add_teachers_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``sldistill teachers list|download|verify``: the published CIFAR-100 teachers."""
    p = sub.add_parser("teachers", help="the published CIFAR-100 teachers: list, download, verify",
                       description="The CIFAR-100 teacher checkpoints of mdistiller's cifar_teachers.tar, "
                                   "expected under the teacher root at cifar_teachers/<name>_vanilla/"
                                   "ckpt_epoch_240.pth.")
    tsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = tsub.add_parser("list", help="each teacher, its published top-1 and whether it is present")
    _add_cfg(q)
    q.add_argument("--json", action="store_true", help="one JSON object per teacher")
    q.set_defaults(func=cmd_teachers_list)
    q = tsub.add_parser("download", help="fetch cifar_teachers.tar and unpack it safely under the teacher root",
                        description="Download the archive into a temporary file (renamed only when complete), "
                                    "check its size against Content-Length and, with --sha256, its SHA-256; "
                                    "check that no member leaves the target; then unpack.")
    _add_cfg(q)
    q.add_argument("--url", default=None, help="archive URL (default: cifar_teachers.tar of mdistiller's GitHub "
                                                "release 'checkpoints')")
    q.add_argument("--sha256", default=None, metavar="HEX",
                   help="expected SHA-256 of the archive (no published hash is recorded: without this only the "
                        "size is checked)")
    q.add_argument("--keep-archive", action="store_true", help="keep cifar_teachers.tar beside the files")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_teachers_download)
    q = tsub.add_parser("verify", help="each present file loads into its model; top-1 near the published one",
                        description="Load every present teacher file into its architecture (strictly); when "
                                    "CIFAR-100 is found under DATASET.ROOT, evaluate it and compare with the "
                                    "published top-1. Exit 1 if a file fails or differs by more than --tolerance.")
    _add_cfg(q)
    q.add_argument("--tolerance", type=float, default=0.2, metavar="PTS",
                   help="largest accepted |top-1 - published| in points (default 0.2)")
    q.set_defaults(func=cmd_teachers_verify)
    return p


def cmd_teachers_list(args: argparse.Namespace) -> int:
    """Run ``sldistill teachers list``."""
    from sldistill.models.teachers import CIFAR_TEACHERS

    root = _root(args, _config(args))
    rows = [(t, _present(t.name, root)) for t in CIFAR_TEACHERS.values()]
    if args.json:
        for t, path in rows:
            print(json.dumps({"name": t.name, "top1": t.top1, "present": path is not None,
                              "path": str(path or root / t.relpath)}))
        return 0
    print(f"teacher root: {root}")
    print(f"{'teacher':12s} {'published top-1':>15s}  {'present':7s}  file")
    for t, path in rows:
        print(f"{t.name:12s} {t.top1:15.2f}  {'yes' if path else 'no':7s}  {path or root / t.relpath}")
    n = sum(path is not None for _, path in rows)
    print(f"{n} of {len(rows)} present" + ("" if n == len(rows) else "; get them with `sldistill teachers download`"))
    return 0


def cmd_teachers_download(args: argparse.Namespace) -> int:
    """Run ``sldistill teachers download``."""
    from sldistill.models.teachers import DOWNLOAD_RECORD, TEACHER_ARCHIVE_URL, download_teachers, read_download_record

    root = _root(args, _config(args))
    url = args.url or TEACHER_ARCHIVE_URL
    print(f"downloading {url} -> {root}" + ("" if args.sha256 else " (no --sha256: only the size is checked)"),
          file=sys.stderr)
    files = download_teachers(root, url=url, sha256=args.sha256, progress=not args.no_progress,
                              keep_archive=args.keep_archive)
    for f in files:
        print(f)
    record = read_download_record(root) or {}
    print(f"{len(files)} files unpacked under {root}; archive SHA-256 {record.get('archive_sha256')} "
          f"(pass it as --sha256 to pin this archive; hashes recorded in {root / DOWNLOAD_RECORD})", file=sys.stderr)
    return 0


def cmd_teachers_verify(args: argparse.Namespace) -> int:
    """Run ``sldistill teachers verify``."""
    from sldistill import models
    from sldistill.engine.run import evaluate_checkpoint
    from sldistill.models.teachers import CIFAR_TEACHERS, file_sha256, read_download_record, recorded_sha256

    cfg = _config(args, ["DATASET.TYPE", "cifar100", "DATASET.DOWNLOAD", "False"])
    root = _root(args, cfg)
    record = read_download_record(root)
    print(f"teacher root: {root}" + ("" if record is None else
                                     f" (downloaded from {record.get('url')}, archive SHA-256 "
                                     f"{record.get('archive_sha256')})"))
    ok, present, data_missing = True, 0, ""
    for t in CIFAR_TEACHERS.values():
        path = _present(t.name, root)
        if path is None:
            print(f"{t.name:12s} not present")
            continue
        present += 1
        expected = t.sha256 or recorded_sha256(path, root, record)
        if expected is not None and file_sha256(path) != expected:
            print(f"{t.name:12s} CHANGED: its SHA-256 differs from the {'published' if t.sha256 else 'downloaded'} "
                  f"file's {expected}; download it again")
            ok = False
            continue
        try:
            models.load_weights(models.create(t.name, num_classes=100, dataset="cifar100"), str(path), strict=True)
        except Exception as exc:  # unreadable file, wrong architecture, ...
            print(f"{t.name:12s} FAILS to load: {type(exc).__name__}: {exc}")
            ok = False
            continue
        if data_missing:
            print(f"{t.name:12s} loads")
            continue
        try:
            top1 = evaluate_checkpoint(cfg, t.name, path)["top1"]
        except FileNotFoundError as exc:
            data_missing = str(exc).splitlines()[0]
            print(f"{t.name:12s} loads")
            continue
        diff = top1 - t.top1
        good = abs(diff) <= args.tolerance
        ok &= good
        print(f"{t.name:12s} loads; top-1 {top1:.2f} (published {t.top1:.2f}, {diff:+.2f}): "
              + ("ok" if good else f"DIFFERS by more than {args.tolerance:g}"))
    if data_missing:
        print(f"top-1 not checked: {data_missing}")
    if not present:
        print("no published teacher present; get them with `sldistill teachers download`")
        return 1
    return 0 if ok else 1


# ---------------------------------------------------------------------------- report
#: config keys that name, place or schedule a run without changing the experiment: runs whose
#: configs differ only in these are seeds of one experiment
RUN_ONLY_KEYS = ("EXPERIMENT.SEED", "EXPERIMENT.NAME", "EXPERIMENT.PROJECT", "EXPERIMENT.DEVICE",
                 "EXPERIMENT.PLUGINS", "LOG", "DATASET.ROOT", "DATASET.NUM_WORKERS", "DATASET.DOWNLOAD",
                 "DISTILLER.TEACHER_ROOT")


def fingerprint(config: dict[str, Any]) -> str:
    """A run's config without :data:`RUN_ONLY_KEYS`, its ``EXPERIMENT.TAG`` as :func:`run_label`
    gives it (a TAG naming other models than those trained does not split an experiment), as
    canonical JSON."""
    cfg = json.loads(json.dumps(config, default=str))
    if isinstance(cfg.get("EXPERIMENT"), dict) and cfg["EXPERIMENT"].get("TAG"):
        cfg["EXPERIMENT"]["TAG"] = run_label(config)
    for dotted in RUN_ONLY_KEYS:
        *parents, last = dotted.split(".")
        node = cfg
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(last, None)
    return json.dumps(cfg, sort_keys=True)


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run folders named by ``paths``: a path holding ``metrics.csv``, else every folder below it
    that holds one (a sweep folder), sorted; ``FileNotFoundError`` for a path with none."""
    out: list[Path] = []
    for p in map(Path, paths):
        if (p / "metrics.csv").is_file():
            found = [p]
        else:
            found = sorted(f.parent for f in p.rglob("metrics.csv")) if p.is_dir() else []
        if not found:
            raise FileNotFoundError(f"{p}: no run folder (a folder with metrics.csv) there or below")
        out.extend(f for f in found if f not in out)
    return out


def group_records(records: Sequence[RunRecord], by: str = "config") -> list[RunRecord]:
    """The records relabelled by experiment: ``config`` (runs whose configs differ only in
    :data:`RUN_ONLY_KEYS` share a label: their ``EXPERIMENT.TAG``, made unique with the project
    where that tells them apart, else with a number), ``tag`` (``EXPERIMENT.TAG``) or ``dir``
    (the parent folder's name, as in a sweep's ``<out>/<method>/seed<S>``)."""
    def tag(r: RunRecord) -> str:
        exp = r.config.get("EXPERIMENT", {})
        return str(run_label(r.config) or exp.get("NAME") or (r.run_dir.name if r.run_dir else r.method))

    if by == "tag":
        labels = [tag(r) for r in records]
    elif by == "dir":
        labels = [r.run_dir.parent.name if r.run_dir is not None else r.method for r in records]
    elif by == "config":
        fps = [fingerprint(r.config) for r in records]
        first = {fp: records[fps.index(fp)] for fp in dict.fromkeys(fps)}
        names = {fp: tag(r) for fp, r in first.items()}
        for name in sorted(set(names.values())):
            same = [fp for fp in names if names[fp] == name]
            projects = [str(first[fp].config.get("EXPERIMENT", {}).get("PROJECT", "")) for fp in same]
            for k, fp in enumerate(same if len(same) > 1 else []):
                names[fp] = f"{name} ({projects[k]})" if len(set(projects)) == len(same) else f"{name} #{k + 1}"
        labels = [names[fp] for fp in fps]
    else:
        raise ValueError(f"--group-by must be config, tag or dir, not {by!r}")
    return [replace(r, method=label) for r, label in zip(records, labels)]


def add_report_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``sldistill report RUN_DIRS... [--group-by ...] [--baseline LABEL] [--out FILE.md] [--csv FILE]``."""
    p = sub.add_parser(
        "report", help="runs beside the published numbers: mean ± std of best/last top-1, 95%% CI, seeds",
        description="Read run folders (or every run folder below a folder, e.g. a sweep's), group them by "
                    "experiment, and print per experiment: the number of seeds, mean ± sample std of the "
                    "best-epoch and last-epoch test top-1, the 95% t-interval of the best-epoch mean, and the "
                    "published top-1 of that method and pair with its source and whether it lies in the interval.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders, or folders holding run folders")
    p.add_argument("--group-by", default="config", choices=("config", "tag", "dir"),
                   help="config: runs differing only in seed/name/paths are one experiment (default); tag: "
                        "EXPERIMENT.TAG; dir: the parent folder (a sweep's <out>/<method>/seed<S>)")
    p.add_argument("--baseline", default=None, metavar="LABEL",
                   help="also show each experiment's paired difference (seed by seed) to this one")
    p.add_argument("--out", default=None, metavar="FILE", help="also write the table and notes as markdown")
    p.add_argument("--csv", default=None, metavar="FILE", help="also write the table as CSV")
    p.set_defaults(func=cmd_report)
    return p


def cmd_report(args: argparse.Namespace) -> int:
    """Run ``sldistill report``."""
    from sldistill.report import aggregate, markdown_table, one_run_per_seed, read_run, table_notes, write_summary_csv
    from sldistill.sweep import paired_differences

    records = group_records([read_run(d) for d in find_runs(args.runs)], by=args.group_by)
    summaries = aggregate(records)
    for s in summaries:
        for line in s.repeated:
            print(f"sldistill report: warning: {line}", file=sys.stderr)
    records = one_run_per_seed(records)[0]  # as aggregate counted them
    paired = (paired_differences(records, args.baseline, "best") + paired_differences(records, args.baseline, "last")
              if args.baseline else [])
    text = "\n\n".join([markdown_table(summaries, paired=paired), *table_notes(summaries, paired)])
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("# Reproduction report\n\n" + text + "\n", encoding="utf-8")
    if args.csv:
        write_summary_csv(summaries, args.csv, paired=paired)
    return 0
