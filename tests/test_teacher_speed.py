"""The BN-folded teacher forward (``SOLVER.FOLD_TEACHER_BN``): same outputs, untouched teacher,
fallback for models that cannot be folded, rebuild after the teacher changes, key off."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from sldistill import models
from sldistill.distillers import base, build_distiller
from sldistill.engine.config import get_defaults


def _cfg(kind: str = "SLD", fold: bool = True):
    cfg = get_defaults()
    cfg.DISTILLER.TYPE = kind
    cfg.SOLVER.FOLD_TEACHER_BN = fold
    return cfg


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so folding really changes weights."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def _leaves(x):
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, dict):
        return [t for k in x for t in _leaves(x[k])]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _leaves(v)]
    return []


def _assert_close(a, b, rel: float = 1e-4) -> None:
    la, lb = _leaves(a), _leaves(b)
    assert len(la) == len(lb) and len(la) >= 1
    for u, v in zip(la, lb):
        assert u.shape == v.shape
        scale = u.abs().max().clamp_min(1e-6)
        assert float((u - v).abs().max() / scale) <= rel


def _n_bn(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


# resnet: traced with torch.fx; vgg8: untraceable (branches on the input size), folded
# eagerly inside its nn.Sequential blocks; wrn: pre-activation, so only the BNs after a conv fold
@pytest.mark.parametrize("name, bn_left", [("resnet8x4", 0), ("vgg8", 0), ("wrn_16_1", 7)])
def test_folded_copy_gives_same_logits_and_features(name: str, bn_left: int) -> None:
    torch.manual_seed(0)
    teacher = _randomise_bn(models.create(name, num_classes=10))
    n_before = _n_bn(teacher)
    folded = base.fold_batchnorm(teacher)
    assert _n_bn(folded) == bn_left < n_before
    assert _n_bn(teacher) == n_before
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref, out = teacher(x), folded(x)
    assert set(out[1]) == set(ref[1])
    _assert_close(ref, out)
    assert not any(p.requires_grad for p in folded.parameters())


def test_teacher_state_and_bn_modules_untouched() -> None:
    teacher = _randomise_bn(models.create("resnet8x4", num_classes=10))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    bns = list(teacher.get_bn_before_relu())
    d = build_distiller(_cfg("OFD"), models.create("resnet8", num_classes=10), teacher)
    keys_before = list(d.state_dict())
    x = torch.randn(2, 3, 32, 32)
    (logits, feats), = d.teacher_forward([x])
    assert d.forward_teacher_module(x) is not d.teacher  # the folded copy ran
    after = d.teacher.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [id(m) for m in d.teacher.get_bn_before_relu()] == [id(m) for m in bns]
    assert all(isinstance(m, nn.BatchNorm2d) for m in d.teacher.modules() if "bn" in type(m).__name__.lower())
    assert list(d.state_dict()) == keys_before  # the folded copy is not part of the state
    assert not any(n.startswith("_folded") for n, _ in d.named_modules())
    with torch.no_grad():
        _assert_close(teacher(x), (logits, feats))


def test_two_views_match_unfolded_and_separate_forwards() -> None:
    teacher = _randomise_bn(models.create("resnet8x4", num_classes=10), seed=3)
    d_on = build_distiller(_cfg(fold=True), models.create("resnet8", num_classes=10), copy.deepcopy(teacher))
    d_off = build_distiller(_cfg(fold=False), models.create("resnet8", num_classes=10), copy.deepcopy(teacher))
    v = [torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)]
    out_on, out_off = d_on.teacher_forward(v), d_off.teacher_forward(v)
    assert d_off.forward_teacher_module(v[0]) is d_off.teacher
    assert d_on.forward_teacher_module(v[0]) is not d_on.teacher
    for a, b in zip(out_off, out_on):
        _assert_close(a, b)
    with torch.no_grad():
        assert torch.equal(out_off[1][0], teacher(v[1])[0])


def test_key_off_never_folds(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(model):
        raise AssertionError("fold_batchnorm must not be called with SOLVER.FOLD_TEACHER_BN false")

    monkeypatch.setattr(base, "fold_batchnorm", boom)
    teacher = _randomise_bn(models.create("resnet8", num_classes=10))
    d = build_distiller(_cfg(fold=False), models.create("resnet8", num_classes=10), teacher)
    x = torch.randn(2, 3, 32, 32)
    (logits, _), = d.teacher_forward([x])
    with torch.no_grad():
        assert torch.equal(logits, teacher(x)[0])


class _Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        h = self.bn(self.conv(x))
        if h.sum() > 0:
            h = h * 2
        f = h.mean((2, 3))
        return self.fc(f), {"feats": [h], "preact_feats": [h], "pooled_feat": f}


class _HookFeatures(nn.Module):
    """Collects its feature through a forward hook: traces, but the traced copy loses it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        seen = []
        handle = self.bn.register_forward_hook(lambda m, i, o: seen.append(o))
        try:
            f = self.bn(self.conv(x)).mean((2, 3))
        finally:
            handle.remove()
        return self.fc(f), {"feats": list(seen), "preact_feats": [], "pooled_feat": f}


