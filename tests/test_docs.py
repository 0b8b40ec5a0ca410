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
def test_snippet_runs(code):
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
