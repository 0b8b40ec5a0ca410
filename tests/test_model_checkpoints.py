"""Checkpoint loading (published / raw / prefixed / run formats, errors) and the teacher table."""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sldistill.engine.config import get_defaults
from sldistill.models import (
    CIFAR_TEACHERS,
    TEACHER_RELEASE_URL,
    CheckpointError,
    PublishedTeacher,
    WeightsMismatchError,
    available_models,
    build_student,
    build_teacher,
    create,
    load_weights,
    teacher_root,
)


class NotAllowed:
    """A plain object: the safe loader must refuse to unpickle it."""

    def __init__(self) -> None:
        self.x = 1


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    monkeypatch.delenv("SLDISTILL_TEACHER_ROOT", raising=False)


def _trained_like(name: str, num_classes: int = 100, dataset: str = "cifar100") -> nn.Module:
    """A model with non-default weights and BN statistics (so a failed load would show)."""
    model = create(name, num_classes, dataset)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.randn(t.shape, generator=g) * 0.05).abs_() if t.ndim == 1 else t.add_(
                    torch.randn(t.shape, generator=g) * 0.05)
    return model.eval()


def _published_file(model: nn.Module, path: Path) -> Path:
    """Write ``model`` as the published teachers are: model, optimizer state, epoch, accuracy."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    model(torch.randn(2, 3, 32, 32))[0].sum().backward()
    opt.step()
    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 240,
                "best_acc": torch.tensor(72.34)}, path)
    return path


def _same_outputs(a: nn.Module, b: nn.Module) -> None:
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        la, fa = a.eval()(x)
        lb, fb = b.eval()(x)
    torch.testing.assert_close(lb, la, rtol=0, atol=0)
    for ta, tb in zip(fa["feats"], fb["feats"]):
        torch.testing.assert_close(tb, ta, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "ShuffleV1", "MobileNetV2", "vgg8"])
def test_published_format_loads_strictly_with_identical_outputs(name, tmp_path):
    src = _trained_like(name)
    path = _published_file(src, tmp_path / f"{name}_vanilla" / "ckpt_epoch_240.pth")
    dst = create(name, 100)
    report = load_weights(dst, path)  # strict, weights_only by default
    assert report.ok and report.loaded == len(src.state_dict())
    _same_outputs(src, dst)


def _write(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("fmt", ["raw", "module", "orig_mod", "state_dict", "run_checkpoint"])
def test_other_formats_load(fmt, tmp_path):
    src = _trained_like("resnet8", 10)
    sd = src.state_dict()
    if fmt == "raw":
        obj = sd
    elif fmt == "module":  # DataParallel / DDP
        obj = {"model": {f"module.{k}": v for k, v in sd.items()}}
    elif fmt == "orig_mod":  # torch.compile, then DDP
        obj = {f"module._orig_mod.{k}": v for k, v in sd.items()}
    elif fmt == "state_dict":
        obj = {"state_dict": sd, "epoch": 3}
    else:  # our run checkpoints: NumPy RNG state and a config dict beside the student
        obj = {"model": sd, "distiller": {}, "epoch": 5, "best_acc": 61.5, "cfg": {"DISTILLER": {"TYPE": "KD"}},
               "rng": {"numpy": np.random.get_state(), "torch": torch.get_rng_state()}}
    dst = create("resnet8", 10)
    assert load_weights(dst, _write(obj, tmp_path / "w.pth")).ok
    _same_outputs(src, dst)


def test_wrong_architecture_lists_missing_keys_with_counts(tmp_path):
    path = _write({"model": create("resnet8", 100).state_dict()}, tmp_path / "r8.pth")
    model = create("resnet14", 100)
    n_missing = len(set(model.state_dict()) - set(create("resnet8", 100).state_dict()))
    n_missing -= sum(k.endswith("num_batches_tracked") for k in set(model.state_dict()) - set(create("resnet8", 100).state_dict()))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsMismatchError) as e:
        load_weights(model, path)
    msg = str(e.value)
    assert str(path) in msg and f"{n_missing} missing key(s)" in msg and "layer1.1.conv1.weight" in msg
    assert "more)" in msg  # only the first few are listed
    assert e.value.report.missing and not e.value.report.unexpected
    # nothing was loaded
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_unexpected_keys_and_shape_mismatches_are_listed(tmp_path):
    big = create("resnet14", 10).state_dict()
    path = _write({"model": big}, tmp_path / "r14_10.pth")
    with pytest.raises(WeightsMismatchError) as e:
        load_weights(create("resnet8", 100), path)
    msg = str(e.value)
    n_unexpected = len(set(big) - set(create("resnet8", 100).state_dict()))
    assert f"{n_unexpected} unexpected key(s)" in msg
    assert "2 shape mismatch(es)" in msg
    assert re.search(r"fc\.weight file \[10, 64\] vs model \[100, 64\]", msg)


def test_non_strict_loads_what_fits_and_reports_the_rest(tmp_path):
    src = _trained_like("resnet8", 10)
    path = _write({"model": src.state_dict()}, tmp_path / "r8_10.pth")
    dst = create("resnet8", 100)
    report = load_weights(dst, path, strict=False)
    assert {k for k, _, _ in report.mismatched} == {"fc.weight", "fc.bias"}
    assert report.loaded == len(src.state_dict()) - 2
    torch.testing.assert_close(dst.conv1.weight, src.conv1.weight, rtol=0, atol=0)
    assert not torch.equal(dst.fc.bias[:10], src.fc.bias)


def test_truncated_and_garbage_files(tmp_path):
    good = _write({"model": create("resnet8", 10).state_dict()}, tmp_path / "good.pth")
    data = good.read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=re.escape(str(truncated))):
        load_weights(create("resnet8", 10), truncated)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_weights(create("resnet8", 10), garbage)
    no_sd = _write({"epoch": 3, "acc": 1.0}, tmp_path / "nosd.pth")
    with pytest.raises(CheckpointError, match="no state dict found"):
        load_weights(create("resnet8", 10), no_sd)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope.pth"))):
        load_weights(create("resnet8", 10), tmp_path / "nope.pth")


class RanOnLoad:
    """Unpickling this class's instances runs code: the safe loader must never do that."""

    def __reduce__(self):
        return (_side_effect, ("ran",))


