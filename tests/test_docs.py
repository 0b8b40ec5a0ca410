"""The documentation's Python snippets run, and the commands it shows exist."""
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"```python\n(.*?)```", re.S)


def _snippets():
    for doc in DOCS:
        for i, code in enumerate(FENCE.findall(doc.read_text())):
            yield pytest.param(code, id=f"{doc.name}[{i}]")


SNIPPETS = list(_snippets())


def test_the_readme_has_python_snippets():
    assert any("README" in p.id for p in SNIPPETS)


@pytest.mark.parametrize("code", SNIPPETS)
def test_snippet_runs(code, monkeypatch):
    from sldistill.distillers import base

    # a snippet may register a method: keep it out of the registry the other tests see
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    monkeypatch.setattr(base, "_CANONICAL", dict(base._CANONICAL))
    exec(compile(code, "<snippet>", "exec"), {"__name__": "__snippet__"})


def test_readme_starts_with_the_two_setup_commands():
    text = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]
    assert commands == ["bash scripts/demo.sh", "bash scripts/test.sh"]
    assert (REPO / ".ci" / "run").read_text().strip().splitlines()[-1] == "exec bash scripts/test.sh"
    for script in ("demo.sh", "test.sh", "env.sh"):
        assert (REPO / "scripts" / script).is_file()


def test_cli_subcommands_named_in_the_readme_exist():
    from sldistill.cli import build_parser

    text = (REPO / "README.md").read_text()
    shell = "\n".join(re.findall(r"```bash\n(.*?)```", text, re.S))
    named = set(re.findall(r"sldistill (\w+)", shell))
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert named and named <= set(sub.choices), named - set(sub.choices)


DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "configs" / "README.md"]
_VARS = {"$NODE_RANK": "0", "$MASTER": "127.0.0.1"}


def _sldistill_commands():
    """Every `sldistill ...` line (also after `torchrun ... -m`) in the docs' bash blocks."""
    import shlex

    for doc in DOC_FILES:
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split(" #")[0].strip()
                for var, value in _VARS.items():
                    line = line.replace(var, value)
                words = shlex.split(line) if line else []
                if "sldistill" in words:
                    args = words[words.index("sldistill") + 1:]
                    yield pytest.param(args, id=f"{doc.name}: {' '.join(args)[:60]}")


COMMANDS = list(_sldistill_commands())


def test_the_docs_show_commands():
    assert len(COMMANDS) > 10


@pytest.mark.parametrize("args", COMMANDS)
def test_documented_command_is_valid(args, capsys):
    """Each documented command parses; its config files resolve and load with its overrides;
    the cheap ones (listing commands) run."""
    from sldistill.cli import _load_cfg, build_parser, main

    parser = build_parser()
    try:
        parsed = parser.parse_args(args)
    except SystemExit as exc:
        assert exc.code == 0, capsys.readouterr().err
        return
    if parsed.command in ("train", "eval") and (getattr(parsed, "cfg", None) or parsed.opts):
        if parsed.command == "eval" and getattr(parsed, "run", None):
            return  # needs a finished run
        _load_cfg(parsed)  # the file is found and every override is a valid key and value
    if parsed.command == "sweep":
        from sldistill.engine.config import load_config

        for path in parsed.cfg:
            load_config(path, list(parsed.opts or []))
    if parsed.command in ("configs", "methods") or (parsed.command == "teachers" and args[1:2] == ["list"]):
        assert main(args) == 0


def test_scripts_that_write_committed_files_refuse_without_their_inputs(tmp_path):
    import shutil
    import subprocess
    import sys

    results = tmp_path / "docs" / "results"
    results.mkdir(parents=True)
    for name in ("fashion_mnist_runs.csv", "fashion_mnist_summary.csv"):
        shutil.copy(REPO / "docs" / "results" / name, results / name)
    before = {p.name: p.read_bytes() for p in results.iterdir()}
    res = subprocess.run([sys.executable, str(REPO / "docs" / "results" / "collect_fashion_mnist.py")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "nothing written" in res.stderr
    assert {p.name: p.read_bytes() for p in results.iterdir()} == before
