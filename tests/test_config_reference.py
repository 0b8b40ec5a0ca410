"""The key reference (docs/configs.md) covers every key and is in step with the schema."""
from pathlib import Path

from sldistill.engine.config import SCHEMA
from sldistill.engine.config_reference import DESCRIPTIONS, render_markdown

DOC = Path(__file__).resolve().parents[1] / "docs" / "configs.md"


def test_every_schema_key_is_described_and_nothing_else():
    assert set(SCHEMA) - set(DESCRIPTIONS) == set(), "keys without a description"
    assert set(DESCRIPTIONS) - set(SCHEMA) == set(), "descriptions of keys that do not exist"
    assert all(len(v) > 10 for v in DESCRIPTIONS.values())


def test_rendered_page_lists_each_key_with_its_default():
    text = render_markdown()
    for key in SCHEMA:
        assert f"| `{key}` |" in text
    assert "| `SLD.GAMMA` | int | `150` |" in text
    assert "| `KD.TEMPERATURE` | float | `4` |" in text


def test_docs_configs_md_is_up_to_date():
    assert DOC.read_text() == render_markdown(), (
        "docs/configs.md is stale: run `python -m sldistill.engine.config_reference > docs/configs.md`")
