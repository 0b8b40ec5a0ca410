"""Model zoo: signatures against the published checkpoints' layout, the feature contract,
forward/backward on CPU, names and families, wrappers."""
from __future__ import annotations

import logging
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sldistill.models import WrappedModel, available_models, create, load_weights
from sldistill.models.cifar.shufflenet import channel_shuffle

# the registry drives the contract tests: a model is checked the moment it is registered
from sldistill.models import imagenet as _imagenet  # noqa: E402

CIFAR = available_models("cifar100")
IMAGENET = [n for n in available_models("imagenet") if n not in _imagenet.ALIASES]
ALL = [("cifar100", n) for n in CIFAR] + [("imagenet", n) for n in IMAGENET]
DOC = Path(__file__).resolve().parents[1] / "docs" / "models.md"


def test_every_registered_model_is_documented():
    text = DOC.read_text()
    missing = [f"{d}:{n}" for d, n in ALL if f"| `{n}` |" not in text]
    assert not missing, f"docs/models.md lacks a row for {missing}"

IDS = [f"{d}-{n}" for d, n in ALL]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    torch.manual_seed(0)


def _randomize_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)


def _shapes(ts):
    return [list(t.shape) for t in ts]


@pytest.mark.parametrize("dataset,name", ALL, ids=IDS)
def test_signature_and_feature_contract(dataset, name, model_signatures):
    if name not in model_signatures[dataset]:
        pytest.skip(f"no published reference signature for {dataset}:{name} (not a released model); "
                    "test_forward_backward_train_and_eval checks its contract")
    sig = model_signatures[dataset][name]
    num_classes = sig["logits"][1]
    model = create(name, num_classes, dataset).eval()
    assert [[k, list(v.shape)] for k, v in model.state_dict().items()] == sig["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == sig["num_parameters"]

    size = 224 if dataset == "imagenet" else 32
    with torch.no_grad():
        logits, feats = model(torch.randn(2, 3, size, size))
    assert list(logits.shape) == sig["logits"]
    assert set(feats) == {"feats", "preact_feats", "pooled_feat"}
    assert _shapes(feats["feats"]) == sig["features"]["feats"]
    # the published CIFAR MobileNetV2 returns no preact_feats; ours repeats feats (linear bottlenecks)
    assert _shapes(feats["preact_feats"]) == sig["features"].get("preact_feats", sig["features"]["feats"])
    assert list(feats["pooled_feat"].shape) == sig["features"]["pooled_feat"]

    feat_channels = [t.shape[1] for t in feats["feats"]]
    assert model.get_feat_channels() == feat_channels
    # published stage channels; where the release defines none (ShuffleV1), the feats' channels
    assert model.get_stage_channels() == (sig["stage_channels"] if sig["stage_channels"] is not None else feat_channels)
    assert isinstance(model.get_feat_modules(), nn.ModuleList) and len(model.get_feat_modules()) > 0

    if name.startswith("Shuffle"):
        with pytest.raises(NotImplementedError, match="OFD"):
            model.get_bn_before_relu()
    else:
        bns = model.get_bn_before_relu()
        pre = feats["preact_feats"]
        assert all(isinstance(b, nn.BatchNorm2d) for b in bns)
        # one BN for each preact entry from the second on (MobileNetV1 has no stem entry: all four)
        assert len(bns) >= len(pre) - 1
        assert [b.num_features for b in bns] == [t.shape[1] for t in pre[len(pre) - len(bns):]]


def _capture_outputs(modules, fn):
    outs = []
    hs = [m.register_forward_hook(lambda _m, _i, o: outs.append(o)) for m in modules]
    try:
        fn()
    finally:
        for h in hs:
            h.remove()
    return outs


@pytest.mark.parametrize("dataset,name", [("cifar100", "vgg8"), ("cifar100", "wrn_16_2"), ("imagenet", "MobileNetV1")])
def test_bn_before_relu_produces_preact_feats(dataset, name):
    """Where a stage's pre-activation is a BN output, get_bn_before_relu returns that very BN."""
    model = create(name, 10, dataset).eval()
    _randomize_bn(model)
    size = 64 if dataset == "imagenet" else 32
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        holder = {}
        outs = _capture_outputs(model.get_bn_before_relu(), lambda: holder.update(out=model(x)))
    pre = holder["out"][1]["preact_feats"]
    pre = pre[len(pre) - len(outs):]
    for o, p in zip(outs, pre):
        torch.testing.assert_close(o, p, rtol=0, atol=0)


def test_wrn_preact_bn_runs_once_per_forward():
    """The pre-activation BNs are computed once (the release recomputes them, updating their
    running statistics twice per training step)."""
    model = create("wrn_16_1", 10).train()
    model(torch.randn(2, 3, 32, 32))
    assert [int(b.num_batches_tracked) for b in model.get_bn_before_relu()] == [1, 1, 1]


@pytest.mark.parametrize("dataset,name", ALL, ids=IDS)
def test_forward_backward_train_and_eval(dataset, name):
    size = 64 if dataset == "imagenet" else 32
    model = create(name, 7, dataset)
    x = torch.randn(2, 3, size, size)
    model.train()
    logits, feats = model(x)
    assert logits.shape == (2, 7)
    loss = F.cross_entropy(logits, torch.tensor([1, 3])) + feats["feats"][-1].pow(2).mean() + feats["pooled_feat"].mean()
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    model.eval()
    with torch.no_grad():
        a, fa = model(x)
        b, _ = model(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # eval mode is deterministic
    assert torch.isfinite(a).all() and all(torch.isfinite(t).all() for t in fa["feats"])


@pytest.mark.parametrize("name", ["resnet8x4", "ShuffleV2", "MobileNetV2", "wrn_16_2"])
def test_channels_last_gives_same_outputs(name):
    model = create(name, 10).eval()
    _randomize_bn(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref, _ = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        out, feats = model_cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert feats["pooled_feat"].shape[0] == 2


def test_num_classes_and_input_sizes():
    assert create("resnet8", 10)(torch.randn(2, 3, 32, 32))[0].shape == (2, 10)
    assert create("resnet8")(torch.randn(2, 3, 32, 32))[0].shape == (2, 100)
    # tiny-imagenet-sized inputs work in the CIFAR family (global pooling)
    logits, feats = create("ResNet18", 200, "tiny_imagenet").eval()(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 200) and feats["feats"][-1].shape[-1] == 8
    with pytest.raises(ValueError, match="num_classes"):
        create("resnet8", 0)


def test_vgg_pools_before_block4_only_for_64_pixel_inputs():
    model = create("vgg8", 10).eval()
    with torch.no_grad():
        f32 = model(torch.randn(2, 3, 32, 32))[1]["feats"]
        f64 = model(torch.randn(2, 3, 64, 64))[1]["feats"]
    assert f32[3].shape[-1] == f32[4].shape[-1] == 4
    assert f64[3].shape[-1] == 8 and f64[4].shape[-1] == 4


def test_shufflev2_preact_is_before_relu_and_shuffle():
    model = create("ShuffleV2", 10).eval()
    _randomize_bn(model)
    with torch.no_grad():
        _, f = model(torch.randn(2, 3, 32, 32))
    for pre, feat in zip(f["preact_feats"][1:], f["feats"][1:]):
        torch.testing.assert_close(channel_shuffle(F.relu(pre), 2), feat, rtol=0, atol=0)
        assert (pre < 0).any()


def test_channel_shuffle_permutation():
    x = torch.arange(6.0).reshape(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]
    assert channel_shuffle(x, 3).flatten().tolist() == [0, 2, 4, 1, 3, 5]


@pytest.mark.parametrize("dataset", ["cifar100", "fashion_mnist", "tiny_imagenet", "folder"])
def test_every_non_imagenet_dataset_selects_cifar_family(dataset):
    model = create("ResNet18", 10, dataset)
    assert model.conv1.kernel_size == (3, 3)
    assert available_models(dataset) == available_models("cifar100")


def test_imagenet_family_and_mobilenetv2_alias(caplog):
    assert create("ResNet18", 10, "imagenet").conv1.kernel_size == (7, 7)
    with caplog.at_level(logging.WARNING, logger="sldistill.models"):
        model = create("MobileNetV2", 10, "imagenet")
    assert type(model).__name__ == "MobileNetV1"
    notices = [r.getMessage() for r in caplog.records if "MobileNetV1" in r.getMessage()]
    assert len(notices) == 1 and "\n" not in notices[0]
    assert type(create("MobileNetV2", 10, "cifar100")).__name__ == "MobileNetV2"


def test_unknown_names_list_valid_names_and_suggest():
    with pytest.raises(ValueError) as e:
        create("resnet33", 10)
    msg = str(e.value)
    assert "resnet33" in msg and "resnet32" in msg.split("Valid")[0] and "wrn_40_2" in msg
    with pytest.raises(ValueError, match="imagenet family"):
        create("ResNet34", 10, "cifar100")
    with pytest.raises(ValueError, match="MobileNetV1"):
        create("vgg8", 10, "imagenet")
    with pytest.raises(ValueError, match="resnet18"):
        create("torchvision:resnet81", 10)


@pytest.mark.parametrize("tv_name,name", [("resnet18", "ResNet18"), ("resnet50", "ResNet50")])
def test_imagenet_resnet_loads_torchvision_weight_files(tv_name, name, tmp_path):
    import torchvision

    tv = torchvision.models.get_model(tv_name).eval()
    _randomize_bn(tv)
    path = tmp_path / f"{tv_name}.pth"
    torch.save(tv.state_dict(), path)  # the layout of torchvision's weight files
    ours = create(name, 1000, "imagenet").eval()
    report = load_weights(ours, path)
    assert report.ok and report.loaded == len(tv.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = tv(x)
        out, feats = ours(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert feats["pooled_feat"].shape == (2, tv.fc.in_features)


def test_torchvision_wrapper_contract_and_weights(tmp_path):
    model = create("torchvision:resnet18", 10, "cifar100")
    assert isinstance(model, WrappedModel)
    logits, feats = model.eval()(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10)
    # stem and stages with maps larger than 1x1 (layer4 is 1x1 at 32x32 input)
    assert _shapes(feats["feats"]) == [[2, 64, 16, 16], [2, 64, 8, 8], [2, 128, 4, 4], [2, 256, 2, 2]]
    assert feats["pooled_feat"].shape == (2, 512)
    assert model.get_stage_channels() == [64, 64, 128, 256]
    # the wrapped network's own weight file loads into the wrapper
    import torchvision

    net = torchvision.models.resnet18(num_classes=10)
    torch.save(net.state_dict(), tmp_path / "tv.pth")
    load_weights(model, tmp_path / "tv.pth")
    torch.testing.assert_close(model.wrapped.fc.weight, net.fc.weight, rtol=0, atol=0)
    with pytest.raises(NotImplementedError):
        model.get_bn_before_relu()


def test_torchvision_wrapper_features_sequential_models():
    model = create("torchvision:mobilenet_v3_small", 5, "imagenet").eval()
    with torch.no_grad():
        logits, feats = model(torch.randn(2, 3, 64, 64))
    sizes = [t.shape[-1] for t in feats["feats"]]
    assert logits.shape == (2, 5) and sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)
    assert feats["pooled_feat"].shape == (2, model.wrapped.classifier[-1].in_features)


def test_callable_models(tmp_path, monkeypatch):
    (tmp_path / "my_nets.py").write_text(textwrap.dedent('''
        import torch
        from torch import nn

        def plain(num_classes=3):
            return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten(), nn.Linear(4, num_classes))

        def no_args():
            return nn.Sequential(nn.Flatten(), nn.Linear(12, 2))

        def not_a_module(num_classes):
            return 3
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    model = create("my_nets:plain", 6)
    logits, feats = model(torch.randn(2, 3, 8, 8))
    assert logits.shape == (2, 6) and _shapes(feats["feats"]) == [[2, 4, 8, 8]]
    assert feats["pooled_feat"].shape == (2, 4)
    assert create("my_nets:no_args", 6)(torch.randn(2, 3, 2, 2))[0].shape == (2, 2)
    with pytest.raises(ValueError, match="not an nn.Module"):
        create("my_nets:not_a_module", 6)
    with pytest.raises(ValueError, match="has no callable"):
        create("my_nets:missing", 6)
    with pytest.raises(ValueError, match="cannot import"):
        create("no_such_pkg_xyz.mod:fn", 6)


def test_callable_returning_zoo_model_is_not_wrapped():
    model = create("sldistill.models.cifar.resnetv2:resnet18", 10)
    assert not isinstance(model, WrappedModel) and model.get_stage_channels() == [256, 512, 1024, 2048]


def test_timm_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(ImportError, match="timm"):
        create("timm:resnet18", 10)


def test_timm_wrapper():
    pytest.importorskip("timm", reason="timm (optional) is not installed")
    model = create("timm:resnet18", 10, "cifar100").eval()
    logits, feats = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and feats["pooled_feat"].shape == (2, 512)