@pytest.mark.parametrize("cls, reason", [(_Untraceable, "cannot be traced"), (_HookFeatures, "does not reproduce")])
def test_unfoldable_teacher_falls_back_with_one_notice(cls, reason: str) -> None:
    torch.manual_seed(0)
    teacher = _randomise_bn(cls())
    d = build_distiller(_cfg("KD"), models.create("resnet8", num_classes=5), teacher)
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (logits, feats), = d.teacher_forward([x])
        d.teacher_forward([x])  # no second attempt, no second notice
    notices = [w for w in caught if "FOLD_TEACHER_BN" in str(w.message)]
    assert len(notices) == 1 and reason in str(notices[0].message)
    assert "\n" not in str(notices[0].message)
    assert d.forward_teacher_module(x) is d.teacher
    with torch.no_grad():
        ref = teacher(x)
    assert torch.equal(logits, ref[0]) and len(feats["feats"]) == len(ref[1]["feats"]) == 1


def test_folded_copy_rebuilt_after_teacher_changes() -> None:
    teacher = _randomise_bn(models.create("resnet8", num_classes=10), seed=1)
    d = build_distiller(_cfg(), models.create("resnet8", num_classes=10), teacher)
    x = torch.randn(2, 3, 32, 32)
    first = d.teacher_forward([x])[0][0]
    folded = d.forward_teacher_module(x)
    assert d.forward_teacher_module(x) is folded  # cached while nothing changes
    # weights loaded after construction (as a checkpoint load would)
    other = _randomise_bn(models.create("resnet8", num_classes=10), seed=2)
    d.teacher.load_state_dict(other.state_dict())
    second = d.teacher_forward([x])[0][0]
    with torch.no_grad():
        expected = other(x)[0]
    assert not torch.allclose(first, second)
    _assert_close(expected, second)
    # memory-layout conversion (the trainer's channels_last) also rebuilds, in that layout
    d.to(memory_format=torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last)
    third = d.teacher_forward([xc])[0][0]
    rebuilt = d.forward_teacher_module(xc)
    assert rebuilt is not folded
    w = next(p for p in rebuilt.parameters() if p.dim() == 4 and p.shape[-1] > 1)
    assert w.is_contiguous(memory_format=torch.channels_last)
    _assert_close(expected, third)


def test_relu_in_place_only_on_private_tensors() -> None:
    teacher = _randomise_bn(models.create("resnet8x4", num_classes=10))
    folded = base.fold_batchnorm(teacher)
    import torch.nn.functional as F

    inplace = [n for n in folded.graph.nodes if n.op == "call_function" and n.target is F.relu
               and n.kwargs.get("inplace")]
    assert inplace  # some were made in place
    output = next(n for n in folded.graph.nodes if n.op == "output")
    for n in inplace:
        assert len(n.args[0].users) == 1
        assert n.args[0] not in output.all_input_nodes
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _assert_close(teacher(x), folded(x))  # preact features not overwritten by the in-place ReLUs


