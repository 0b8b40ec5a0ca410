"""The distiller contract: key declarations checked at registration, forward_train's output and
the models' (logits, features) pair checked where the base class meets them, and the docs."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sldistill.distillers import Distiller, Key, base, register
from sldistill.options import merge_keys

REPO = Path(__file__).resolve().parents[1]
CLASSES, BATCH = 10, 4


@pytest.fixture
def registry(monkeypatch):
    """A copy of the registry, so that what a test registers does not leak into other tests."""
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    monkeypatch.setattr(base, "_CANONICAL", dict(base._CANONICAL))


def _declare(config):
    class Declares(Distiller):
        pass

    Declares.config = config
    return Declares


# ------------------------------------------------------------------ key declarations

@pytest.mark.parametrize("key", [Key(0.0, "t", gt=0), Key("z", "t", choices=("a", "b")), Key(-1, "t", ge=0),
                                 Key([3, 1], "t", increasing=True), Key("x", "t", kind="int")],
                         ids=["gt", "choices", "sentinel", "increasing", "kind"])
def test_a_default_breaking_its_own_declaration_is_refused_at_registration(registry, key):
    with pytest.raises(ValueError, match=r"Declares.*CONTRACT\.T.*default"):
        register("CONTRACT")(_declare({"CONTRACT.T": key}))
    assert "CONTRACT" not in base.available_distillers()


def test_every_declared_default_passes_its_own_declaration():
    from sldistill.engine.config import schema

    bad = {name: key.default_problem() for name, key in schema().items() if key.default_problem()}
    assert not bad


def test_a_key_that_is_also_a_section_is_refused_at_registration(registry):
    cls = _declare({"CONTRACT.T": Key(4.0, "t"), "CONTRACT.T.X": Key(1.0, "x")})
    with pytest.raises(ValueError, match=r"CONTRACT\.T\b.*CONTRACT\.T\.X"):
        register("CONTRACT")(cls)


def test_a_key_below_another_owners_key_names_both_owners():
    with pytest.raises(ValueError, match=r"SOLVER\.LR \(declared by engine\).*SOLVER\.LR\.X \(declared by MINE\)"):
        merge_keys(("engine", {"SOLVER.LR": Key(0.05, "lr")}), ("MINE", {"SOLVER.LR.X": Key(1.0, "x")}))


def test_kind_is_inferred_from_the_literal_and_can_be_given():
    assert Key(4, "t").kind == "int" and Key(4.0, "t").kind == "float"
    assert Key(4, "t", kind="float").coerce(2.5) == 2.5
    with pytest.raises(TypeError):
        Key(4, "t").coerce(2.5)


# ------------------------------------------------------------------ forward_train's output

class _Net(nn.Module):
    """A tiny model; ``bare=True`` breaks the contract by returning the logits alone."""

    def __init__(self, bare: bool = False) -> None:
        super().__init__()
        self.fc = nn.Linear(3, CLASSES)
        self.bare = bare

    def forward(self, x):
        logits = self.fc(x)
        return logits if self.bare else (logits, {"pooled_feat": x})


class Returns(Distiller):
    """Returns whatever ``make(logits, target)`` builds."""

    def __init__(self, make, teacher=None):
        super().__init__(_Net(), teacher if teacher is not None else _Net(), cfg=None)
        self.make = make

    def forward_train(self, views, target, epoch, **extras):
        logits, _ = self.student(views[0])
        (t_logits, _), = self.teacher_forward(views[:1], features=False)
        return self.make(logits, target)


def _step(distiller):
    x, y = torch.randn(BATCH, 3), torch.arange(BATCH) % CLASSES
    return distiller.train()([x], y, 1)


def test_a_good_output_passes():
    logits, terms = _step(Returns(lambda lg, y: (lg, {"loss_ce": F.cross_entropy(lg, y)})))
    assert logits.shape == (BATCH, CLASSES) and set(terms) == {"loss_ce"}


BAD_OUTPUTS = {
    "vector term": (lambda lg, y: (lg, {"loss_ce": F.cross_entropy(lg, y, reduction="none")}), ValueError, "loss_ce"),
    "shape-1 term": (lambda lg, y: (lg, {"loss_ce": F.cross_entropy(lg, y).reshape(1)}), ValueError, "loss_ce"),
    "float term": (lambda lg, y: (lg, {"loss_ce": 0.5}), TypeError, "loss_ce"),
    "None term": (lambda lg, y: (lg, {"loss_ce": None}), TypeError, "loss_ce"),
    "integer term": (lambda lg, y: (lg, {"loss_ce": torch.tensor(1)}), TypeError, "loss_ce"),
    "nested dict": (lambda lg, y: (lg, {"loss_kd": {"a": F.cross_entropy(lg, y)}}), TypeError, "loss_kd"),
    "empty dict": (lambda lg, y: (lg, {}), ValueError, "no loss terms"),
    "bare tensor": (lambda lg, y: lg, TypeError, "pair"),
    "3-tuple": (lambda lg, y: (lg, {"loss_ce": F.cross_entropy(lg, y)}, 1), TypeError, "pair"),
    "terms not a dict": (lambda lg, y: (lg, [F.cross_entropy(lg, y)]), TypeError, "dict"),
    "non-str name": (lambda lg, y: (lg, {0: F.cross_entropy(lg, y)}), ValueError, "loss_"),
    "name without loss_": (lambda lg, y: (lg, {"kd": F.cross_entropy(lg, y)}), ValueError, "'kd'.*loss_"),
    "logits not a tensor": (lambda lg, y: (None, {"loss_ce": F.cross_entropy(lg, y)}), TypeError, "logits"),
    "wrong class count": (lambda lg, y: (lg[:, :5], {"loss_ce": F.cross_entropy(lg, y)}), ValueError,
                          rf"\[{BATCH}, 5\].*\[{BATCH}, {CLASSES}\]"),
    "wrong batch": (lambda lg, y: (lg[:2], {"loss_ce": F.cross_entropy(lg, y)}), ValueError, r"\[2, 10\]"),
    "1-d logits": (lambda lg, y: (lg[:, 0], {"loss_ce": F.cross_entropy(lg, y)}), ValueError, "shape"),
}


@pytest.mark.parametrize("make, error, names", BAD_OUTPUTS.values(), ids=BAD_OUTPUTS.keys())
def test_a_bad_output_is_refused_naming_the_class_and_what_was_expected(make, error, names):
    with pytest.raises(error, match=rf"Returns\.forward_train.*{names}"):
        _step(Returns(make))


def test_the_class_count_is_taken_from_the_teacher():
    d = Returns(lambda lg, y: (lg, {"loss_ce": F.cross_entropy(lg, y)}))
    assert d.num_classes is None
    _step(d)
    assert d.num_classes == CLASSES


# ------------------------------------------------------------------ the models' contract

def test_a_teacher_breaking_the_model_contract_is_named():
    d = Returns(lambda lg, y: (lg, {"loss_ce": F.cross_entropy(lg, y)}), teacher=_Net(bare=True))
    with pytest.raises(TypeError, match=r"teacher \(_Net\).*\(logits, features\)"):
        _step(d)


def test_a_student_breaking_the_model_contract_is_named():
    d = Returns(lambda lg, y: (lg, {}))
    d.student = _Net(bare=True)
    with pytest.raises(TypeError, match=r"student \(_Net\).*\(logits, features\)"):
        d.student_forward([torch.randn(BATCH, 3)])
    with pytest.raises(TypeError, match=r"student \(_Net\).*\(logits, features\)"):
        d.eval()(torch.randn(BATCH, 3))


# ------------------------------------------------------------------ docs/contributing.md

def test_contributing_documents_the_contract():
    text = (REPO / "docs" / "contributing.md").read_text()
    assert "kind=" in text and "`4` an int" in text  # the inference and how to override it
    assert "`__all__`" in text  # a new loss must be listed to be losses.<name>
    assert "| published: none" in text  # the YAML header line
    assert "start with `loss_`" in text  # the term names
