"""Datasets in their real on-disk formats, the registry, loaders, seeding, CRD sampling, errors."""
from __future__ import annotations

import gzip
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from datagen import write_cifar100, write_fashion_mnist, write_image_folder, write_tiny_imagenet
from torch import nn

from sldistill.data import (
    DATA_KEYS,
    DATASET_TYPES,
    SPECS,
    DataFormatError,
    DatasetSpec,
    EpochSampler,
    ShardSampler,
    available_datasets,
    balanced_subset,
    build_datasets,
    build_loaders,
    check_num_classes,
    get_dataset,
    item_rng,
    read_cifar100,
    read_fashion_mnist,
    read_idx,
    register_dataset,
    resolve_root,
)
from sldistill.data import registry as data_registry

CIFAR_MEAN = torch.tensor([0.5071, 0.4867, 0.4408]).view(3, 1, 1)
CIFAR_STD = torch.tensor([0.2675, 0.2565, 0.2761]).view(3, 1, 1)
TWO = dict(num_views=2)  # what a weak + strong distiller (SLD, MLKD) asks for
CRD = dict(needs=("contrast_index",))  # what CRD asks for


def _cfg(kind: str, root: Path, batch: int = 8, **dataset) -> dict:
    """A plain nested-dict config (the data package reads any mapping or attribute object)."""
    cfg: dict = {
        "DATASET": {"TYPE": kind, "ROOT": str(root), "NUM_WORKERS": 0, "DOWNLOAD": False, "TEST": {"BATCH_SIZE": 16}},
        "SOLVER": {"BATCH_SIZE": batch},
        "CRD": {"NCE": {"K": 16384}, "MODE": "exact"},
        "EXPERIMENT": {"SEED": 0},
    }
    cfg["DATASET"].update(dataset)
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


def test_cifar100_loader_batches_are_named_records(cifar_root):
    loaders = build_loaders(_cfg("cifar100", cifar_root))
    assert loaders.num_classes == 100 and loaders.num_train == 200 and loaders.num_views == 1
    assert isinstance(loaders.train_sampler, EpochSampler) and len(loaders.train_sampler) == 200
    batch = next(iter(loaders.train))
    keys = ("views", "target", "index", "view_id")  # view_id: CIFAR's weak view is finite
    assert set(batch) == set(keys) and loaders.batch_keys == keys
    assert batch["view_id"].dtype == torch.int64 and batch["view_id"].shape == (8,)
    assert isinstance(batch["views"], list) and len(batch["views"]) == 1
    img, target, index = batch["views"][0], batch["target"], batch["index"]
    assert img.shape == (8, 3, 32, 32) and img.dtype == torch.float32
    assert target.dtype == index.dtype == torch.int64 and target.shape == index.shape == (8,)
    x, y, _ = read_cifar100(cifar_root)
    assert torch.equal(target, torch.from_numpy(y[index.numpy()]))
    val = next(iter(loaders.val))
    assert set(val) == {"image", "target"}
    xt, yt, _ = read_cifar100(cifar_root, train=False)
    assert val["image"].shape == (16, 3, 32, 32) and torch.equal(val["target"], torch.from_numpy(yt[:16]))
    # test transform: only normalisation
    expect = (torch.from_numpy(xt[0]).permute(2, 0, 1).float() / 255 - CIFAR_MEAN) / CIFAR_STD
    assert torch.allclose(val["image"][0], expect, atol=1e-5)
    assert len(loaders.train) == 25  # 200 / 8, nothing dropped


