"""The strong policy on uint8 tensors against PIL, its ranges and Cutout; per-image crops."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sldistill.data.augment import (
    CUTOUT_FILL,
    STRONG_OPS,
    RandomCropFlip,
    RandomResizedCropFlip,
    ResizeCenterCrop,
    StrongAugment,
    apply_op,
    cutout,
    normalize_batch,
    pil_cutout,
    pil_op,
)

# the released operation list and (min, max) ranges
RELEASED = {
    "AutoContrast": (0, 1), "Brightness": (0.05, 0.95), "Color": (0.05, 0.95), "Contrast": (0.05, 0.95),
    "Equalize": (0, 1), "Identity": (0, 1), "Posterize": (4, 8), "Rotate": (-30, 30),
    "Sharpness": (0.05, 0.95), "ShearX": (-0.3, 0.3), "ShearY": (-0.3, 0.3), "Solarize": (0, 256),
    "TranslateX": (-0.3, 0.3), "TranslateY": (-0.3, 0.3),
}


def _image(rng: np.random.Generator, h: int = 32, w: int = 32, levels: bool = False) -> np.ndarray:
    a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return (a // 64 * 50 + 20).astype(np.uint8) if levels else a


def test_op_table_is_the_released_one():
    assert {n: (lo, hi) for n, lo, hi in STRONG_OPS} == RELEASED
    assert CUTOUT_FILL == (125, 123, 114)


@pytest.mark.parametrize("name", [n for n, _, _ in STRONG_OPS])
def test_tensor_op_matches_pil(name):
    lo, hi = RELEASED[name]
    rng = np.random.default_rng(hash(name) % 2**32)
    mismatched, total = 0, 0
    for t in range(12):
        a = _image(rng, 32, 32 + t % 3, levels=t % 4 == 0)
        # random magnitudes, plus the ends of the range and round values (exact sampling ties)
        v = [lo, hi - 1e-9, lo + 0.25 * (hi - lo), lo + 0.6 * (hi - lo)][t] if t < 4 else lo + (hi - lo) * rng.random()
        ref = np.asarray(pil_op(name, Image.fromarray(a), v))
        out = apply_op(name, torch.from_numpy(a).permute(2, 0, 1), v).permute(1, 2, 0).numpy()
        assert out.shape == ref.shape and out.dtype == np.uint8
        mismatched += int((out != ref).sum())
        total += out.size
    assert mismatched == 0, f"{mismatched} of {total} values differ"


def test_per_image_magnitudes_in_one_batch():
    rng = np.random.default_rng(1)
    imgs = np.stack([_image(rng) for _ in range(4)])
    mags = [-30.0, -5.0, 12.5, 29.9]
    out = apply_op("Rotate", torch.from_numpy(imgs).permute(0, 3, 1, 2), mags)
    for i, v in enumerate(mags):
        single = apply_op("Rotate", torch.from_numpy(imgs[i]).permute(2, 0, 1), v)
        assert torch.equal(out[i], single)
    with pytest.raises(ValueError, match="3 magnitudes for 4 images"):
        apply_op("Rotate", torch.from_numpy(imgs).permute(0, 3, 1, 2), [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="unknown strong operation 'Invert'"):
        apply_op("Invert", torch.from_numpy(imgs).permute(0, 3, 1, 2), 0.0)


def test_sampled_ops_and_magnitudes_stay_in_range_and_cover_all_ops():
    aug = StrongAugment()
    g = torch.Generator().manual_seed(0)
    ids, mags = aug.sample(20000, g)
    assert ids.shape == mags.shape == (20000, 2)
    counts = torch.bincount(ids.flatten(), minlength=14).float()
    expected = ids.numel() / 14
    assert ((counts - expected).abs() / expected).max() < 0.08  # uniform with replacement
    assert (ids[:, 0] == ids[:, 1]).float().mean().item() == pytest.approx(1 / 14, abs=0.01)
    for k, (name, lo, hi) in enumerate(STRONG_OPS):
        m = mags[ids == k]
        assert m.min() >= lo and m.max() < hi, name
        assert m.max() - m.min() > 0.9 * (hi - lo), name  # spans its range


def test_apply_follows_the_drawn_ops_in_order():
    rng = np.random.default_rng(2)
    imgs = np.stack([_image(rng, levels=i % 2 == 0) for i in range(6)])
    aug = StrongAugment()
    names = [n for n, _, _ in STRONG_OPS]
    ids = torch.tensor([[names.index(a), names.index(b)] for a, b in [
        ("Rotate", "Equalize"), ("Solarize", "ShearX"), ("Identity", "Posterize"),
        ("Color", "Color"), ("TranslateY", "AutoContrast"), ("Sharpness", "Contrast")]])
    mags = torch.tensor([[10.0, 0.5], [100.0, 0.2], [0.3, 5.0], [0.2, 0.9], [-0.2, 0.1], [0.5, 0.3]],
                        dtype=torch.float64)
    out = aug.apply(torch.from_numpy(imgs).permute(0, 3, 1, 2), ids, mags)
    for i in range(6):
        ref = Image.fromarray(imgs[i])
        for step in range(2):
            ref = pil_op(names[ids[i, step]], ref, float(mags[i, step]))
        assert np.array_equal(out[i].permute(1, 2, 0).numpy(), np.asarray(ref)), i


def test_cutout_matches_pil_and_released_size_rule():
    rng = np.random.default_rng(3)
    for _ in range(30):
        a = _image(rng)
        side, cx, cy = rng.random() * 16, rng.random() * 32, rng.random() * 32
        ref = np.asarray(pil_cutout(Image.fromarray(a), side, cx, cy))
        out = cutout(torch.from_numpy(a).permute(2, 0, 1)[None], torch.tensor([side]), torch.tensor([cx]),
                     torch.tensor([cy]))[0]
        assert np.array_equal(out.permute(1, 2, 0).numpy(), ref)
    # policy with only Identity: what changes is the Cutout square, side < W/2 (+1, PIL includes both ends)
    aug = StrongAugment(ops=(("Identity", 0.0, 1.0),))
    imgs = torch.zeros(200, 3, 32, 32, dtype=torch.uint8)
    out = aug(imgs, torch.Generator().manual_seed(0))
    painted = (out != 0).any(1)
    fill = torch.tensor(CUTOUT_FILL, dtype=torch.uint8).view(3, 1)
    widths = []
    for i in range(200):
        ys, xs = painted[i].nonzero(as_tuple=True)
        if len(ys) == 0:
            continue
        assert torch.equal(out[i][:, ys, xs], fill.expand(3, len(ys)))
        hgt, wid = int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)
        assert len(ys) == hgt * wid  # a filled rectangle
        assert wid <= 17 and hgt <= 17
        widths.append(wid)
    assert max(widths) >= 14 and len(widths) > 150


def test_strong_augment_deterministic_with_generator_and_changes_images():
    rng = np.random.default_rng(4)
    imgs = torch.from_numpy(np.stack([_image(rng) for _ in range(16)])).permute(0, 3, 1, 2).contiguous()
    aug = StrongAugment()
    a = aug(imgs, torch.Generator().manual_seed(5))
    b = aug(imgs, torch.Generator().manual_seed(5))
    c = aug(imgs, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == torch.uint8 and a.shape == imgs.shape
    assert (a != imgs).flatten(1).any(1).float().mean() > 0.9  # cutout alone changes almost all
    with pytest.raises(ValueError, match="uint8 images"):
        aug(imgs.float())


def test_random_crop_flip_is_a_window_of_the_padded_image():
    rng = np.random.default_rng(5)
    a = _image(rng)
    padded = np.pad(a, ((4, 4), (4, 4), (0, 0)))
    t = RandomCropFlip(32, padding=4)
    g = np.random.default_rng(0)
    flips = 0
    for _ in range(40):
        out = t(a, g)
        assert out.shape == (32, 32, 3) and out.dtype == np.uint8
        found = [(y, x, f) for y in range(9) for x in range(9) for f in (0, 1)
                 if np.array_equal(out[:, ::-1] if f else out, padded[y:y + 32, x:x + 32])]
        assert found
        flips += found[0][2]
    assert 5 < flips < 35


def test_resized_crops_and_normalize():
    img = Image.fromarray(np.random.default_rng(6).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    assert RandomResizedCropFlip(24)(img, np.random.default_rng(0)).shape == (24, 24, 3)
    assert ResizeCenterCrop(28, 24)(img).shape == (24, 24, 3)
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    y = normalize_batch(x, (0.5, 0.5, 0.5), (0.25, 0.5, 1.0))
    assert torch.allclose(y[0, :, 0, 0], torch.tensor([2.0, 1.0, 0.5]))


def test_autocontrast_matches_pil_on_narrow_ranges():
    # images whose channels span less than the full range: the scale is 255 / (hi - lo) as in
    # PIL (computing it as 255 * (1 / (hi - lo)) moves the brightest level by one in many images)
    rng = np.random.default_rng(7)
    imgs = [(rng.integers(0, 256, (6, 7, 3)) * rng.random() + rng.integers(0, 60)).clip(0, 255).astype(np.uint8)
            for _ in range(200)]
    batch = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2)
    out = apply_op("AutoContrast", batch, 0.0).permute(0, 2, 3, 1).numpy()
    ref = np.stack([np.asarray(pil_op("AutoContrast", Image.fromarray(a), 0.0)) for a in imgs])
    assert np.array_equal(out, ref), int((out != ref).any(axis=(1, 2, 3)).sum())


def test_normalize_into_given_tensor_is_the_same_and_checked():
    x = torch.from_numpy(np.random.default_rng(8).integers(0, 256, (5, 3, 6, 7), dtype=np.uint8))
    mean, std = (0.507, 0.487, 0.441), (0.267, 0.256, 0.276)
    ref = normalize_batch(x, mean, std)
    out = torch.empty(5, 3, 6, 7)
    got = normalize_batch(x, mean, std, out=out)
    assert got.data_ptr() == out.data_ptr() and torch.equal(got, ref)
    # the ToTensor + Normalize arithmetic
    m, sd = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    assert torch.equal(ref, ((x.float() / 255.0) - m) / sd)
    with pytest.raises(ValueError, match="out must be float32 of shape"):
        normalize_batch(x, mean, std, out=torch.empty(5, 3, 6, 6))


def test_augment_reexports_the_split_modules():
    from sldistill.data import augment, pil_reference, strong_ops, transforms

    assert augment.STRONG_OPS is strong_ops.STRONG_OPS and augment.pil_op is pil_reference.pil_op
    assert augment.RandomCropFlip is transforms.RandomCropFlip
    with pytest.raises(ValueError, match="unknown strong operation 'Invert'"):
        pil_op("Invert", Image.new("RGB", (4, 4)), 0.0)


def test_sized_views_follow_the_folder_rule():
    from sldistill.data.transforms import RandomResizedCropFlip, ResizeRandomCropFlip, sized_views

    img = Image.fromarray(np.random.default_rng(9).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    train, test = sized_views(32)
    assert isinstance(train, ResizeRandomCropFlip) and train.inner.padding == 4
    assert train(img, np.random.default_rng(0)).shape == test(img).shape == (32, 32, 3)
    train, test = sized_views(96)
    assert isinstance(train, RandomResizedCropFlip) and (test.resize, test.crop) == (110, 96)
    with pytest.raises(ValueError, match="image size must be >= 1"):
        sized_views(0)


def test_collate_builds_named_records_and_strong_views_after_the_first():
    from sldistill.data.collate import BatchCollate
    from sldistill.data.datasets import Views

    rng = np.random.default_rng(10)
    items = [(Views([_image(rng) for _ in range(3)], epoch=2), i % 5, i) for i in range(6)]
    collate = BatchCollate((0.5,) * 3, (0.25,) * 3, train=True, strong=StrongAugment(), seed=1)
    batch = collate(items)
    assert set(batch) == {"views", "target", "index"} and len(batch["views"]) == 3
    assert batch["target"].tolist() == [i % 5 for i in range(6)] and batch["index"].tolist() == list(range(6))
    raw = [torch.from_numpy(np.stack([it[0][v] for it in items])).permute(0, 3, 1, 2) for v in range(3)]
    assert torch.equal(batch["views"][0], normalize_batch(raw[0], (0.5,) * 3, (0.25,) * 3))  # weak: untouched
    assert all(not torch.equal(batch["views"][v], normalize_batch(raw[v], (0.5,) * 3, (0.25,) * 3))
               for v in (1, 2))
    assert all(torch.equal(a, b) for a, b in zip(collate(items)["views"], batch["views"]))  # keyed, repeatable
    with_contrast = collate([(v, t, i, np.arange(4) + i) for v, t, i in items])
    assert with_contrast["contrast_index"].shape == (6, 4) and with_contrast["contrast_index"].dtype == torch.int64
    val = BatchCollate((0.5,) * 3, (0.25,) * 3, train=False)
    record = val([(Views([v[0]]), t, i) for v, t, i in items])
    assert set(record) == {"image", "target"} and record["image"].shape == (6, 3, 32, 32)
    with pytest.raises(ValueError, match="a validation item has one view, got 3"):
        val(items)


# ---------------------------------------------------------------------------------------------
# finite weak views: view ids (the key of the teacher-logit cache)
# ---------------------------------------------------------------------------------------------

# sha256 (first 16 hex) of 50 successive outputs, and the generator's next draw, recorded with the
# code before view ids existed: drawing and applying a view id must not change the stream or the bytes
GOLDEN = {
    ("crop32p4", 0): ("82895169037ec5f7", 493018052),
    ("crop32p4", 1): ("4ec760d7291b3d75", 1083895609),
    ("crop32p4", 7): ("0e7e15c87c507a3c", 892932601),
    ("crop32p4grey", 0): ("fb1147bc00ba8905", 493018052),
    ("crop32p4grey", 1): ("8a65de24c740b823", 1083895609),
    ("crop32p4grey", 7): ("7c96fde7e9a11bf8", 892932601),
    ("crop32p4rect", 0): ("afbdb1f18c5096ba", 493018052),
    ("crop32p4rect", 1): ("204b06146c6abf71", 1083895609),
    ("crop32p4rect", 7): ("4258c7ca98ec397a", 892932601),
    ("crop28p2noflip", 0): ("a39a7fc2654b2ddc", 860813095),
    ("crop28p2noflip", 1): ("c4152bf63cf572af", 148210009),
    ("crop28p2noflip", 7): ("518f5c8dea506116", 1473219434),
    ("resize32p4", 0): ("a16c89dd09d94a05", 493018052),
    ("resize32p4", 1): ("a7e6ed4acee415ef", 1083895609),
    ("resize32p4", 7): ("a939ed2fa5684a94", 892932601),
    ("resize16p2", 0): ("04e8cdba6cb928a2", 493018052),
    ("resize16p2", 1): ("8f047a108b864f40", 1083895609),
    ("resize16p2", 7): ("96d3ad0e6c808371", 892932601),
}


def _golden_cases():
    from sldistill.data.transforms import ResizeRandomCropFlip

    img_rng = np.random.default_rng(123)
    imgs = {
        "cifar": img_rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
        "grey": img_rng.integers(0, 256, (32, 32, 1), dtype=np.uint8),
        "rect": img_rng.integers(0, 256, (30, 36, 3), dtype=np.uint8),
        "pil40": Image.fromarray(img_rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)),
    }
    return imgs, {
        "crop32p4": (RandomCropFlip(32, padding=4), "cifar"),
        "crop32p4grey": (RandomCropFlip(32, padding=4), "grey"),
        "crop32p4rect": (RandomCropFlip(32, padding=4), "rect"),
        "crop28p2noflip": (RandomCropFlip(28, padding=2, flip=False), "cifar"),
        "resize32p4": (ResizeRandomCropFlip(32, 4), "pil40"),
        "resize16p2": (ResizeRandomCropFlip(16, 2), "rect"),
    }


def _digest(arrays) -> str:
    import hashlib

    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("name,seed", sorted(GOLDEN))
def test_finite_transforms_keep_their_stream_and_bytes_and_ids_render_the_view(name, seed):
    imgs, cases = _golden_cases()
    t, key = cases[name]
    img = imgs[key]
    rng = np.random.default_rng(seed)
    assert (_digest([t(img, rng) for _ in range(50)]), int(rng.integers(0, 2**31))) == GOLDEN[(name, seed)]
    rng = np.random.default_rng(seed)
    drawn = [t.draw(img, rng) for _ in range(50)]  # the same draws, the same views, with their ids
    assert (_digest([v for v, _ in drawn]), int(rng.integers(0, 2**31))) == GOLDEN[(name, seed)]
    count = t.view_count(img)
    every = t.render_all(img)
    assert every.shape[0] == count and every.dtype == np.uint8
    for view, vid in drawn:
        assert 0 <= vid < count
        assert np.array_equal(t.render(img, vid), view) and np.array_equal(every[vid], view)


def test_crop_flip_grid_is_the_one_encoding():
    from sldistill.data.transforms import CropFlipGrid

    t = RandomCropFlip(32, padding=4)
    grid = t.grid(32, 32)
    assert grid == CropFlipGrid(9, 9, 2) and grid.count == 162 == t.view_count(np.zeros((32, 32, 3), np.uint8))
    ids = [grid.encode(dy, dx, f) for dy in range(9) for dx in range(9) for f in (0, 1)]
    assert ids == list(range(162))  # id = (dy * 9 + dx) * 2 + flip
    assert all(grid.decode(i) == (i // 2 // 9, i // 2 % 9, bool(i % 2)) for i in range(162))
    assert RandomCropFlip(28, padding=2, flip=False).grid(32, 32) == CropFlipGrid(9, 9, 1)
    with pytest.raises(ValueError, match="out of range for 162 views"):
        grid.decode(162)
    img = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert np.array_equal(t.render(img, grid.encode(4, 4, 0)), img)  # the centred crop is the image
    assert np.array_equal(t.render(img, grid.encode(4, 4, 1)), img[:, ::-1])
    shifted = t.render(img, grid.encode(0, 8, 0))  # corner (0, 8) of the padded image: up 4, right 4
    assert np.array_equal(shifted[4:, :28], img[:28, 4:]) and not shifted[:4].any() and not shifted[:, 28:].any()
    assert len({t.render(img, i).tobytes() for i in range(162)}) == 162  # all distinct for a random image


def test_finite_and_not_finite_transforms_say_so():
    from sldistill.data.transforms import RandomRotateFlip, ResizeRandomCropFlip, ToArray, finite_view_problem

    for t in (RandomCropFlip(32, 4), ResizeRandomCropFlip(32, 4), ToArray(), ResizeCenterCrop(36, 32)):
        assert finite_view_problem(t) is None
    assert ResizeRandomCropFlip(32, 4).view_count() == 162 and ToArray().view_count() == 1
    assert ResizeRandomCropFlip(32, 4).view_params() == {"transform": "ResizeRandomCropFlip", "size": 32,
                                                         "padding": 4, "flip": True, "resize": 32}
    assert "RandomResizedCropFlip" in finite_view_problem(RandomResizedCropFlip(224))
    assert "continuous angle" in finite_view_problem(RandomRotateFlip(20.0))
    assert "StrongAugment declares no finite set of views" in finite_view_problem(StrongAugment())


def test_collate_adds_view_ids_only_when_every_item_has_one():
    from sldistill.data.collate import BatchCollate
    from sldistill.data.datasets import Views

    rng = np.random.default_rng(3)
    items = [(Views([_image(rng)], epoch=0, view_id=i * 7), 0, i) for i in range(4)]
    collate = BatchCollate((0.5,) * 3, (0.25,) * 3, train=True)
    batch = collate(items)
    assert batch["view_id"].tolist() == [0, 7, 14, 21] and batch["view_id"].dtype == torch.int64
    assert "view_id" not in collate(items[:2] + [(Views([_image(rng)]), 0, 9)])
    import pickle

    assert pickle.loads(pickle.dumps(items[1][0])).view_id == 7  # crosses to the main process from workers