_RAN: list[str] = []


def _side_effect(tag):
    _RAN.append(tag)
    return tag


def test_unknown_objects_load_inert_and_run_no_code_unless_trusted(tmp_path):
    sd = create("resnet8", 10).state_dict()
    path = _write({"model": sd, "extra": NotAllowed(), "hook": RanOnLoad()}, tmp_path / "pickled.pth")
    _RAN.clear()
    model = create("resnet8", 10)
    assert load_weights(model, path).ok
    assert _RAN == []  # the safe loader replaced the file's callables by inert placeholders
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k])
    with pytest.warns(UserWarning, match="trust-checkpoint"):
        assert load_weights(create("resnet8", 10), path, trust=True).ok
    assert _RAN == ["ran"]  # trusted: the file is unpickled fully


@pytest.mark.parametrize("layout", ["timm", "torchdistill", "lightning", "mdistiller"])
def test_other_codebases_checkpoint_layouts_load(tmp_path, layout):
    import argparse

    sd = create("resnet8", 10).state_dict()
    args = argparse.Namespace(model="resnet8", lr=0.1, epochs=240)
    obj = {
        "timm": {"epoch": 239, "arch": "resnet8", "state_dict": sd, "optimizer": {"state": {}}, "args": args,
                 "version": 2, "metric": 71.2},
        "torchdistill": {"model": sd, "optimizer": {"state": {}}, "lr_scheduler": {"last_epoch": 3},
                         "best_value": 0.7, "args": args},
        "lightning": {"epoch": 9, "global_step": 100, "pytorch-lightning_version": "2.2.0",
                      "state_dict": {f"model.{k}": v for k, v in sd.items()},
                      "hyper_parameters": {"lr": 0.1, "args": args}, "callbacks": {"ModelCheckpoint": {"k": 1}}},
        "mdistiller": {"model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 240, "best_acc": 72.3},
    }[layout]
    path = _write(obj, tmp_path / f"{layout}.pth")
    model = create("resnet8", 10)
    assert load_weights(model, path).ok
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_messages_carry_no_terminal_colour_codes(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(CheckpointError) as err:
        load_weights(create("resnet8", 10), bad)
    assert "\x1b[" not in str(err.value)


# ----------------------------------------------------------------- teachers
def _cfg(**distiller):
    cfg = get_defaults()
    for k, v in distiller.items():
        cfg.DISTILLER[k] = v
    return cfg


def test_teacher_table_facts():
    assert set(CIFAR_TEACHERS) == {"resnet56", "resnet110", "resnet32x4", "wrn_40_2", "vgg13", "ResNet50"}
    top1 = {n: t.top1 for n, t in CIFAR_TEACHERS.items()}
    assert top1 == {"resnet56": 72.34, "resnet110": 74.31, "resnet32x4": 79.42, "wrn_40_2": 75.61,
                    "vgg13": 74.64, "ResNet50": 79.34}
    for name, t in CIFAR_TEACHERS.items():
        assert name in available_models("cifar100")
        assert t.relpath == f"cifar_teachers/{name}_vanilla/ckpt_epoch_240.pth"
        assert t.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", t.sha256)
    assert "mdistiller" in TEACHER_RELEASE_URL


def test_build_teacher_finds_published_file_under_root(tmp_path, monkeypatch):
    src = _trained_like("resnet56")
    _published_file(src, tmp_path / "cifar_teachers" / "resnet56_vanilla" / "ckpt_epoch_240.pth")
    teacher = build_teacher(_cfg(TEACHER="resnet56", TEACHER_ROOT=str(tmp_path)), 100)
    assert not teacher.training
    _same_outputs(src, teacher)
    # the environment variable sets the root when the config keeps the default
    monkeypatch.setenv("SLDISTILL_TEACHER_ROOT", str(tmp_path))
    _same_outputs(src, build_teacher(_cfg(TEACHER="resnet56"), 100))
    # an explicit config root wins over the environment
    assert teacher_root(_cfg(TEACHER_ROOT=str(tmp_path / "elsewhere"))) == tmp_path / "elsewhere"
    monkeypatch.delenv("SLDISTILL_TEACHER_ROOT")
    assert teacher_root(_cfg()) == Path("./download_ckpts")


def test_build_teacher_missing_file_says_where_and_whence(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        build_teacher(_cfg(TEACHER="resnet32x4", TEACHER_ROOT=str(tmp_path)), 100)
    msg = str(e.value)
    assert str(tmp_path / "cifar_teachers" / "resnet32x4_vanilla" / "ckpt_epoch_240.pth") in msg
    assert "cifar_teachers.tar" in msg and TEACHER_RELEASE_URL in msg and "SLDISTILL_TEACHER_ROOT" in msg


def test_build_teacher_explicit_ckpt_and_errors(tmp_path):
    src = _trained_like("resnet8x4", 10)
    path = _write({"model": src.state_dict()}, tmp_path / "mine.pth")
    cfg = _cfg(TEACHER="resnet8x4", TEACHER_CKPT=str(path))
    cfg.DATASET.TYPE = "fashion_mnist"
    _same_outputs(src, build_teacher(cfg, 10))
    with pytest.raises(WeightsMismatchError, match="shape mismatch"):
        build_teacher(cfg, 100)
    # no published checkpoint for this name / dataset
    with pytest.raises(ValueError, match="resnet32x4"):
        build_teacher(_cfg(TEACHER="resnet8x4", TEACHER_ROOT=str(tmp_path)), 100)
    cfg = _cfg(TEACHER="resnet56", TEACHER_ROOT=str(tmp_path))
    cfg.DATASET.TYPE = "fashion_mnist"
    with pytest.raises(ValueError, match="TEACHER_CKPT"):
        build_teacher(cfg, 10)


def test_build_teacher_checks_sha256_when_known(tmp_path, monkeypatch):
    path = _published_file(_trained_like("resnet56"), tmp_path / "cifar_teachers" / "resnet56_vanilla" / "ckpt_epoch_240.pth")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    entry = CIFAR_TEACHERS["resnet56"]
    cfg = _cfg(TEACHER="resnet56", TEACHER_ROOT=str(tmp_path))
    monkeypatch.setitem(CIFAR_TEACHERS, "resnet56", PublishedTeacher("resnet56", entry.relpath, entry.top1, "0" * 64))
    with pytest.raises(ValueError, match="SHA-256"):
        build_teacher(cfg, 100)
    monkeypatch.setitem(CIFAR_TEACHERS, "resnet56", PublishedTeacher("resnet56", entry.relpath, entry.top1, digest))
    assert not build_teacher(cfg, 100).training


def test_imagenet_teacher_uses_torchvision_weights_from_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cfg = _cfg(TEACHER="ResNet18")
    cfg.DATASET.TYPE = "imagenet"
    with pytest.raises(FileNotFoundError, match="resnet18-f37072fd.pth"):
        build_teacher(cfg, 1000, download=False)
    src = _trained_like("ResNet18", 1000, "imagenet")
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(src.state_dict(), tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    teacher = build_teacher(cfg, 1000, download=False)
    torch.testing.assert_close(teacher.fc.weight, src.fc.weight, rtol=0, atol=0)
    with pytest.raises(ValueError, match="1000 classes"):
        build_teacher(cfg, 100, download=False)
    cfg.DISTILLER.TEACHER = "MobileNetV1"
    with pytest.raises(ValueError, match="TEACHER_CKPT"):
        build_teacher(cfg, 1000, download=False)


def test_build_student_with_and_without_initial_weights(tmp_path):
    cfg = _cfg(STUDENT="wrn_16_1")
    student = build_student(cfg, 10)
    assert student.training and student.fc.out_features == 10
    src = _trained_like("wrn_16_1", 10)
    cfg.DISTILLER.STUDENT_CKPT = str(_write({"model": {f"module.{k}": v for k, v in src.state_dict().items()}},
                                           tmp_path / "s.pth"))
    _same_outputs(src, build_student(cfg, 10))
    cfg.DATASET.TYPE = "imagenet"
    cfg.DISTILLER.STUDENT = "MobileNetV2"
    cfg.DISTILLER.STUDENT_CKPT = ""
    assert type(build_student(cfg, 1000)).__name__ == "MobileNetV1"


def test_models_package_does_not_import_engine():
    import subprocess
    import sys

    code = "import sys, sldistill.models; print('sldistill.engine' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert out.stdout.strip() == "False"


def test_imagenet_teacher_download_creates_the_hub_folder(tmp_path, monkeypatch):
    """On a fresh machine the torch hub cache has no checkpoints/ folder; the download makes it.
    Served from a local HTTP server on 127.0.0.1 (stopped at the end)."""
    import functools
    import http.server
    import threading
    from types import SimpleNamespace

    import torchvision

    from sldistill.models import build_teacher

    served = tmp_path / "served"
    served.mkdir()
    reference = create("ResNet18", 1000, "imagenet")
    torch.save(reference.state_dict(), served / "resnet18-test.pth")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/resnet18-test.pth"
        monkeypatch.setattr(torchvision.models, "get_weight", lambda name: SimpleNamespace(url=url))
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # no hub/checkpoints/ yet
        cfg = _cfg(TEACHER="ResNet18")
        cfg.DATASET.TYPE = "imagenet"
        teacher = build_teacher(cfg, 1000)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert (tmp_path / "torch_home" / "hub" / "checkpoints" / "resnet18-test.pth").is_file()
    for k, v in reference.state_dict().items():
        assert torch.equal(teacher.state_dict()[k], v), k