def test_distiller_trains_with_folded_teacher_feature_loss() -> None:
    """A feature distiller whose loss reads teacher features: backward works and the student
    gradient equals the unfolded run's."""
    torch.manual_seed(0)
    teacher = _randomise_bn(models.create("resnet8x4", num_classes=10))
    student = models.create("resnet8x4", num_classes=10)
    grads = []
    for fold in (True, False):
        torch.manual_seed(1)
        d = build_distiller(_cfg("AT", fold=fold), copy.deepcopy(student), copy.deepcopy(teacher)).train()
        x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
        _, terms = d.forward_train([x], y, epoch=1)
        sum(terms.values()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in d.student.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- SOLVER.TEACHER_CHUNK


def _chunk_cfg(kind: str, chunk: int):
    cfg = _cfg(kind)
    cfg.SOLVER.TEACHER_CHUNK = chunk
    return cfg


@pytest.mark.parametrize("chunk", [1, 3, 32])
def test_chunked_teacher_forward_equals_whole_batch(chunk: int) -> None:
    """Micro-batches (a partial last one included) give the whole-batch logits and features,
    split per view exactly as before."""
    teacher = _randomise_bn(models.create("resnet8x4", num_classes=10), seed=4)
    whole = build_distiller(_chunk_cfg("OFD", 0), models.create("resnet8", num_classes=10), copy.deepcopy(teacher))
    parts = build_distiller(_chunk_cfg("OFD", chunk), models.create("resnet8", num_classes=10), copy.deepcopy(teacher))
    v = [torch.randn(4, 3, 32, 32), torch.randn(3, 3, 32, 32)]
    ref, out = whole.teacher_forward(v), parts.teacher_forward(v)
    assert len(out) == 2
    for (la, fa), (lb, fb), view in zip(ref, out, v):
        assert la.shape == lb.shape == (view.shape[0], 10)
        assert fa.keys() == fb.keys()
        assert [t.shape for t in fa["feats"]] == [t.shape for t in fb["feats"]]
        _assert_close((la, fa), (lb, fb), rel=1e-5)


def test_teacher_chunk_calls_and_auto_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    teacher = models.create("resnet8", num_classes=10)
    d = build_distiller(_chunk_cfg("SLD", 3), models.create("resnet8", num_classes=10), teacher)
    calls = []
    module = d.forward_teacher_module(torch.randn(2, 3, 32, 32))
    monkeypatch.setattr(d, "forward_teacher_module", lambda x: (lambda part: calls.append(part.shape[0]) or module(part)))
    (lw, fw), (ls, fs) = d.teacher_forward([torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)], features=False)
    assert calls == [3, 3, 2] and lw.shape == ls.shape == (4, 10) and fw == fs == {}
    auto = build_distiller(_chunk_cfg("SLD", -1), models.create("resnet8", num_classes=10), teacher)
    assert auto.teacher_chunk_rows(torch.zeros(1)) == base.CPU_TEACHER_CHUNK
    assert auto.teacher_chunk_rows(torch.zeros(1, device="meta")) == 0  # accelerators: whole batch
    assert auto.teacher_chunk_rows(torch.zeros(1, dtype=torch.bfloat16)) == 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert auto.teacher_chunk_rows(torch.zeros(1)) == 0  # bf16 kernels prefer the whole batch
    assert build_distiller(_chunk_cfg("SLD", 0), models.create("resnet8", num_classes=10),
                           teacher).teacher_chunk_rows(torch.zeros(1)) == 0


@pytest.mark.parametrize("bad", [-2, 1.5, True, "8"])
def test_bad_teacher_chunk_is_refused(bad) -> None:
    with pytest.raises(ValueError, match=r"SOLVER\.TEACHER_CHUNK.*got"):
        build_distiller(_chunk_cfg("SLD", bad), models.create("resnet8", num_classes=10),
                        models.create("resnet8", num_classes=10))


def test_bad_teacher_chunk_in_config_names_the_key() -> None:
    from sldistill.engine.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"SOLVER\.TEACHER_CHUNK"):
        load_config(None, ["SOLVER.TEACHER_CHUNK", "-3"])
