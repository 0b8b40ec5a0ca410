"""The exact teacher cache: cached logits equal the live teacher's, builds resume, refusals name the cause."""
from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from datagen import write_cifar100, write_image_folder, write_published_teacher, write_tiny_imagenet

from sldistill import teacher_cache as tc
from sldistill.data import build_datasets, build_loaders, normalize_batch
from sldistill.engine.config import load_config
from sldistill.models import build_teacher

N_IMAGES = 16


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("tcache")
    root = write_cifar100(tmp / "data", n_train=N_IMAGES, n_test=4)
    ckpt = write_published_teacher(tmp / "teachers", "resnet8", seed=0)
    other = write_published_teacher(tmp / "other", "resnet8", seed=1)
    return {"tmp": tmp, "root": root, "ckpt": ckpt, "other": other}


def _cfg(setup: dict, *extra: str, method: str = "KD"):
    return load_config(None, ["DISTILLER.TYPE", method, "DISTILLER.TEACHER", "resnet8", "DISTILLER.STUDENT", "resnet8",
                              "DISTILLER.TEACHER_CKPT", str(setup["ckpt"]), "DATASET.ROOT", str(setup["root"]),
                              "DATASET.DOWNLOAD", "false", "DATASET.NUM_WORKERS", "0", "EXPERIMENT.DEVICE", "cpu",
                              "SOLVER.BATCH_SIZE", "8", "LOG.PREFIX", str(setup["tmp"] / "runs"), *extra])


@pytest.fixture(scope="module")
def built(setup) -> Path:
    return tc.build_cache(_cfg(setup), setup["tmp"] / "fp32.tcache", batch_size=700, progress=False)


def _live(cfg, views: np.ndarray) -> torch.Tensor:
    """The live teacher (eval mode, the run's precision and layout) on uint8 views [B, H, W, 3]."""
    ds = build_datasets(cfg)
    teacher = build_teacher(cfg, ds.num_classes).eval().to(memory_format=torch.channels_last)
    x = normalize_batch(torch.from_numpy(views).permute(0, 3, 1, 2), ds.mean, ds.std)
    amp = str(cfg.SOLVER.AMP) == "bf16"
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        return teacher(x.contiguous(memory_format=torch.channels_last))[0].float()


def _assert_close(cached: torch.Tensor, live: torch.Tensor, rel: float) -> None:
    diff = float((cached - live).abs().max())
    scale = float(live.abs().max())
    assert diff <= rel * scale, f"largest |cached - live| = {diff:.3g} at logit scale {scale:.3g} (allowed {rel:g})"


# ------------------------------------------------------------------------------------- exactness


