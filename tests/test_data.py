"""Datasets in their real on-disk formats, loaders, seeding, CRD sampling and the errors."""
from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from datagen import write_cifar100, write_fashion_mnist, write_image_folder, write_tiny_imagenet
from sldistill.data import (
    DataFormatError,
    EpochSampler,
    ShardSampler,
    balanced_subset,
    build_datasets,
    build_loaders,
    check_num_classes,
    item_rng,
    read_cifar100,
    read_fashion_mnist,
    read_idx,
    resolve_root,
)
from sldistill.engine.config import get_defaults
from sldistill.engine.metrics import evaluate

CIFAR_MEAN = torch.tensor([0.5071, 0.4867, 0.4408]).view(3, 1, 1)
CIFAR_STD = torch.tensor([0.2675, 0.2565, 0.2761]).view(3, 1, 1)


def _cfg(kind: str, root: Path, trainer: str = "base", batch: int = 8, **dataset):
    cfg = get_defaults()
    cfg.DATASET.TYPE = kind
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NUM_WORKERS = 0
    cfg.DATASET.DOWNLOAD = False
    cfg.DATASET.TEST.BATCH_SIZE = 16
    cfg.SOLVER.TRAINER = trainer
    cfg.SOLVER.BATCH_SIZE = batch
    for k, v in dataset.items():
        cfg.DATASET[k] = v
    return cfg


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory) -> Path:
    return write_cifar100(tmp_path_factory.mktemp("cifar"), n_train=200, n_test=40)


@pytest.fixture(scope="module")
def folder_root(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("folder"), n_classes=3, per_class=4, size=40)


# ---------------------------------------------------------------------------------------------
# formats
# ---------------------------------------------------------------------------------------------