def test_two_views_differ_and_have_shapes(cifar_root):
    loaders = build_loaders(_cfg("cifar100", cifar_root, batch=16), **TWO)
    assert loaders.num_views == 2
    batch = next(iter(loaders.train))
    assert len(batch["views"]) == 2
    weak, strong = batch["views"]
    assert weak.shape == strong.shape == (16, 3, 32, 32)
    assert all(not torch.equal(weak[i], strong[i]) for i in range(16))
    # weak view: a crop of the normalised image, so the un-normalised values are on the 1/255 grid
    raw = weak * CIFAR_STD + CIFAR_MEAN
    assert torch.allclose(raw * 255, (raw * 255).round(), atol=1e-3)
    # the strong view carries the Cutout colour somewhere in most images
    fill = (torch.tensor([125, 123, 114]).view(3, 1, 1) / 255 - CIFAR_MEAN) / CIFAR_STD
    has_fill = [(strong[i] - fill).abs().amax(0).lt(1e-4).any().item() for i in range(16)]
    assert sum(has_fill) >= 10
    # the weak view is the same crop stream as single-view loading's (the views draw in order)
    one = next(iter(build_loaders(_cfg("cifar100", cifar_root, batch=16)).train))
    assert torch.equal(one["views"][0], weak) and torch.equal(one["index"], batch["index"])


def test_num_views_is_checked(cifar_root):
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="num_views must be an int >= 1"):
            build_datasets(_cfg("cifar100", cifar_root), num_views=bad)


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
    img = next(iter(loaders.train))["views"][0]
    assert img.shape == (10, 3, 32, 32) and loaders.num_classes == 10
    assert torch.equal(img[:, 0], img[:, 1]) and torch.equal(img[:, 1], img[:, 2])  # grey repeated
    vimg = next(iter(loaders.val))["image"]
    # padding border of the test image is 0 -> (0 - 0.2860) / 0.3530
    assert torch.allclose(vimg[0, 0, 0, 0], torch.tensor(-0.2860 / 0.3530), atol=1e-5)


def test_image_folder_and_imagenet_layout(folder_root):
    ds = build_datasets(_cfg("folder", folder_root))
    assert ds.classes == ["class_00", "class_01", "class_02"] and ds.num_classes == 3
    assert len(ds.train) == 12 and len(ds.val) == 12
    assert sorted(set(ds.train.targets.tolist())) == [0, 1, 2]
    assert next(iter(build_loaders(_cfg("folder", folder_root, IMAGE_SIZE=24)).val))["image"].shape[-1] == 24
    loaders = build_loaders(_cfg("imagenet", folder_root, batch=4))
    assert next(iter(loaders.train))["views"][0].shape == (4, 3, 224, 224)
    val = next(iter(loaders.val))
    assert val["image"].shape == (12, 3, 224, 224) and val["target"].tolist() == [0] * 4 + [1] * 4 + [2] * 4


def test_tiny_imagenet_layout(tmp_path):
    root = write_tiny_imagenet(tmp_path, n_classes=3, per_class=4, n_val=6, size=64)
    loaders = build_loaders(_cfg("tiny_imagenet", root, batch=4))
    assert loaders.num_classes == 3 and loaders.num_train == 12
    assert next(iter(loaders.train))["views"][0].shape == (4, 3, 64, 64)
    val = next(iter(loaders.val))
    assert val["image"].shape == (6, 3, 64, 64)
    assert val["target"].tolist() == [0, 1, 2, 0, 1, 2]  # from val_annotations.txt