def test_cached_logits_equal_the_live_teachers_on_every_view(setup, built):
    cfg = _cfg(setup)
    cache = tc.open_cache(built)
    assert (cache.num_images, cache.num_views, cache.num_classes) == (N_IMAGES, 162, 100)
    ds = build_datasets(cfg)
    idx = [0, 5, 15]  # every view of three images, in one forward of another batch composition
    views = np.concatenate([ds.weak_transform.render_all(ds.train.image(i)) for i in idx])
    live = _live(cfg, views)
    cached = torch.from_numpy(np.array(cache.logits[idx]).reshape(-1, 100))
    _assert_close(cached, live, 1e-5)
    # a lookup returns exactly the rows built for (index, view id)
    index, vid = torch.tensor([3, 3, 0, 15, 7]), torch.tensor([0, 161, 80, 1, 42])
    got = cache.lookup(index, vid)
    assert got.dtype == torch.float32 and got.shape == (5, 100)
    assert torch.equal(got, torch.from_numpy(np.stack([cache.logits[i, v] for i, v in zip(index, vid)])))
    rendered = np.stack([ds.weak_transform.render(ds.train.image(int(i)), int(v)) for i, v in zip(index, vid)])
    _assert_close(got, _live(cfg, rendered), 1e-5)
    assert cache.lookup(index, vid, dtype=torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(IndexError, match=r"\(index 16, view id 0\) is outside its 16 images x 162 views"):
        cache.lookup(torch.tensor([1, 16]), torch.tensor([0, 0]))
    cache.verify()


def test_batches_from_the_loader_look_up_their_weak_views(setup, built):
    cfg = _cfg(setup, method="SLD")
    loaders = build_loaders(cfg, num_views=2)
    loaders.train_sampler.set_epoch(2)
    batch = next(iter(loaders.train))
    ds = loaders.datasets
    rendered = np.stack([ds.weak_transform.render(ds.train.image(int(i)), int(v))
                         for i, v in zip(batch["index"], batch["view_id"])])
    assert torch.equal(normalize_batch(torch.from_numpy(rendered).permute(0, 3, 1, 2), ds.mean, ds.std),
                       batch["views"][0])  # the id reproduces the batch's weak view exactly
    cache = tc.open_cache(built)
    cache.check(cfg, datasets=ds)  # an SLD run of the same teacher and data reads the same cache
    teacher = build_teacher(cfg, 100).eval().to(memory_format=torch.channels_last)
    with torch.no_grad():
        live = teacher(batch["views"][0].contiguous(memory_format=torch.channels_last))[0]
    _assert_close(cache.lookup(batch["index"], batch["view_id"]), live, 1e-5)


def test_bf16_cache_stores_float32_of_the_bf16_teacher(setup):
    cfg = _cfg(setup, "SOLVER.AMP", "bf16", "DATASET.TRAIN_SUBSET", "4", "DATASET.SUBSET_SEED", "0")
    path = tc.build_cache(cfg, setup["tmp"] / "bf16.tcache", progress=False)
    cache = tc.open_cache(path)
    assert cache.header["depends"]["precision"] == "bf16" and cache.live_dtype == torch.bfloat16
    assert cache.header["info"]["teacher_output_dtype"] == "bfloat16" and cache.logits.dtype == np.float32
    assert torch.equal(cache.lookup([0], [0]).to(torch.bfloat16).float(), cache.lookup([0], [0]))  # bf16 values
    ds = build_datasets(cfg)
    live = _live(cfg, ds.weak_transform.render_all(ds.train.image(1)))
    _assert_close(torch.from_numpy(np.array(cache.logits[1])), live, 2e-2)  # bf16 rounding of another batch


# ------------------------------------------------------------------------------------- resume


def test_an_interrupted_build_resumes_to_the_same_file(setup, built):
    cfg = _cfg(setup)
    path = setup["tmp"] / "interrupted.tcache"
    calls: list[int] = []

    def stop_after_first(done: int, total: int) -> None:
        calls.append(done)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tc.build_cache(cfg, path, batch_size=700, progress=False, flush_seconds=0, on_flush=stop_after_first)
    assert calls == [4]  # 700 // 162 = 4 images per step
    with pytest.raises(tc.CacheFileError, match=r"incomplete \(4 of 16 images done\)"):
        tc.open_cache(path)
    assert "INCOMPLETE: 4 of 16 images done" in tc.cache_info(path)
    import fcntl
    import os

    fd = os.open(path, os.O_RDWR)  # another builder holds the file
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RuntimeError, match="another process is building"):
            tc.build_cache(cfg, path, progress=False)
    finally:
        os.close(fd)
    tc.build_cache(cfg, path, batch_size=300, progress=False, flush_seconds=0)  # the recorded batch sizes are kept
    a, b = tc.read_header(path)[0], tc.read_header(built)[0]
    assert {k: v for k, v in a.items() if k != "build"} == {k: v for k, v in b.items() if k != "build"}
    assert path.read_bytes()[tc.DATA_OFFSET:] == built.read_bytes()[tc.DATA_OFFSET:]
    assert tc.build_cache(cfg, path, progress=False) == path  # finished: returned as it is


# ------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("override,field", [
    (("DISTILLER.TEACHER_CKPT", "other"), "teacher_weights"),
    (("DATASET.TRAIN_SUBSET", "8"), "train_subset"),
    (("SOLVER.AMP", "bf16"), "precision"),
    (("SOLVER.CHANNELS_LAST", "false"), "channels_last"),
])
def test_a_header_mismatch_is_refused_naming_the_field(setup, built, override, field):
    key, value = override
    cfg = _cfg(setup, key, str(setup["other"]) if value == "other" else value)
    with pytest.raises(ValueError, match=rf"does not match this run: {field} \("):
        tc.open_cache(built).check(cfg)
    with pytest.raises(ValueError, match=rf"another configuration \({field} is"):
        tc.build_cache(cfg, built, progress=False)  # nor is the file overwritten


