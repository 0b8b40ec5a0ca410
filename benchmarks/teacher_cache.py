"""Training steps with the teacher-logit cache against the same steps with the live teacher.

ResNet32x4 -> ResNet8x4, batch 64 CIFAR-sized images, on the CPU, in fp32 and under bf16
autocast, all in one run:

- KD: the Trainer's step (``Trainer._train_step``) of the KD distiller with the live teacher,
  against the same step with ``distiller.teacher_cache`` set, which looks the weak view's
  teacher logits up in the cache (``cache_keys=(index, view_id)``, as the trainer passes them
  from the batch) instead of running the teacher;
- SLD: the two-view step with the teacher live on both views, against the step that reads
  the weak view from the cache and still runs the teacher on the strong view;
- the build: ``build_cache`` on a few images (all 162 weak views of each), its cost per
  image-view (the build loop's time as the header records it: rendering, forward, writing;
  the one-off setup, reading the data, hashing and loading the teacher, is shown apart)
  against the teacher's cost per image in the training step (the ``view_cost`` of
  :func:`sldistill.teacher_cache.teacher_cache_cost`).

The cache is a real one, built here from random images written as a CIFAR-100 archive and a
teacher saved to a file; the batch's weak views are views of those images, rendered by the
dataset's own transform from random ``(index, view_id)`` pairs, so both sides of a pair do
the same work. Before timing, the fp32 losses of each pair are checked equal (relative 1e-4).
The steps are timed in interleaved rounds (one call of each per round, the order rotating;
an untimed warm-up first); each speed-up is the median over rounds of the per-round ratio.

Run: ``python -m benchmarks.teacher_cache [--batch 64] [--repeat 5] [--images 12] [--threads N]``.
"""
from __future__ import annotations

import argparse
import copy
import pickle
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import SilentLogger, interleaved_rounds, median_ratio  # noqa: E402
from sldistill import models  # noqa: E402
from sldistill import teacher_cache as tc  # noqa: E402
from sldistill.data import build_datasets, normalize_batch  # noqa: E402
from sldistill.distillers import build_distiller  # noqa: E402
from sldistill.engine.config import load_config  # noqa: E402
from sldistill.engine.distributed import DistInfo  # noqa: E402
from sldistill.engine.trainer import Trainer  # noqa: E402

EPOCH = 151  # past SLD's default gamma (150): every SLD term is computed




def _write_cifar(root: Path, n: int, seed: int = 0) -> None:
    """A CIFAR-100 python-pickle archive of ``n`` random training images (and 4 test images)."""
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for split, count in (("train", n), ("test", 4)):
        obj = {b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
               b"fine_labels": [i % 100 for i in range(count)]}
        (d / split).write_bytes(pickle.dumps(obj, protocol=2))
    (d / "meta").write_bytes(pickle.dumps({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}))


def _config(tmp: Path, method: str, amp: str) -> Any:
    return load_config(None, ["DISTILLER.TYPE", method, "DISTILLER.TEACHER", "resnet32x4", "DISTILLER.STUDENT",
                              "resnet8x4", "DISTILLER.TEACHER_CKPT", str(tmp / "teacher.pth"), "DATASET.ROOT",
                              str(tmp / "data"), "DATASET.DOWNLOAD", "false", "DATASET.NUM_WORKERS", "0",
                              "SOLVER.LR", "0.025", "SOLVER.WEIGHT_DECAY", "0.0005", "SOLVER.AMP", amp,
                              "EXPERIMENT.DEVICE", "cpu", "LOG.TENSORBOARD", "false", "LOG.PROGRESS", "false"])


def _trainer(cfg: Any, student0: torch.nn.Module, teacher0: torch.nn.Module, cache: Any) -> Trainer:
    dist = build_distiller(cfg, copy.deepcopy(student0), copy.deepcopy(teacher0))
    if not hasattr(dist, "teacher_cache"):
        raise SystemExit("this sldistill's Distiller has no teacher_cache attribute: the trainer wiring is missing")
    dist.teacher_cache = cache
    trainer = Trainer(cfg, dist, [None], [], Path("/tmp/sldistill-bench-unused"), DistInfo(),
                      logger=SilentLogger())  # type: ignore[arg-type]
    trainer.model.train()
    return trainer


def _loss(trainer: Trainer, views: list[torch.Tensor], target: torch.Tensor, extras: dict) -> float:
    with torch.no_grad():
        _, terms = trainer.model(views, target, EPOCH, **extras)
    return float(torch.stack([t.float() for t in terms.values()]).sum())