def test_cifar100_reads_pickle_archive(cifar_root):
    x, y, classes = read_cifar100(cifar_root, train=True)
    with open(cifar_root / "cifar-100-python" / "train", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    assert x.shape == (200, 32, 32, 3) and x.dtype == np.uint8
    assert np.array_equal(y, raw[b"fine_labels"])
    # channel-planar rows -> HWC: red plane first
    assert np.array_equal(x[3, :, :, 0].ravel(), raw[b"data"][3, :1024])
    assert np.array_equal(x[3, :, :, 2].ravel(), raw[b"data"][3, 2048:])
    assert len(classes) == 100 and classes[7] == "class_7"


def test_cifar100_loader_batches(cifar_root):
    loaders = build_loaders(_cfg("cifar100", cifar_root))
    assert loaders.num_classes == 100 and loaders.num_train == 200
    assert isinstance(loaders.train_sampler, EpochSampler) and len(loaders.train_sampler) == 200
    img, target, index = next(iter(loaders.train))
    assert img.shape == (8, 3, 32, 32) and img.dtype == torch.float32
    x, y, _ = read_cifar100(cifar_root)
    assert torch.equal(target, torch.from_numpy(y[index.numpy()]))
    vimg, vtarget = next(iter(loaders.val))
    xt, yt, _ = read_cifar100(cifar_root, train=False)
    assert vimg.shape == (16, 3, 32, 32) and torch.equal(vtarget, torch.from_numpy(yt[:16]))
    # test transform: only normalisation
    expect = (torch.from_numpy(xt[0]).permute(2, 0, 1).float() / 255 - CIFAR_MEAN) / CIFAR_STD
    assert torch.allclose(vimg[0], expect, atol=1e-5)
    assert len(loaders.train) == 25  # 200 / 8, nothing dropped


def test_two_views_differ_and_have_shapes(cifar_root):
    loaders = build_loaders(_cfg("cifar100", cifar_root, trainer="ours", batch=16))
    assert loaders.num_views == 2
    image, target, index = next(iter(loaders.train))
    weak, strong = image
    assert weak.shape == strong.shape == (16, 3, 32, 32)
    assert all(not torch.equal(weak[i], strong[i]) for i in range(16))
    # weak view: a crop of the normalised image, so the un-normalised values are on the 1/255 grid
    raw = weak * CIFAR_STD + CIFAR_MEAN
    assert torch.allclose(raw * 255, (raw * 255).round(), atol=1e-3)
    # the strong view carries the Cutout colour somewhere in most images
    fill = (torch.tensor([125, 123, 114]).view(3, 1, 1) / 255 - CIFAR_MEAN) / CIFAR_STD
    has_fill = [(strong[i] - fill).abs().amax(0).lt(1e-4).any().item() for i in range(16)]
    assert sum(has_fill) >= 10


def test_fashion_mnist_gz_and_plain(tmp_path):
    for gz in (True, False):
        root = write_fashion_mnist(tmp_path / f"fm{gz}", n_train=30, n_test=20, gz=gz)
        x, y, classes = read_fashion_mnist(root, train=True)
        assert x.shape == (30, 32, 32, 1) and len(classes) == 10
        assert (x[:, :2] == 0).all() and (x[:, :, -2:] == 0).all()  # 28 -> 32 zero padding
        name = "train-images-idx3-ubyte" + (".gz" if gz else "")
        raw = read_idx(root / name)
        assert np.array_equal(x[:, 2:30, 2:30, 0], raw)
        assert np.array_equal(y, np.arange(30) % 10)
    loaders = build_loaders(_cfg("fashion_mnist", root, batch=10))
    img, target, index = next(iter(loaders.train))
    assert img.shape == (10, 3, 32, 32) and loaders.num_classes == 10
    assert torch.equal(img[:, 0], img[:, 1]) and torch.equal(img[:, 1], img[:, 2])  # grey repeated
    vimg, _ = next(iter(loaders.val))
    # padding border of the test image is 0 -> (0 - 0.2860) / 0.3530
    assert torch.allclose(vimg[0, 0, 0, 0], torch.tensor(-0.2860 / 0.3530), atol=1e-5)


def test_image_folder_and_imagenet_layout(folder_root):
    ds = build_datasets(_cfg("folder", folder_root))
    assert ds.classes == ["class_00", "class_01", "class_02"] and ds.num_classes == 3
    assert len(ds.train) == 12 and len(ds.val) == 12
    assert sorted(set(ds.train.targets.tolist())) == [0, 1, 2]
    loaders = build_loaders(_cfg("imagenet", folder_root, batch=4))
    img, target, index = next(iter(loaders.train))
    assert img.shape == (4, 3, 224, 224)
    vimg, vt = next(iter(loaders.val))
    assert vimg.shape == (12, 3, 224, 224) and vt.tolist() == [0] * 4 + [1] * 4 + [2] * 4


def test_tiny_imagenet_layout(tmp_path):
    root = write_tiny_imagenet(tmp_path, n_classes=3, per_class=4, n_val=6, size=64)
    loaders = build_loaders(_cfg("tiny_imagenet", root, batch=4))
    assert loaders.num_classes == 3 and loaders.num_train == 12
    img, target, index = next(iter(loaders.train))
    assert img.shape == (4, 3, 64, 64)
    vimg, vt = next(iter(loaders.val))
    assert vimg.shape == (6, 3, 64, 64)
    assert vt.tolist() == [0, 1, 2, 0, 1, 2]  # from val_annotations.txt


# ---------------------------------------------------------------------------------------------
# seeding, subsets, distribution, CRD
# ---------------------------------------------------------------------------------------------

def _batches(cfg, n=3, seed=None):
    loaders = build_loaders(cfg, seed=seed)
    out = []
    for i, b in enumerate(loaders.train):
        if i == n:
            break
        out.append(b)
    return out


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return torch.equal(a, b)


def test_same_seed_same_batches_main_process(cifar_root):
    cfg = _cfg("cifar100", cifar_root, trainer="ours")
    a, b = _batches(cfg, seed=3), _batches(cfg, seed=3)
    c = _batches(cfg, seed=4)
    assert _same(a, b)
    assert not _same([x[0] for x in a], [x[0] for x in c])


def test_same_seed_same_batches_with_two_workers(cifar_root):
    cfg = _cfg("cifar100", cifar_root, trainer="ours", NUM_WORKERS=2)
    loaders = build_loaders(cfg, seed=7)
    assert loaders.train.persistent_workers and loaders.train.num_workers == 2
    a = _batches(cfg, seed=7)
    b = _batches(cfg, seed=7)
    assert _same(a, b)
    assert not _same([x[0] for x in a], [x[0] for x in _batches(cfg, seed=8)])


def _epoch(cfg, epoch: int, seed: int = 5, rank: int = 0, world_size: int = 1) -> list:
    loaders = build_loaders(cfg, seed=seed, rank=rank, world_size=world_size)
    loaders.train_sampler.set_epoch(epoch)
    return list(loaders.train)


@pytest.mark.parametrize("trainer", ["ours", "crd"])
def test_batches_are_a_function_of_seed_and_epoch_not_of_workers(cifar_root, trainer):
    cfg = _cfg("cifar100", cifar_root, trainer=trainer, batch=16)
    cfg.CRD.NCE.K = 20
    one = _epoch(cfg, 2)
    assert len(one) == 13  # 200 / 16, last batch of 8 kept
    cfg2 = _cfg("cifar100", cifar_root, trainer=trainer, batch=16, NUM_WORKERS=2)
    cfg2.CRD.NCE.K = 20
    assert _same(one, _epoch(cfg2, 2))  # weak and strong views, targets, indices (and CRD indices)
    # epoch 3: another order and other augmentations of the same sample
    other = _epoch(cfg, 3)
    idx2, idx3 = torch.cat([b[2] for b in one]), torch.cat([b[2] for b in other])
    assert sorted(idx2.tolist()) == sorted(idx3.tolist()) == list(range(200)) and not torch.equal(idx2, idx3)
    pos3 = {int(i): n for n, i in enumerate(idx3)}

    def rows(batches, what):
        if what == "contrast":
            return torch.cat([b[3] for b in batches])
        views = [b[0] if trainer == "crd" else b[0][what] for b in batches]
        return torch.cat(views)

    for what in (["contrast"] if trainer == "crd" else [0, 1]):
        a, b = rows(one, what), rows(other, what)
        b = b[torch.tensor([pos3[int(i)] for i in idx2])]  # epoch-3 rows in epoch-2 sample order
        differ = sum(not torch.equal(x, y) for x, y in zip(a, b))
        assert differ > 180, (what, differ)


def test_item_keys_plain_index_and_errors(cifar_root):
    ds = build_datasets(_cfg("cifar100", cifar_root, trainer="ours"), seed=1)
    train = ds.train
    assert _np_same(train[7], train[(0, 7)]) and _np_same(train[-1], train[199])
    assert train[(4, 7)][0].epoch == 4 and train[7][0].epoch == 0
    # the views are the transforms drawing from item_rng(seed, epoch, index), in view order
    g = item_rng(1, 4, 7)
    raw = read_cifar100(cifar_root)[0][7]
    assert _np_same(train[(4, 7)], ((train.views[0](raw, g), train.views[1](raw, g)), train[7][1], 7))
    # the draws of an item do not depend on what was drawn before, nor on the dataset's seed only
    before = train[(3, 11)]
    for i in range(20):
        train[(3, i)]
    assert _np_same(before, train[(3, 11)])
    assert not _np_same(train[(3, 11)], train[(4, 11)])
    other_seed = build_datasets(_cfg("cifar100", cifar_root, trainer="ours"), seed=2).train
    assert not _np_same(before, other_seed[(3, 11)])
    with pytest.raises(IndexError, match="index 200 out of range .* 200 items"):
        train[200]
    with pytest.raises(TypeError, match=r"\(epoch, index\), got 1.5"):
        train[1.5]
    with pytest.raises(TypeError, match=r"index or \(epoch, index\), got \(1, 2, 3\)"):
        train[(1, 2, 3)]


def _np_same(a, b) -> bool:
    va, vb = a[0], b[0]
    return len(va) == len(vb) and all(np.array_equal(x, y) for x, y in zip(va, vb)) and a[1:] == b[1:]


def test_epoch_sampler_shards_like_distributed_sampler():
    for n, ws in ((10, 3), (2, 3), (12, 4)):
        samplers = [EpochSampler(n, seed=9, rank=r, world_size=ws) for r in range(ws)]
        for s in samplers:
            s.set_epoch(5)
        parts = [list(s) for s in samplers]
        per = -(-n // ws)
        assert all(len(p) == per == len(s) for p, s in zip(parts, samplers))  # equal shards (DDP)
        assert all(e == 5 for p in parts for e, _ in p)
        flat = [i for p in parts for _, i in p]
        assert set(flat) == set(range(n)) and len(flat) == per * ws  # every sample, padded by wrapping
        again = EpochSampler(n, seed=9, rank=1, world_size=ws)
        again.set_epoch(5)
        assert list(again) == parts[1]  # a pure function of (seed, epoch, rank)
    s = EpochSampler(50, seed=9)
    s.set_epoch(1)
    e1 = [i for _, i in s]
    s.set_epoch(2)
    assert sorted(e1) == list(range(50)) and [i for _, i in s] != e1
    with pytest.raises(ValueError, match="rank=2, world_size=2"):
        EpochSampler(5, rank=2, world_size=2)


def test_validation_is_sharded_without_duplicates(cifar_root):
    assert [list(ShardSampler(5, r, 2)) for r in range(2)] == [[0, 2, 4], [1, 3]]
    cfg = _cfg("cifar100", cifar_root, batch=16)
    full = build_loaders(cfg)
    xt, yt, _ = read_cifar100(cifar_root, train=False)
    weights = torch.randn(3, 100, generator=torch.Generator().manual_seed(0))

    def model(x):  # a fixed function of the image, so results can be compared across shards
        return x.mean(dim=(2, 3)) @ weights

    ref = evaluate(model, full.val, torch.device("cpu"))
    shards, sums = [], torch.zeros(4, dtype=torch.float64)
    for rank in (0, 1):
        val = build_loaders(cfg, rank=rank, world_size=2).val
        targets = torch.cat([t for _, t in val])
        assert torch.equal(targets, torch.from_numpy(yt[rank::2]))  # rank::world_size, nothing padded
        shards.append(targets)
        res = evaluate(model, val, torch.device("cpu"))
        n = len(targets)
        sums += torch.tensor([res["loss"] * n, res["top1"] * n, res["top5"] * n, n], dtype=torch.float64)
    assert sum(len(t) for t in shards) == 40
    # what evaluate's all-reduce of sums gives: the exact single-process metrics
    assert sums[1].item() / 40 == pytest.approx(ref["top1"]) and sums[2].item() / 40 == pytest.approx(ref["top5"])
    assert sums[0].item() / 40 == pytest.approx(ref["loss"], rel=1e-6)


def test_train_subset_is_class_balanced(cifar_root):
    loaders = build_loaders(_cfg("cifar100", cifar_root, TRAIN_SUBSET=100))
    assert loaders.num_train == 100
    ds = loaders.datasets.train
    assert np.bincount(ds.targets, minlength=100).tolist() == [1] * 100
    idx = balanced_subset(np.arange(90) % 3, 10, 3, seed=0)
    counts = np.bincount((np.arange(90) % 3)[idx], minlength=3)
    assert sorted(counts.tolist()) == [3, 3, 4]
    assert np.array_equal(idx, balanced_subset(np.arange(90) % 3, 10, 3, seed=0))
    assert not np.array_equal(idx, balanced_subset(np.arange(90) % 3, 10, 3, seed=1))


def test_distributed_split_and_global_batch(cifar_root):
    cfg = _cfg("cifar100", cifar_root, batch=16)
    parts = []
    for rank in (0, 1):
        loaders = build_loaders(cfg, rank=rank, world_size=2)
        assert loaders.batch_size == 8 and loaders.train_sampler is not None
        loaders.train_sampler.set_epoch(1)
        parts.append(torch.cat([b[2] for b in loaders.train]))
    assert len(parts[0]) == len(parts[1]) == 100
    assert sorted(torch.cat(parts).tolist()) == list(range(200))
    with pytest.raises(ValueError, match="BATCH_SIZE=15 .* multiple of the number of processes \\(2\\)"):
        build_loaders(_cfg("cifar100", cifar_root, batch=15), rank=0, world_size=2)


def test_last_batch_of_one_is_dropped(cifar_root):
    with pytest.warns(UserWarning, match="dropping the last training batch"):
        loaders = build_loaders(_cfg("cifar100", cifar_root, batch=199))
    assert len(loaders.train) == 1


@pytest.mark.parametrize("mode", ["exact", "relax"])
def test_crd_contrast_indices(cifar_root, mode):
    cfg = _cfg("cifar100", cifar_root, trainer="crd", batch=8)
    cfg.CRD.NCE.K = 50
    cfg.CRD.MODE = mode
    loaders = build_loaders(cfg)
    targets = torch.from_numpy(loaders.datasets.train.targets)
    img, target, index, contrast = next(iter(loaders.train))
    assert img.shape == (8, 3, 32, 32) and contrast.shape == (8, 51) and contrast.dtype == torch.int64
    if mode == "exact":
        assert torch.equal(contrast[:, 0], index)
    else:
        assert torch.equal(targets[contrast[:, 0]], target)
    neg = targets[contrast[:, 1:]]
    assert (neg != target[:, None]).all()
    for row in contrast[:, 1:]:  # CIFAR rule: without replacement while K <= negatives
        assert len(set(row.tolist())) == 50


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------

def test_missing_root_names_path_layout_and_how_to_obtain(tmp_path):
    for kind in ("cifar100", "imagenet", "tiny_imagenet", "fashion_mnist", "folder"):
        if kind == "fashion_mnist" and Path("/usr/share/datasets/fashion-mnist").is_dir():
            continue  # the system copy would be found
        with pytest.raises(FileNotFoundError) as e:
            build_datasets(_cfg(kind, tmp_path / "nothing"))
        msg = str(e.value)
        assert str(tmp_path / "nothing") in msg and "Expected layout" in msg and "How to obtain" in msg


def test_incomplete_roots(tmp_path, folder_root):
    root = write_cifar100(tmp_path / "c", n_train=10, n_test=10)
    (root / "cifar-100-python" / "meta").unlink()
    with pytest.raises(FileNotFoundError, match="meta"):
        read_cifar100(root)
    # validation images not sorted into class folders
    bad = write_image_folder(tmp_path / "f", splits=("train",))
    (bad / "val").mkdir()
    (bad / "val" / "x.png").write_bytes((folder_root / "val" / "class_00" / "img_0.png").read_bytes())
    with pytest.raises(FileNotFoundError, match="no class sub-folders"):
        build_datasets(_cfg("imagenet", bad))


def test_corrupted_files_are_named(tmp_path, folder_root):
    root = write_cifar100(tmp_path / "c", n_train=10, n_test=10)
    train = root / "cifar-100-python" / "train"
    train.write_bytes(train.read_bytes()[:100])
    with pytest.raises(DataFormatError, match=str(train)):
        read_cifar100(root)
    fm = write_fashion_mnist(tmp_path / "fm", n_train=10, n_test=10, gz=False)
    f = fm / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-7])
    with pytest.raises(DataFormatError, match="truncated .*train-images-idx3-ubyte"):
        read_fashion_mnist(fm)
    g = tmp_path / "t.gz"
    g.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"abcde")[:-6])
    with pytest.raises(DataFormatError, match=str(g)):
        read_idx(g)
    img_root = write_image_folder(tmp_path / "imgs", n_classes=2, per_class=1)
    broken = img_root / "train" / "class_01" / "img_0.png"
    broken.write_bytes(b"not a png at all")
    ds = build_datasets(_cfg("folder", img_root))
    with pytest.raises(DataFormatError, match=str(broken)):
        for i in range(len(ds.train)):
            ds.train[i]