def test_other_data_is_refused_by_its_fingerprint(setup, built, tmp_path):
    root = write_cifar100(tmp_path / "data", n_train=N_IMAGES, n_test=4, seed=5)
    with pytest.raises(ValueError, match="dataset_fingerprint"):
        tc.open_cache(built).check(_cfg(setup, "DATASET.ROOT", str(root)))


def test_damaged_or_foreign_files_are_refused(setup, built, tmp_path):
    data = bytearray(built.read_bytes())
    torn = tmp_path / "torn.tcache"
    one = bytearray(data)
    one[4096 + 100] ^= 0xFF  # one header slot torn: the other holds the same final header
    torn.write_bytes(bytes(one))
    assert tc.open_cache(torn).header == tc.open_cache(built).header
    for start in (4096, 4096 + 16384):
        data[start + 100] ^= 0xFF
    broken = tmp_path / "broken.tcache"
    broken.write_bytes(bytes(data))
    with pytest.raises(tc.CacheFileError, match="both header slots are damaged"):
        tc.open_cache(broken)
    short = tmp_path / "short.tcache"
    short.write_bytes(built.read_bytes()[:-400])
    with pytest.raises(tc.CacheFileError, match="truncated"):
        tc.open_cache(short)
    foreign = tmp_path / "notes.tcache"
    foreign.write_text("my notes")
    with pytest.raises(tc.CacheFileError, match="is not a teacher cache"):
        tc.open_cache(foreign)
    with pytest.raises(tc.CacheFileError, match="refusing to overwrite it"):
        tc.build_cache(_cfg(setup), foreign, progress=False)
    flipped = tmp_path / "flipped.tcache"
    body = bytearray(built.read_bytes())
    body[tc.DATA_OFFSET + 8] ^= 0x01
    flipped.write_bytes(bytes(body))
    with pytest.raises(tc.CacheFileError, match="do not match their recorded SHA-256"):
        tc.open_cache(flipped).verify()
    with pytest.raises(FileNotFoundError, match="no such file"):
        tc.open_cache(tmp_path / "absent.tcache")


def test_weak_views_that_are_not_finite_are_refused_naming_the_transform(setup, tmp_path):
    tiny = write_tiny_imagenet(tmp_path / "tiny")
    cfg = _cfg(setup, "DATASET.TYPE", "tiny_imagenet", "DATASET.ROOT", str(tiny))
    with pytest.raises(tc.NotCacheableError, match=r"RandomRotateFlip\(degrees=20.0\): a random rotation"):
        tc.build_cache(cfg, tmp_path / "x.tcache", progress=False)
    folder = write_image_folder(tmp_path / "imagenet", n_classes=2, per_class=2)
    cfg = _cfg(setup, "DATASET.TYPE", "imagenet", "DATASET.ROOT", str(folder))
    with pytest.raises(tc.NotCacheableError, match="RandomResizedCropFlip.*continuous scale"):
        tc.expected_header(cfg)
    assert not (tmp_path / "x.tcache").exists()


# ------------------------------------------------------------------------------------- API edges


def test_header_default_path_info_and_pickling(setup, built):
    cfg = _cfg(setup)
    header = tc.expected_header(cfg)
    deps = header["depends"]
    assert list(deps) == list(tc.DEPENDS_FIELDS)
    assert deps["weak_view"] == {"transform": "RandomCropFlip", "size": 32, "padding": 4, "flip": True,
                                 "image_shape": [32, 32], "num_views": 162}
    assert deps["teacher_weights"].startswith("sha256:") and deps["num_images"] == N_IMAGES
    assert header["shape"] == [N_IMAGES, 162, 100] and header["versions"]["torch"] == torch.__version__
    path = tc.default_cache_path(cfg, header)
    assert path.parent.name == "cache" and path.name == f"resnet8_cifar100_{tc.cache_key(header)}.tcache"
    assert tc.cache_key(tc.expected_header(_cfg(setup, "EXPERIMENT.SEED", "3"))) == tc.cache_key(header)  # seeds share
    info = tc.cache_info(built, verify=True)
    assert "state:      complete" in info and "16 images x 162 views x 100 classes" in info and "verified" in info
    cache = pickle.loads(pickle.dumps(tc.open_cache(built)))  # reopens the file (DataLoader workers, spawn)
    assert cache.path == built and np.array_equal(cache.logits[2], tc.open_cache(built).logits[2])


