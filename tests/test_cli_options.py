"""Command-line options: overrides around options, a closed stdout, where plugin errors come
from, broken entry points, options that would be ignored, EXPERIMENT.DEVICE and docs/cli.md."""
from __future__ import annotations

import importlib
import re
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import pytest

from sldistill import cli, cli_docs
from sldistill.cli import build_parser, main
from sldistill.engine.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
#: the module (the package exports a function of the same name)
schema_mod = importlib.import_module("sldistill.engine.config.schema")


# ---------------------------------------------------------------------------- 1. overrides around options
@pytest.mark.parametrize("argv", [
    ["train", "--cfg", "X.yaml", "DATASET.ROOT", "d", "--base-temp", "3", "EXPERIMENT.NAME", "b2"],
    ["eval", "DATASET.ROOT", "d", "--model", "resnet8", "EXPERIMENT.NAME", "b2"],
    ["demo", "DATASET.ROOT", "d", "--epochs", "1", "EXPERIMENT.NAME", "b2"],
    ["sweep", "DATASET.ROOT", "d", "--cfg", "X.yaml", "EXPERIMENT.NAME", "b2"],
    ["teachers", "list", "DATASET.ROOT", "d", "--json", "EXPERIMENT.NAME", "b2"],
    ["teacher-cache", "build", "DATASET.ROOT", "d", "--cfg", "X.yaml", "EXPERIMENT.NAME", "b2"],
])
def test_overrides_before_and_after_options_are_all_kept(argv):
    args = build_parser().parse_args(argv)
    assert args.opts == ["DATASET.ROOT", "d", "EXPERIMENT.NAME", "b2"]


def test_split_overrides_reach_the_config():
    args = build_parser().parse_args(["train", "DATASET.ROOT", "d", "--base-temp", "3", "EXPERIMENT.NAME", "b2",
                                      "--log-interval", "5", "SOLVER.LR", "0.2"])
    cfg = cli._load_cfg(args)
    assert (cfg.DATASET.ROOT, cfg.EXPERIMENT.NAME, cfg.SOLVER.LR) == ("d", "b2", 0.2)
    assert (args.base_temp, args.log_interval) == (3.0, 5)