def test_class_count_mismatch_caught_before_training():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 10))
    check_num_classes(model, 10)
    with pytest.raises(ValueError, match="outputs 10 classes but the dataset has 100"):
        check_num_classes(model, 100)

    class NoLinear(nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :7], {}

    with pytest.raises(ValueError, match="outputs 7 classes"):
        check_num_classes(NoLinear(), 5, sample=torch.zeros(1, 3, 4, 4))


def test_root_resolution(monkeypatch, tmp_path):
    assert resolve_root(str(tmp_path)) == tmp_path
    monkeypatch.setenv("SLDISTILL_DATA", str(tmp_path / "env"))
    assert resolve_root("") == tmp_path / "env"
    monkeypatch.delenv("SLDISTILL_DATA")
    assert resolve_root("") == Path("data")
    with pytest.raises(ValueError, match="unknown DATASET.TYPE 'cifar10'"):
        build_datasets(_cfg("cifar10", tmp_path))


def test_pin_memory_only_on_cuda(cifar_root):
    cfg = _cfg("cifar100", cifar_root)
    assert build_loaders(cfg, device="cpu").train.pin_memory is False
    assert build_loaders(cfg, device="cuda:0").train.pin_memory is True  # built, not iterated
    cfg.DATASET.PIN_MEMORY = False
    assert build_loaders(cfg, device="cuda").train.pin_memory is False
