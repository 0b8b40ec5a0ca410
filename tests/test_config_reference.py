"""The key reference (docs/configs.md) is derived from the declarations and in step with them."""
from pathlib import Path

import pytest

from sldistill.distillers import Distiller, Key, register
from sldistill.distillers import base as distillers_base
from sldistill.engine.config import get_defaults, schema
from sldistill.engine.config.reference import render_markdown

DOC = Path(__file__).resolve().parents[1] / "docs" / "configs.md"


def test_every_key_has_a_description_and_a_default():
    keys = schema()
    assert len(keys) > 100
    for name, key in keys.items():
        assert len(key.help) > 10, f"{name} has no real description"
        assert key.problem(key.coerce(key.default)) is None, f"{name}'s default is not valid"


def test_defaults_are_the_declared_ones():
    cfg = get_defaults()
    assert cfg.SLD.GAMMA == 150 and cfg.SLD.TEMPERATURES == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert cfg.KD.TEMPERATURE == 4.0 and isinstance(cfg.KD.TEMPERATURE, float)
    assert cfg.SOLVER.LR_DECAY_STAGES == [150, 180, 210]
    assert cfg.DATASET.TYPE == "cifar100"
    assert get_defaults("logit-standardization").KD.LOSS.KD_WEIGHT == 9.0


def test_rendered_pages_list_each_key_with_its_default():
    from sldistill.engine.config.reference import render_method_keys

    text = render_markdown() + "\n".join(render_method_keys(n) for n in _trainable_methods())
    for name in schema():
        assert f"| `{name}` |" in text, name
    assert "| `SLD.GAMMA` | int | `150` | >= 0 |" in text
    assert "| `KD.TEMPERATURE` | float | `4.0` | > 0 |" in text
    assert "| `SOLVER.LR` | float | `0.05` | >= 0 |" in render_markdown()


def test_dataset_type_names_every_built_in_dataset():
    import subprocess
    import sys

    # in a fresh interpreter, importing only the schema: the help must not depend on import order
    code = "from sldistill.engine.config import schema; print(schema()['DATASET.TYPE'].help)"
    text = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    from sldistill.data import available_datasets

    assert available_datasets(), "no dataset registered"
    for name in available_datasets():
        assert f"`{name}`" in text, (name, text)


def test_docs_configs_md_is_up_to_date():
    assert DOC.read_text() == render_markdown(), (
        "docs/configs.md is stale: run `python -m sldistill.engine.config.reference --write`")


def test_a_registered_distiller_adds_its_keys_and_conflicts_are_refused(monkeypatch):
    monkeypatch.setattr(distillers_base, "_REGISTRY", dict(distillers_base._REGISTRY))
    monkeypatch.setattr(distillers_base, "_CANONICAL", dict(distillers_base._CANONICAL))

    @register("REFTEST")
    class RefTest(Distiller):
        """A method that only exists in this test."""
        config = {"REFTEST.ALPHA": Key(0.5, "A weight that only exists in this test.", ge=0)}

    from sldistill.engine.config.reference import render_method_keys

    assert schema()["REFTEST.ALPHA"].default == 0.5
    assert "| `REFTEST.ALPHA` | float | `0.5` | >= 0 |" in render_method_keys("REFTEST")
    assert "REFTEST" not in render_markdown()  # a new method leaves docs/configs.md as it is
    assert get_defaults().REFTEST.ALPHA == 0.5

    with pytest.raises(ValueError, match=r"KD\.TEMPERATURE is declared differently"):
        @register("REFTEST2")
        class Clash(Distiller):
            config = {"KD.TEMPERATURE": Key(3.0, "A clashing declaration of a shared key.")}
    with pytest.raises(ValueError, match="registered twice"):
        register("KD")(RefTest)


METHODS_DOC = DOC.parent / "methods.md"


def _trainable_methods() -> list[str]:
    from sldistill.distillers import Unreleased, available_distillers, get_distiller_class

    return [n for n in available_distillers(aliases=False) if not issubclass(get_distiller_class(n), Unreleased)]


def test_every_registered_method_has_its_section_and_key_table():
    """Runs over the registry: a method registered without a docs/methods.md section fails."""
    from sldistill.engine.config.reference import METHOD_KEYS_RE

    text = METHODS_DOC.read_text()
    headings = {line[3:].split(":")[0].strip() for line in text.splitlines() if line.startswith("## ")}
    blocks = {m["name"] for m in METHOD_KEYS_RE.finditer(text)}
    for name in _trainable_methods():
        assert name in headings, f"docs/methods.md has no '## {name}' section"
        assert name in blocks, f"docs/methods.md's {name} section has no '<!-- keys {name} -->' block"


def test_docs_methods_md_key_tables_are_up_to_date():
    from sldistill.engine.config.reference import update_methods_doc

    text = METHODS_DOC.read_text()
    assert update_methods_doc(text) == text, (
        "docs/methods.md key tables are stale: run `python -m sldistill.engine.config.reference --write`")


def test_a_method_without_its_section_is_caught(monkeypatch):
    monkeypatch.setattr(distillers_base, "_REGISTRY", dict(distillers_base._REGISTRY))
    monkeypatch.setattr(distillers_base, "_CANONICAL", dict(distillers_base._CANONICAL))

    @register("UNDOCUMENTED")
    class Undocumented(Distiller):
        """Registered in this test only."""

    with pytest.raises(AssertionError, match="no '## UNDOCUMENTED' section"):
        test_every_registered_method_has_its_section_and_key_table()