# ---------------------------------------------------------------------------------------------
# the registry and the declared keys
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def toy_dataset():
    """A user dataset held in memory: 3 classes of 12x12 grey images, registered for one test."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (30, 12, 12, 1), dtype=np.uint8)
    y = np.arange(30) % 3
    calls = []

    def read(cfg, root, download, rank):
        calls.append((root, download, rank))
        return (x[:24], y[:24]), (x[24:], y[24:]), ["a", "b", "c"]

    spec = DatasetSpec((0.5,) * 3, (0.25,) * 3, 8, 3, "ROOT/toy.npz", "make it with the toy script")
    register_dataset("toy", spec, read, crd_replace=False)
    try:
        yield x, y, calls
    finally:
        data_registry._DATASETS.pop("toy", None)


def test_builtin_datasets_are_registered_with_the_released_crd_rule():
    assert available_datasets()[:5] == ("cifar100", "imagenet", "tiny_imagenet", "fashion_mnist", "folder")
    assert tuple(DATASET_TYPES) == available_datasets() and "folder" in DATASET_TYPES
    assert SPECS["cifar100"].mean == (0.5071, 0.4867, 0.4408) and SPECS["imagenet"].image_size == 224
    rule = {name: get_dataset(name).crd_replace for name in available_datasets()[:5]}
    assert rule == {"cifar100": None, "fashion_mnist": None, "folder": None, "imagenet": True, "tiny_imagenet": True}


def test_user_registered_dataset_works_with_build_loaders(tmp_path, toy_dataset):
    x, y, calls = toy_dataset
    assert "toy" in available_datasets() and "toy" in DATASET_TYPES and SPECS["toy"].num_classes == 3
    loaders = build_loaders(_cfg("toy", tmp_path, batch=6), **TWO, rank=0)
    assert calls == [(tmp_path, False, 0)]  # resolved DATASET.ROOT, DATASET.DOWNLOAD, rank
    assert loaders.num_classes == 3 and loaders.classes == ["a", "b", "c"] and loaders.num_train == 24
    batch = next(iter(loaders.train))
    weak, strong = batch["views"]
    assert weak.shape == strong.shape == (6, 3, 8, 8)  # default transforms: resized to the spec's size
    assert torch.equal(batch["target"], torch.from_numpy(y[batch["index"].numpy()]))
    raw = weak * 0.25 + 0.5  # the spec's normalisation
    assert torch.allclose(raw * 255, (raw * 255).round(), atol=1e-3)
    val = next(iter(loaders.val))
    assert val["image"].shape == (6, 3, 8, 8) and val["target"].tolist() == y[24:].tolist()
    # CRD with the entry's rule (crd_replace=False: never with replacement)
    cfg = _cfg("toy", tmp_path, batch=6)
    cfg["CRD"]["NCE"]["K"] = 16
    contrast = next(iter(build_loaders(cfg, **CRD).train))["contrast_index"]
    assert contrast.shape == (6, 17) and all(len(set(r[1:].tolist())) == 16 for r in contrast)
    cfg["CRD"]["NCE"]["K"] = 17  # more than the 16 negatives of each class
    with pytest.raises(ValueError, match="without replacement"):
        next(iter(build_loaders(cfg, **CRD).train))


def test_registration_as_decorator_with_own_transforms_and_errors(tmp_path):
    from sldistill.data.transforms import RandomCropFlip, ToArray

    spec = DatasetSpec((0.5,), (0.5,), 16, None, "anywhere", "nowhere")
    try:
        @register_dataset("toy_files", spec, transforms=lambda cfg: (RandomCropFlip(16, padding=2), ToArray()))
        def read(cfg, root, download, rank):
            samples = [(str(p), int(p.parent.name[-1])) for p in sorted((root / "train").rglob("*.png"))]
            return samples, samples, ["c0", "c1"]

        assert callable(read) and get_dataset("toy_files").read is read
        root = write_image_folder(tmp_path, n_classes=2, per_class=3, size=16, splits=("train",))
        loaders = build_loaders(_cfg("toy_files", root, batch=3))
        assert next(iter(loaders.train))["views"][0].shape == (3, 3, 16, 16) and loaders.num_train == 6
        with pytest.raises(ValueError, match="'toy_files' is already registered"):
            register_dataset("toy_files", spec, read)
        register_dataset("toy_files", spec, lambda *a: ([("p", 5)], [("p", 0)], ["c0", "c1"]), overwrite=True)
        with pytest.raises(ValueError, match=r"labels outside 0\.\.1"):
            build_datasets(_cfg("toy_files", root))
        register_dataset("toy_files", spec, lambda *a: ("x", "y", ["c0"]), overwrite=True)
        with pytest.raises(TypeError, match="toy_files reader returned a split of type str"):
            build_datasets(_cfg("toy_files", root))
    finally:
        data_registry._DATASETS.pop("toy_files", None)
    with pytest.raises(TypeError, match="spec must be a DatasetSpec"):
        register_dataset("bad", {"mean": 1}, lambda *a: None)
    with pytest.raises(ValueError, match="mean and std"):
        DatasetSpec((0.5, 0.5), (0.5,), 32, None, "", "")
    assert "bad" not in available_datasets()


def test_unknown_dataset_type_names_the_valid_ones(tmp_path, toy_dataset):
    with pytest.raises(ValueError, match="unknown DATASET.TYPE 'cifar10'; valid: cifar100, imagenet, "
                                         "tiny_imagenet, fashion_mnist, folder, toy"):
        build_datasets(_cfg("cifar10", tmp_path))
    with pytest.raises(ValueError, match="unknown DATASET.TYPE 'nope'"):
        build_loaders(_cfg("nope", tmp_path))


def test_data_keys_are_the_declared_dataset_keys():
    defaults = {"DATASET.TYPE": "cifar100", "DATASET.NUM_WORKERS": 2, "DATASET.TEST.BATCH_SIZE": 64,
                "DATASET.ROOT": "", "DATASET.DOWNLOAD": True, "DATASET.TRAIN_SUBSET": 0, "DATASET.SUBSET_SEED": -1,
                "DATASET.PIN_MEMORY": True, "DATASET.IMAGE_SIZE": 0, "DATASET.DROP_LAST": False}
    assert {name: key.default for name, key in DATA_KEYS.items()} == defaults
    assert all(type(DATA_KEYS[n].default) is type(v) for n, v in defaults.items())
    assert all(key.help.strip() for key in DATA_KEYS.values())
    problem = {name: key.problem for name, key in DATA_KEYS.items()}
    assert problem["DATASET.NUM_WORKERS"](0) is None and problem["DATASET.NUM_WORKERS"](-1)
    assert problem["DATASET.TEST.BATCH_SIZE"](1) is None and problem["DATASET.TEST.BATCH_SIZE"](0)
    assert problem["DATASET.TRAIN_SUBSET"](0) is None and problem["DATASET.TRAIN_SUBSET"](-1)
    assert problem["DATASET.SUBSET_SEED"](-1) is None and problem["DATASET.SUBSET_SEED"](-2)
    assert problem["DATASET.IMAGE_SIZE"](0) is None and problem["DATASET.IMAGE_SIZE"](-1)
    # DATASET.TYPE is checked against the registry when the check runs (plugins register later)
    assert DATA_KEYS["DATASET.TYPE"].choices is None
    assert problem["DATASET.TYPE"]("folder") is None
    msg = problem["DATASET.TYPE"]("late_set")
    assert "unknown dataset 'late_set'" in msg and "cifar100, imagenet" in msg
    try:
        register_dataset("late_set", SPECS["cifar100"], lambda *a: None)
        assert problem["DATASET.TYPE"]("late_set") is None
    finally:
        data_registry._DATASETS.pop("late_set", None)


def test_dataset_keys_are_checked_when_read(cifar_root):
    with pytest.raises(ValueError, match="DATASET.NUM_WORKERS: must be >= 0, got -1"):
        build_loaders(_cfg("cifar100", cifar_root, NUM_WORKERS=-1))
    with pytest.raises(ValueError, match="DATASET.TRAIN_SUBSET: must be >= 0"):
        build_datasets(_cfg("cifar100", cifar_root, TRAIN_SUBSET=-5))
    with pytest.raises(TypeError, match="DATASET.DROP_LAST: expected bool"):
        build_loaders(_cfg("cifar100", cifar_root, DROP_LAST="yes"))
    # absent keys take their declared defaults; a Path is accepted as DATASET.ROOT
    cfg = {"DATASET": {"TYPE": "cifar100", "ROOT": cifar_root, "DOWNLOAD": False}, "SOLVER": {"BATCH_SIZE": 8}}
    loaders = build_loaders(cfg)
    assert loaders.train.num_workers == 2 and loaders.val.batch_size == 64


def test_needs_select_the_batch_items(cifar_root):
    assert build_loaders(_cfg("cifar100", cifar_root), needs=("index",)).batch_keys == \
        ("views", "target", "index", "view_id")
    with pytest.raises(ValueError, match=r"cannot provide batch item\(s\) \['teacher_logits'\]"):
        build_loaders(_cfg("cifar100", cifar_root), needs=("index", "teacher_logits"))


def test_data_package_reads_no_trainer_name_and_imports_no_engine():
    code = ("import sys, sldistill.data; bad = [m for m in sys.modules if m.startswith(('sldistill.engine', "
            "'sldistill.distillers'))]; print(bad); assert not bad")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    src = Path(__file__).resolve().parents[1] / "sldistill" / "data"
    for f in src.glob("*.py"):
        text = f.read_text()
        assert "SOLVER.TRAINER" not in text and "TRAINERS" not in text, f.name
        assert "Philox(0)" not in text and "bit_generator.state" not in text, f.name


# ---------------------------------------------------------------------------------------------
# seeding, subsets, distribution, CRD
# ---------------------------------------------------------------------------------------------

def _batches(cfg, n=3, seed=None, **kw):
    loaders = build_loaders(cfg, seed=seed, **kw)
    out = []
    for i, b in enumerate(loaders.train):
        if i == n:
            break
        out.append(b)
    return out


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return torch.equal(a, b)


def test_item_rng_gives_the_documented_philox_stream():
    # values computed with the previous implementation (a re-keyed per-thread generator) before
    # it was replaced by building the generator directly: seeded data stays the same
    recorded = {
        (0, 0, 0): [3945054396737010897, 1465095738127939837, 3044499352779184110, 0.23762234229079326],
        (1, 4, 7): [3678204473689298158, 3715251545042897860, 3699874239625748935, 0.08171241482102853],
        (12345, 3, 199): [98960436798367317, 2253117889333326314, 2286525339454523944, 0.11692023016727038],
        (2**40 + 3, 17, 10**9): [4048751479778996245, 62102081938304855, 2787700186473868143, 0.9721652914971269],
    }
    for (seed, epoch, index), values in recorded.items():
        g = item_rng(seed, epoch, index)
        assert [int(v) for v in g.integers(0, 2**62, 3, dtype=np.int64)] + [float(g.random())] == values
        # the documented construction: Philox keyed by (seed, epoch), counter [0, 0, index, 0x1AE7]
        direct = np.random.Generator(np.random.Philox(
            counter=np.array([0, 0, index, 0x1AE7], dtype=np.uint64),
            key=np.array([seed, epoch], dtype=np.uint64)))
        again = item_rng(seed, epoch, index)
        assert np.array_equal(again.integers(0, 2**62, 50), direct.integers(0, 2**62, 50))
    assert item_rng(1, 4, 7).random() != item_rng(1, 4, 8).random() != item_rng(1, 5, 7).random()


def test_same_seed_same_batches_main_process(cifar_root):
    cfg = _cfg("cifar100", cifar_root)
    a, b = _batches(cfg, seed=3, **TWO), _batches(cfg, seed=3, **TWO)
    c = _batches(cfg, seed=4, **TWO)
    assert _same(a, b)
    assert not _same([x["views"] for x in a], [x["views"] for x in c])


def test_same_seed_same_batches_with_two_workers(cifar_root):
    cfg = _cfg("cifar100", cifar_root, NUM_WORKERS=2)
    loaders = build_loaders(cfg, seed=7, **TWO)
    assert loaders.train.persistent_workers and loaders.train.num_workers == 2
    a = _batches(cfg, seed=7, **TWO)
    b = _batches(cfg, seed=7, **TWO)
    assert _same(a, b)
    assert not _same([x["views"] for x in a], [x["views"] for x in _batches(cfg, seed=8, **TWO)])


def _epoch(cfg, epoch: int, seed: int = 5, rank: int = 0, world_size: int = 1, **kw) -> list:
    loaders = build_loaders(cfg, seed=seed, rank=rank, world_size=world_size, **kw)
    loaders.train_sampler.set_epoch(epoch)
    return list(loaders.train)


@pytest.mark.parametrize("mode", ["two_view", "crd"])
def test_batches_are_a_function_of_seed_and_epoch_not_of_workers(cifar_root, mode):
    kw = TWO if mode == "two_view" else CRD
    cfg = _cfg("cifar100", cifar_root, batch=16)
    cfg["CRD"]["NCE"]["K"] = 20
    one = _epoch(cfg, 2, **kw)
    assert len(one) == 13  # 200 / 16, last batch of 8 kept
    cfg2 = _cfg("cifar100", cifar_root, batch=16, NUM_WORKERS=2)
    cfg2["CRD"]["NCE"]["K"] = 20
    assert _same(one, _epoch(cfg2, 2, **kw))  # weak and strong views, targets, indices (and CRD indices)
    # epoch 3: another order and other augmentations of the same sample
    other = _epoch(cfg, 3, **kw)
    idx2, idx3 = torch.cat([b["index"] for b in one]), torch.cat([b["index"] for b in other])
    assert sorted(idx2.tolist()) == sorted(idx3.tolist()) == list(range(200)) and not torch.equal(idx2, idx3)
    pos3 = {int(i): n for n, i in enumerate(idx3)}

    def rows(batches, what):
        if what == "contrast":
            return torch.cat([b["contrast_index"] for b in batches])
        return torch.cat([b["views"][what] for b in batches])

    for what in (["contrast", 0] if mode == "crd" else [0, 1]):
        a, b = rows(one, what), rows(other, what)
        b = b[torch.tensor([pos3[int(i)] for i in idx2])]  # epoch-3 rows in epoch-2 sample order
        differ = sum(not torch.equal(x, y) for x, y in zip(a, b))
        assert differ > 180, (what, differ)


def test_item_keys_plain_index_and_errors(cifar_root):
    ds = build_datasets(_cfg("cifar100", cifar_root), num_views=2, seed=1)
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
    other_seed = build_datasets(_cfg("cifar100", cifar_root), num_views=2, seed=2).train
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
    xt, yt, _ = read_cifar100(cifar_root, train=False)
    weights = torch.randn(3, 100, generator=torch.Generator().manual_seed(0))

    def correct(loader) -> tuple[int, int]:  # a fixed function of the image: comparable across shards
        hits = n = 0
        for batch in loader:
            hits += int(((batch["image"].mean(dim=(2, 3)) @ weights).argmax(1) == batch["target"]).sum())
            n += len(batch["target"])
        return hits, n

    full_hits, full_n = correct(build_loaders(cfg).val)
    hits = n = 0
    for rank in (0, 1):
        val = build_loaders(cfg, rank=rank, world_size=2).val
        targets = torch.cat([b["target"] for b in val])
        assert torch.equal(targets, torch.from_numpy(yt[rank::2]))  # rank::world_size, nothing padded
        h, k = correct(val)
        hits, n = hits + h, n + k
    assert (hits, n) == (full_hits, full_n) and n == 40  # summed over ranks: the exact global counts


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
        parts.append(torch.cat([b["index"] for b in loaders.train]))
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
    cfg = _cfg("cifar100", cifar_root, batch=8)
    cfg["CRD"]["NCE"]["K"] = 50
    cfg["CRD"]["MODE"] = mode
    loaders = build_loaders(cfg, **CRD)
    assert loaders.batch_keys == ("views", "target", "index", "contrast_index", "view_id")
    assert loaders.datasets.contrastive
    targets = torch.from_numpy(loaders.datasets.train.targets)
    batch = next(iter(loaders.train))
    assert set(batch) == {"views", "target", "index", "contrast_index", "view_id"}
    img, target, index, contrast = batch["views"][0], batch["target"], batch["index"], batch["contrast_index"]
    assert len(batch["views"]) == 1 and img.shape == (8, 3, 32, 32)
    assert contrast.shape == (8, 51) and contrast.dtype == torch.int64
    if mode == "exact":
        assert torch.equal(contrast[:, 0], index)
    else:
        assert torch.equal(targets[contrast[:, 0]], target)
    neg = targets[contrast[:, 1:]]
    assert (neg != target[:, None]).all()
    for row in contrast[:, 1:]:  # CIFAR rule: without replacement while K <= negatives
        assert len(set(row.tolist())) == 50
    # two views and CRD sampling together
    both = next(iter(build_loaders(cfg, **TWO, **CRD).train))
    assert len(both["views"]) == 2 and both["contrast_index"].shape == (8, 51)


def test_crd_with_replacement_for_imagenet_like_sets(tmp_path):
    root = write_tiny_imagenet(tmp_path, n_classes=3, per_class=4, n_val=6, size=64)
    cfg = _cfg("tiny_imagenet", root, batch=4)
    cfg["CRD"]["NCE"]["K"] = 30  # more than the 8 negatives: allowed, drawn with replacement
    contrast = next(iter(build_loaders(cfg, **CRD).train))["contrast_index"]
    assert contrast.shape == (4, 31)


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
        assert SPECS[kind].layout in msg


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
    # imagenet also looks in ROOT/imagenet/
    nested = write_image_folder(tmp_path / "n" / "imagenet", n_classes=2, per_class=1)
    assert build_datasets(_cfg("imagenet", nested.parent)).num_classes == 2


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


def test_pin_memory_only_on_cuda(cifar_root):
    cfg = _cfg("cifar100", cifar_root)
    assert build_loaders(cfg, device="cpu").train.pin_memory is False
    assert build_loaders(cfg, device="cuda:0").train.pin_memory is True  # built, not iterated
    cfg["DATASET"]["PIN_MEMORY"] = False
    assert build_loaders(cfg, device="cuda").train.pin_memory is False


# ---------------------------------------------------------------------------------------------
# weak-view ids
# ---------------------------------------------------------------------------------------------

def _epoch_batches(loaders, epoch: int) -> list[dict]:
    loaders.train_sampler.set_epoch(epoch)
    return list(loaders.train)


@pytest.mark.parametrize("kind", ["cifar100", "folder"])
def test_view_ids_render_the_weak_view_and_do_not_depend_on_workers(kind, cifar_root, folder_root):
    from sldistill.data import normalize_batch

    root = cifar_root if kind == "cifar100" else folder_root
    cfg = _cfg(kind, root, batch=6)
    loaders = build_loaders(cfg, **TWO, needs=("view_id",))
    ds = loaders.datasets
    assert ds.view_ids and "view_id" in loaders.batch_keys
    batches = _epoch_batches(loaders, 3)[:3]
    for batch in batches:
        vid, index = batch["view_id"], batch["index"]
        assert vid.dtype == torch.int64 and vid.shape == index.shape
        rendered = np.stack([ds.weak_transform.render(ds.train.image(int(i)), int(v)) for i, v in zip(index, vid)])
        expect = normalize_batch(torch.from_numpy(rendered).permute(0, 3, 1, 2), ds.mean, ds.std)
        assert torch.equal(batch["views"][0], expect)  # (index, view_id) names the weak view exactly
    cfg["DATASET"]["NUM_WORKERS"] = 2
    with_workers = _epoch_batches(build_loaders(cfg, **TWO), 3)[:3]
    for a, b in zip(batches, with_workers):
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in ("target", "index", "view_id"))
        assert all(torch.equal(x, y) for x, y in zip(a["views"], b["views"]))


def test_no_view_ids_for_a_weak_view_that_is_not_finite(tmp_path):
    root = write_tiny_imagenet(tmp_path / "tiny", n_classes=3, per_class=4, n_val=3)
    loaders = build_loaders(_cfg("tiny_imagenet", root, batch=4))
    assert not loaders.datasets.view_ids and "view_id" not in next(iter(loaders.train))
    with pytest.raises(ValueError, match=r"not finite: RandomRotateFlip\(degrees=20.0\): a random rotation"):
        build_loaders(_cfg("tiny_imagenet", root, batch=4), needs=("view_id",))