def main(argv: list[str] | None = None) -> int:
    """Build a small cache, time the steps with and without it, print the ratios."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--batch", type=int, default=64, help="images per view (default 64)")
    ap.add_argument("--repeat", type=int, default=5, help="timed rounds (default 5)")
    ap.add_argument("--images", type=int, default=12, help="images in the benchmark's cache (default 12)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="sldistill-bench-tcache-"))
    try:
        return _run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run(args: argparse.Namespace, tmp: Path) -> int:
    torch.manual_seed(0)
    teacher0 = models.create("resnet32x4", num_classes=100, dataset="cifar100").eval()
    student0 = models.create("resnet8x4", num_classes=100, dataset="cifar100")
    torch.save({"model": teacher0.state_dict()}, tmp / "teacher.pth")
    _write_cifar(tmp / "data", args.images)
    print(f"teacher cache, resnet32x4 -> resnet8x4, batch {args.batch}, CPU, {torch.get_num_threads()} threads; "
          "steps: Trainer._train_step with and without distiller.teacher_cache")

    # the build, in both precisions (its cost per image-view)
    caches, build_s, wall_s = {}, {}, {}
    for amp in ("none", "bf16"):
        cfg = _config(tmp, "KD", amp)
        t0 = time.perf_counter()
        path = tc.build_cache(cfg, tmp / f"{amp}.tcache", progress=False)
        wall_s[amp] = time.perf_counter() - t0
        caches[amp] = tc.open_cache(path)
        build_s[amp] = float(caches[amp].header["build"]["seconds"])  # the loop: render, forward, write
    n_views = caches["none"].num_views

    # one batch: random (index, view id) pairs, their weak views rendered as the loader does
    ds = build_datasets(_config(tmp, "KD", "none"))
    g = np.random.default_rng(1)
    index = torch.from_numpy(g.integers(0, args.images, args.batch))
    view_id = torch.from_numpy(g.integers(0, n_views, args.batch))
    rendered = np.stack([ds.weak_transform.render(ds.train.image(int(i)), int(v)) for i, v in zip(index, view_id)])
    cl = torch.channels_last
    weak = normalize_batch(torch.from_numpy(rendered).permute(0, 3, 1, 2), ds.mean, ds.std).contiguous(memory_format=cl)
    strong = torch.randn(args.batch, 3, 32, 32, generator=torch.Generator().manual_seed(2)).contiguous(memory_format=cl)
    target = torch.from_numpy(ds.train.targets[index.numpy()])
    keys = {"cache_keys": (index, view_id)}

    steps: dict[str, Callable[[], object]] = {}
    teacher_cl = copy.deepcopy(teacher0).to(memory_format=cl)
    for amp_name, amp in (("fp32", "none"), ("bf16", "bf16")):
        for method, views in (("KD", [weak]), ("SLD", [weak, strong])):
            live = _trainer(_config(tmp, method, amp), student0, teacher0, None)
            cached = _trainer(_config(tmp, method, amp), student0, teacher0, caches[amp])
            a, b = _loss(live, views, target, {}), _loss(cached, views, target, keys)
            if amp == "none" and abs(a - b) > 1e-4 * abs(a):
                raise AssertionError(f"{method}: the cached step's loss {b} differs from the live step's {a}")
            print(f"{method} {amp_name} losses with and without the cache: relative difference "
                  f"{abs(a - b) / abs(a):.1e}")
            steps[f"{method} live {amp_name}"] = lambda t=live, v=views: t._train_step(v, target, EPOCH, {})
            steps[f"{method} cached {amp_name}"] = lambda t=cached, v=views: t._train_step(v, target, EPOCH, keys)

        def teacher_fwd(dtype: torch.dtype | None = torch.bfloat16 if amp == "bf16" else None) -> None:
            with torch.no_grad(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                teacher_cl(weak)
        steps[f"teacher forward {amp_name}"] = teacher_fwd
    rounds = interleaved_rounds(steps, warmup=1, repeat=args.repeat)

    def ms(name: str) -> float:
        return statistics.median(rounds[name]) * 1e3

    for amp_name in ("fp32", "bf16"):
        for method, n_img in (("KD", args.batch), ("SLD", 2 * args.batch)):
            live, cached = f"{method} live {amp_name}", f"{method} cached {amp_name}"
            print(f"{amp_name}: {method:<3} live {ms(live):8.1f} ms/step ({n_img / ms(live) * 1e3:6.1f} img/s)   "
                  f"cached {ms(cached):8.1f} ms/step ({n_img / ms(cached) * 1e3:6.1f} img/s)   "
                  f"speed-up {median_ratio(rounds[live], rounds[cached]):4.2f}x", flush=True)
    t0 = time.perf_counter()
    for _ in range(200):
        caches["none"].lookup(index, view_id)
    lookup_us = (time.perf_counter() - t0) / 200 * 1e6
    print(f"lookup of {args.batch} rows: {lookup_us:.0f} us")
    for amp_name, amp in (("fp32", "none"), ("bf16", "bf16")):
        per_view = build_s[amp] / (args.images * n_views)
        per_img = ms(f"teacher forward {amp_name}") / 1e3 / args.batch
        print(f"{amp_name} build: {args.images} images x {n_views} views in {build_s[amp]:.1f} s (setup included: "
              f"{wall_s[amp]:.1f} s) = "
              f"{per_view * 1e3:.2f} ms per image-view; the teacher in a training step: {per_img * 1e3:.2f} ms per "
              f"image; view_cost {per_view / per_img:.2f} (a CIFAR-100 cache: 162 x {per_view / per_img:.2f} = "
              f"{n_views * per_view / per_img:.0f} teacher epochs, {50000 * n_views * per_view / 3600:.1f} h here)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
