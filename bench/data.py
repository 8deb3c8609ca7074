"""Turning a split into training batches: seeded order, per-sample upstream draws, normalisation.

The order of epoch e comes from the stream ("order", e) and the upstream draw of sample i in epoch e
from ("sample", e, i): both are functions of the run seed alone, so two methods with the same seed see
the same batches and the same augmented images (paired comparisons), and a resumed run replays
exactly what an uninterrupted one would have seen.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from bench.seeding import generator


def normalize(x_uint8: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    return (x_uint8.float() / 255.0 - mean) / std


class AugmentedTrainSet(Dataset):
    """Index -> (augmented uint8 image, clean uint8 image, label) for the current epoch."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, upstream, seed: int):
        self.x, self.y, self.upstream, self.seed = x, y, upstream, seed
        self.epoch = 0
        self.per_sample = getattr(upstream, "has_sample_stage", True)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        img = self.x[i]
        aug = self.upstream.sample_transform(img, generator(self.seed, "sample", self.epoch, i)) if self.per_sample else img
        return aug, img, self.y[i]


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    order = torch.randperm(n, generator=generator(seed, "order", epoch)).tolist()
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) < 2:  # a batch of one breaks BatchNorm in train mode
        batches.pop()
    return batches


def train_loader(ds: AugmentedTrainSet, batch_size: int, epoch: int, workers: int = 0) -> Iterator:
    ds.epoch = epoch
    batches = epoch_batches(len(ds), batch_size, ds.seed, epoch)
    if not ds.per_sample or workers == 0:
        return _in_process(ds, batches)
    return iter(DataLoader(ds, batch_sampler=batches, num_workers=workers, persistent_workers=False))


def _in_process(ds: AugmentedTrainSet, batches: list[list[int]]):
    for b in batches:
        idx = torch.tensor(b)
        clean = ds.x[idx]
        aug = torch.stack([ds[i][0] for i in b]) if ds.per_sample else clean
        yield aug, clean, ds.y[idx]