def test_cost_and_sweep_planning(setup, built):
    cost = tc.teacher_cache_cost(162, [240])
    assert cost.pays and cost.saving_epochs == 78 and cost.build_epochs == 162
    assert not tc.teacher_cache_cost(162, [100]).pays and tc.teacher_cache_cost(162, 20, built=True).pays
    assert tc.teacher_cache_cost(162, [60, 60, 60], view_cost=0.5).saving_epochs == 99
    assert "does not pay" in tc.teacher_cache_cost(162, 100).describe()
    cfgs = [_cfg(setup, "EXPERIMENT.SEED", str(s), "SOLVER.EPOCHS", "60") for s in (0, 1)]
    cfgs.append(_cfg(setup, method="FITNET"))
    cfgs.append(_cfg(setup, "DATASET.TYPE", "tiny_imagenet"))
    planning = tc.plan_teacher_caches(cfgs)
    assert sorted(planning.skipped) == [2, 3]
    assert "reads the teacher's features" in planning.skipped[2] and "RandomRotateFlip" in planning.skipped[3]
    (plan,) = planning.plans
    assert plan.runs == [0, 1] and plan.cost.read_epochs == 120 and not plan.cost.pays and not plan.ready
    assert plan.path == tc.default_cache_path(cfgs[0])


def test_command_line(setup, built, capsys, tmp_path):
    parser = argparse.ArgumentParser(prog="sldistill")
    tc.add_teacher_cache_parser(parser.add_subparsers(dest="command", required=True))

    def run(*argv: str) -> int:
        args = parser.parse_args(list(argv))
        return args.func(args)

    assert run("teacher-cache", "info", str(built)) == 0
    assert "state:      complete" in capsys.readouterr().out
    assert run("teacher-cache", "info", str(built), "--json") == 0
    assert '"complete": true' in capsys.readouterr().out
    common = ["DISTILLER.TEACHER", "resnet8", "DISTILLER.TEACHER_CKPT", str(setup["ckpt"]), "DATASET.ROOT",
              str(setup["root"]), "DATASET.DOWNLOAD", "false", "EXPERIMENT.DEVICE", "cpu", "DATASET.TRAIN_SUBSET", "2",
              "DATASET.SUBSET_SEED", "0"]
    cfg_file = tmp_path / "kd.yaml"
    cfg_file.write_text("DISTILLER:\n  TYPE: KD\n")
    out = tmp_path / "cli.tcache"
    with pytest.MonkeyPatch.context() as mp:  # under torchrun: refused before anything is written
        mp.setenv("WORLD_SIZE", "2")
        with pytest.raises(ValueError, match=r"one process, not under torchrun \(WORLD_SIZE=2\)"):
            run("teacher-cache", "build", "--cfg", str(cfg_file), "--out", str(out), "--no-progress", *common)
    assert not out.exists()
    assert run("teacher-cache", "build", "--cfg", str(cfg_file), "--out", str(out), "--no-progress", *common) == 0
    assert f"DISTILLER.TEACHER_CACHE {out}" in capsys.readouterr().out
    assert run("teacher-cache", "check", "--cache", str(out), "--cfg", str(cfg_file), *common) == 0
    assert run("teacher-cache", "check", "--cfg", str(cfg_file), *common, "DISTILLER.TEACHER_CACHE", str(out)) == 0
    with pytest.raises(ValueError, match="train_subset"):
        run("teacher-cache", "check", "--cache", str(built), "--cfg", str(cfg_file), *common)
