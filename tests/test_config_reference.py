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


def test_rendered_page_lists_each_key_with_its_default():
    text = render_markdown()
    for name in schema():
        assert f"| `{name}` |" in text
    assert "| `SLD.GAMMA` | int | `150` | >= 0 |" in text
    assert "| `KD.TEMPERATURE` | float | `4.0` | > 0 |" in text


def test_docs_configs_md_is_up_to_date():
    assert DOC.read_text() == render_markdown(), (
        "docs/configs.md is stale: run `python -m sldistill.engine.config.reference > docs/configs.md`")


def test_a_registered_distiller_adds_its_keys_and_conflicts_are_refused(monkeypatch):
    monkeypatch.setattr(distillers_base, "_REGISTRY", dict(distillers_base._REGISTRY))
    monkeypatch.setattr(distillers_base, "_CANONICAL", dict(distillers_base._CANONICAL))

    @register("REFTEST")
    class RefTest(Distiller):
        """A method that only exists in this test."""
        config = {"REFTEST.ALPHA": Key(0.5, "A weight that only exists in this test.", ge=0)}

    assert schema()["REFTEST.ALPHA"].default == 0.5
    assert "| `REFTEST.ALPHA` | float | `0.5` | >= 0 |" in render_markdown()
    assert get_defaults().REFTEST.ALPHA == 0.5

    with pytest.raises(ValueError, match=r"KD\.TEMPERATURE is declared differently"):
        @register("REFTEST2")
        class Clash(Distiller):
            config = {"KD.TEMPERATURE": Key(3.0, "A clashing declaration of a shared key.")}
    with pytest.raises(ValueError, match="registered twice"):
        register("KD")(RefTest)
