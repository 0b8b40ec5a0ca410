"""Two-view (weak + strong) loading speed on 32x32 images: ours against a plain PIL pipeline.

Both pipelines do the same work per image: two independent RandomCrop(32, padding=4) +
horizontal-flip views, the released strong policy (two operations drawn with replacement
from the 14, uniform magnitudes in the published ranges, then Cutout) on the second view, and
normalisation to float. The PIL pipeline applies it per image with PIL and torchvision's
``ToTensor``/``Normalize``, as the published code does; ours crops per image in numpy and
runs the strong policy per batch on uint8 arrays (lookup tables for the point-wise
operations, one warp for the affine ones) and normalises per batch, with the training
pipeline's keyed randomness (an ``EpochSampler`` yields ``(epoch, index)`` keys, each item
seeds its own generator, each batch its strong-policy generator). Same loader settings
(2 persistent workers, batch 64). The last line prints the speed-up, e.g. ``speed-up 2.4x``.

The main process runs with one torch thread (``--main-threads``): it only receives the
batches and computes three statistics per batch, and with torch's default (one thread per
core) its idle threads spin on the cores the workers need.

Usage: ``python -m benchmarks.data [--images 4096] [--batches 48] [--workers 2] [--main-threads 1]``
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from sldistill.data import SPECS, ArrayDataset, BatchCollate, EpochSampler
from sldistill.data.augment import RandomCropFlip, StrongAugment, pil_strong_augment

MEAN, STD = SPECS["cifar100"].mean, SPECS["cifar100"].std


class PILTwoView(Dataset):
    """The plain per-image PIL implementation of the two-view pipeline."""

    def __init__(self, data: np.ndarray, targets: np.ndarray) -> None:
        self.data, self.targets = data, targets
        self.rng: np.random.Generator | None = None
        self.weak = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()])
        self.finish = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        if self.rng is None:
            self.rng = np.random.default_rng(torch.initial_seed() % 2**32)
        img = Image.fromarray(self.data[i])
        weak = self.finish(self.weak(img))
        strong = self.finish(pil_strong_augment(self.weak(img), self.rng))
        return {"views": [weak, strong], "target": int(self.targets[i]), "index": i}  # our batch record


def _images(n: int, seed: int = 0) -> np.ndarray:
    """Smooth random colour images (so equalize/autocontrast have real histograms to work on)."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, size=(n, 4, 4, 3)).astype(np.float32)
    up = np.repeat(np.repeat(low, 8, axis=1), 8, axis=2)
    noise = rng.normal(0, 20, size=up.shape)
    return np.clip(up + noise, 0, 255).astype(np.uint8)


def _rate(loader: DataLoader, batches: int, warmup: int = 4) -> tuple[float, torch.Tensor]:
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    count, t0, stats = 0, time.perf_counter(), []
    for _ in range(batches):
        batch = next(it)
        views, target = batch["views"], batch["target"]
        count += target.shape[0]
        stats.append(torch.stack([views[1].mean(), views[1].std(), (views[0] - views[1]).abs().mean()]))
    return count / (time.perf_counter() - t0), torch.stack(stats).mean(0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--batches", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--main-threads", type=int, default=1,
                    help="torch threads of the main process, which only receives batches and computes "
                         "three statistics per batch (default 1: more threads spin-wait on the cores the "
                         "workers need, which measures that contention rather than the pipelines)")
    args = ap.parse_args()
    torch.set_num_threads(args.main_threads)
    data = _images(args.images)
    targets = np.arange(args.images) % 100
    common = dict(batch_size=args.batch_size, num_workers=args.workers,
                  persistent_workers=args.workers > 0, drop_last=True)

    crop = RandomCropFlip(32, padding=4)
    ours_ds = ArrayDataset(data, targets, [str(i) for i in range(100)], [crop, crop], seed=0)
    sampler = EpochSampler(len(ours_ds), seed=0)
    sampler.set_epoch(1)
    ours = DataLoader(ours_ds, sampler=sampler, collate_fn=BatchCollate(MEAN, STD, train=True, strong=StrongAugment()),
                      generator=torch.Generator().manual_seed(0), **common)
    plain = DataLoader(PILTwoView(data, targets), shuffle=True, generator=torch.Generator().manual_seed(0), **common)

    # interleave rounds so that load from other processes affects both alike; best of each
    r_plain, r_ours = [], []
    for _ in range(args.rounds):
        rp, sp = _rate(plain, args.batches)
        ro, so = _rate(ours, args.batches)
        r_plain.append(rp)
        r_ours.append(ro)
    plain_rate, ours_rate = max(r_plain), max(r_ours)
    print(f"two-view samples/s on 32x32, {args.workers} workers, batch {args.batch_size}")
    print(f"  PIL per-image pipeline   {plain_rate:9.0f} samples/s   strong view mean {sp[0]:+.3f} std {sp[1]:.3f}"
          f"   |weak-strong| {sp[2]:.3f}")
    print(f"  ours (batched uint8)     {ours_rate:9.0f} samples/s   strong view mean {so[0]:+.3f} std {so[1]:.3f}"
          f"   |weak-strong| {so[2]:.3f}")
    print(f"speed-up {ours_rate / plain_rate:.2f}x")


if __name__ == "__main__":
    main()