@pytest.mark.parametrize("argv, usage", [
    (["train", "DATASET.ROOT", "d", "--bogus", "EXPERIMENT.NAME", "b2"], "usage: sldistill train"),
    (["teachers", "list", "--bogus"], "usage: sldistill teachers list"),
    (["configs", "--bogus"], "usage: sldistill configs"),
])
def test_an_unknown_option_is_an_error_with_the_subcommands_usage(argv, usage, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err.startswith(usage) and "unrecognized arguments: --bogus" in err.splitlines()[-1]


# ---------------------------------------------------------------------------- 2. closed stdout
def test_a_closed_stdout_ends_quietly_with_141():
    proc = subprocess.Popen([sys.executable, "-m", "sldistill", "methods", "--keys"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader goes away before anything is written, as `| head` does early
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == cli.EXIT_BROKEN_PIPE == 141
    assert err == ""


# ---------------------------------------------------------------------------- 3. plugin errors
@pytest.fixture
def modules(tmp_path, monkeypatch):
    """A folder on sys.path; ``write(name, code)`` puts a module there."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(name: str, code: str) -> Path:
        path = tmp_path / f"{name}.py"
        path.write_text(textwrap.dedent(code))
        return path

    return write


def test_a_missing_plugin_is_blamed_on_the_option(capsys):
    assert main(["train", "--plugin", "nonexist_mod_q1", "DISTILLER.TYPE", "KD"]) == 2
    err = capsys.readouterr().err
    assert "--plugin nonexist_mod_q1: cannot import" in err
    assert "<defaults>" not in err and "(is it on PYTHONPATH, or installed?)" in err


def test_a_plugin_that_raises_shows_its_own_error_and_line(modules, capsys):
    path = modules("plugin_raises_q2", "import os\nraise RuntimeError('plugin setup failed')\n")
    assert main(["methods", "--plugin", "plugin_raises_q2"]) == 2
    err = capsys.readouterr().err
    assert "--plugin plugin_raises_q2:" in err and "RuntimeError: plugin setup failed" in err
    assert f"{path}:2" in err and "PYTHONPATH" not in err


def test_a_plugin_with_a_syntax_error_names_its_line(modules, capsys):
    path = modules("plugin_syntax_q3", "x = 1\ny = (\n")
    assert main(["methods", "--plugin", "plugin_syntax_q3"]) == 2
    err = capsys.readouterr().err
    assert "SyntaxError" in err and f"{path}:2" in err and "PYTHONPATH" not in err


def test_a_plugin_missing_a_dependency_is_not_told_about_its_own_path(modules, capsys):
    path = modules("plugin_dep_q4", "import not_installed_dependency_q4\n")
    assert main(["methods", "--plugin", "plugin_dep_q4"]) == 2
    err = capsys.readouterr().err
    assert "No module named 'not_installed_dependency_q4'" in err and f"{path}:1" in err
    assert "PYTHONPATH" not in err


def test_plugin_errors_name_the_file_key_or_the_override(modules, tmp_path, capsys):
    modules("plugin_raises_q5", "raise RuntimeError('boom')\n")
    cfg = tmp_path / "my.yaml"
    cfg.write_text("EXPERIMENT:\n  PLUGINS: [plugin_raises_q5]\n")
    assert main(["train", "--cfg", str(cfg)]) == 2
    assert f"{cfg}: EXPERIMENT.PLUGINS: cannot import plugin module 'plugin_raises_q5'" in capsys.readouterr().err
    assert main(["train", "--cfg", str(cfg), "--plugin", "plugin_raises_q5"]) == 2
    assert "--plugin plugin_raises_q5: cannot import" in capsys.readouterr().err
    assert main(["train", "EXPERIMENT.PLUGINS", "plugin_raises_q5"]) == 2
    assert "<command line>: EXPERIMENT.PLUGINS: cannot import" in capsys.readouterr().err


# ---------------------------------------------------------------------------- 4. sweep --plugin
def test_sweep_passes_plugin_to_the_runs(modules, tmp_path, monkeypatch, capsys):
    import sldistill.sweep as sweep

    modules("plugin_ok_q6", "LOADED = True\n")
    cfg = tmp_path / "kd.yaml"
    cfg.write_text("DISTILLER:\n  TYPE: KD\n")
    seen = {}

    def fake_run_sweep(cfg_files, seeds, overrides, **kw):
        seen.update(cfg_files=cfg_files, seeds=seeds, overrides=overrides)
        return SimpleNamespace(table="table", files={})

    monkeypatch.setattr(sweep, "run_sweep", fake_run_sweep)
    assert main(["sweep", "--plugin", "plugin_ok_q6", "--cfg", str(cfg), "--seeds", "1", "SOLVER.EPOCHS", "2"]) == 0
    assert "plugin_ok_q6" in sys.modules
    jobs = sweep.plan_sweep(seen["cfg_files"], seen["seeds"], seen["overrides"], out=tmp_path / "sw")
    assert jobs[0].cfg.EXPERIMENT.PLUGINS == ["plugin_ok_q6"] and jobs[0].cfg.SOLVER.EPOCHS == 2


# ---------------------------------------------------------------------------- 5. broken entry points
def test_a_broken_entry_point_is_a_warning(modules, monkeypatch, capsys):
    path = modules("ep_broken_q7", "raise RuntimeError('half-installed package')\n")
    ep = metadata.EntryPoint(name="brokenkd", value="ep_broken_q7:BrokenKD", group="sldistill.distillers")
    monkeypatch.setattr(metadata, "entry_points",
                        lambda group=None, **kw: [ep] if group == "sldistill.distillers" else [])
    monkeypatch.setattr(schema_mod, "_entry_points_loaded", False)
    monkeypatch.setattr(schema_mod, "_entry_point_failures", {})
    assert main(["methods"]) == 0
    out, err = capsys.readouterr()
    assert "KD" in out
    [line] = [x for x in err.splitlines() if "warning" in x]
    assert "entry point 'brokenkd'" in line and "ep_broken_q7:BrokenKD" in line
    assert "RuntimeError: half-installed package" in line and f"{path}:1" in line
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["DISTILLER.TYPE", "BROKENKD"])
    assert "unknown distiller 'BROKENKD'" in str(exc.value) and "entry point 'brokenkd'" in str(exc.value)


# ---------------------------------------------------------------------------- 6. ignored options
@pytest.mark.parametrize("argv, warning", [
    (["eval", "--which", "latest"], "--which has no effect without --run"),
    (["train", "--allow-config-change", "DISTILLER.TYPE", "NO_SUCH_Q8"], "--allow-config-change has no effect"),
    (["train", "--base-temp", "3", "DISTILLER.TYPE", "NO_SUCH_Q8"], "--base-temp has no effect without --logit-stand"),
    (["train", "--kd-weight", "3", "DISTILLER.TYPE", "NO_SUCH_Q8"], "--kd-weight has no effect without --logit-stand"),
])
def test_options_that_would_be_ignored_warn(argv, warning, capsys):
    assert main(argv) == 2  # the command then fails for its own reason
    lines = [x for x in capsys.readouterr().err.splitlines() if "warning" in x]
    assert len(lines) == 1 and warning in lines[0]


def test_no_warning_for_defaults(capsys):
    assert main(["train", "DISTILLER.TYPE", "NO_SUCH_Q8"]) == 2
    assert "warning" not in capsys.readouterr().err


#: keeps a command that is wrongly not refused from downloading or training much
NO_DATA = ["DATASET.ROOT", "/nonexistent/q9", "DATASET.DOWNLOAD", "false"]


def test_logit_stand_refuses_methods_it_does_not_apply_to(capsys):
    assert main(["train", "--logit-stand", "DISTILLER.TYPE", "SLD", *NO_DATA]) == 2
    err = capsys.readouterr().err
    assert "--logit-stand" in err and "KD, DKD, MLKD" in err and "'SLD'" in err


def test_logit_stand_conflicts_loudly_with_an_explicit_override(capsys):
    assert main(["train", "--logit-stand", "DISTILLER.TYPE", "KD", "KD.TEMPERATURE", "4", *NO_DATA]) == 2
    err = capsys.readouterr().err
    assert "KD.TEMPERATURE" in err and "--base-temp" in err and "conflicts" in err
    assert main(["train", "--logit-stand", "--kd-weight", "5", "DISTILLER.TYPE", "KD", "KD.LOSS.KD_WEIGHT=3",
                 *NO_DATA]) == 2
    err = capsys.readouterr().err
    assert "KD.LOSS.KD_WEIGHT" in err and "--kd-weight 5" in err


def test_logit_stand_with_agreeing_values_applies():
    args = build_parser().parse_args(["train", "--logit-stand", "--base-temp", "4", "DISTILLER.TYPE", "KD",
                                      "KD.TEMPERATURE", "4"])
    cfg = cli._logit_stand(args, cli._load_cfg(args))
    assert cfg.EXPERIMENT.LOGIT_STAND and cfg.KD.TEMPERATURE == 4 and cfg.KD.LOSS.KD_WEIGHT == 9


@pytest.mark.parametrize("value", ["0", "-3"])
def test_log_interval_below_one_is_refused(value, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["train", "--log-interval", value])
    assert exc.value.code == 2 and "--log-interval: must be >= 1" in capsys.readouterr().err


# ---------------------------------------------------------------------------- 7. EXPERIMENT.DEVICE
def test_device_check_and_resolve_device_agree_on_mps():
    from sldistill.engine.distributed import resolve_device

    with pytest.raises(ConfigError) as exc:
        load_config(None, ["EXPERIMENT.DEVICE", "mps"])
    assert str(exc.value).endswith("valid: auto, cpu, cuda, cuda:N")
    with pytest.raises(ValueError):
        resolve_device("mps")
    assert str(load_config(None, ["EXPERIMENT.DEVICE", "cpu"]).EXPERIMENT.DEVICE) == "cpu"


# ---------------------------------------------------------------------------- 8. docs/cli.md
def test_cli_docs_are_up_to_date():
    assert (REPO / "docs" / "cli.md").read_text(encoding="utf-8") == cli_docs.render_cli_docs(), \
        "docs/cli.md is stale: run `python -m sldistill.engine.config.reference --write`"


def test_cli_docs_list_every_subcommand_and_option(monkeypatch):
    def add_extra(sub):
        p = sub.add_parser("zzz-extra", help="a test subcommand")
        p.add_argument("--brand-new-option", default=7, help="a new option")
        return p

    monkeypatch.setattr(cli, "SUBCOMMANDS", [*cli.SUBCOMMANDS, add_extra])
    text = cli_docs.render_cli_docs()
    assert "`sldistill zzz-extra`" in text and "| `--brand-new-option BRAND_NEW_OPTION` | `7` | a new option |" in text
    assert text != (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    for prog in ("train", "eval", "sweep", "teachers verify", "teacher-cache check"):
        assert f"`sldistill {prog}`" in text


def test_cli_docs_name_every_environment_variable_read():
    text = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    names = set()
    for path in (REPO / "sldistill").rglob("*.py"):
        names |= set(re.findall(r"os\.environ(?:\.get|\.setdefault)?[(\[]\s*\"([A-Z_]+)\"", path.read_text()))
    names |= {"SLDISTILL_TEACHER_ROOT", "WANDB_MODE"}
    assert names and not [n for n in sorted(names) if n not in text]
