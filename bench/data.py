"""Turning a split into training batches: seeded order, per-sample upstream draws.

The order of epoch e comes from the stream ("order", e) and the upstream draw of sample i in epoch e
from ("sample", e, i): both are functions of the run seed alone, so two methods with the same seed see
the same batches and the same augmented samples (paired comparisons), and a resumed run replays
exactly what an uninterrupted one would have seen.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from bench.errors import UsageError
from bench.seeding import generator
from bench.tasks.base import Split, TaskData


def normalize(x_uint8: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    return (x_uint8.float() / 255.0 - mean) / std


class AugmentedTrainSet(Dataset):
    """Index -> (augmented sample, clean sample, label) for the current epoch, in stored form.

    `device`: the device-resident path. x and y are moved there once; each batch is then indexed and
    augmented (batched path) there, so no image crosses from the host per batch. The order and every
    sample's draws still come from the CPU generators above, so the batches are those of the loader path."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, upstream, seed: int, batched: bool = False,
                 device: torch.device | str | None = None):
        self.upstream, self.seed = upstream, seed
        self.epoch = 0
        self.per_sample = getattr(upstream, "has_sample_stage", True)
        self.on_device = device is not None
        if self.on_device:
            if self.per_sample and not getattr(upstream, "has_batched_sample_stage", False):
                raise ValueError(f"upstream '{upstream}' has no batched per-sample path to run on the device")
            x, y = x.to(device), y.to(device)
            batched = True  # per-image application would loop over device tensors one image at a time
        self.x, self.y = x, y
        # the batched path draws each image's ops from the same per-sample generator: same images
        self.batched = batched and self.per_sample

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


def train_loader(ds: AugmentedTrainSet, batch_size: int, epoch: int, workers: int = 0, pin_memory: bool = False) -> Iterator:
    """The epoch's (augmented, clean, labels) batches. With workers > 0 the per-sample stage runs in
    DataLoader worker processes; the batches are the same whatever the number of workers (each
    sample's draw depends on (seed, epoch, index) only)."""
    ds.epoch = epoch
    batches = epoch_batches(len(ds), batch_size, ds.seed, epoch)
    if not ds.per_sample or workers == 0 or ds.batched or ds.on_device:
        return _in_process(ds, batches)
    return iter(DataLoader(ds, batch_sampler=batches, num_workers=workers, persistent_workers=False,
                           pin_memory=pin_memory))


def _in_process(ds: AugmentedTrainSet, batches: list[list[int]]):
    for b in batches:
        idx = torch.tensor(b, device=ds.x.device)  # on the device path: gathered there, not on the host
        clean = ds.x[idx]
        if ds.batched:
            aug = ds.upstream.batch_sample_transform(clean, [generator(ds.seed, "sample", ds.epoch, i) for i in b])
        elif ds.per_sample:
            aug = torch.stack([ds[i][0] for i in b])
        else:
            aug = clean
        yield aug, clean, ds.y[idx]


def default_workers(cpus: int, device_type: str) -> int:
    """DataLoader workers for the per-sample stage when the user sets none. On a GPU the CPU only
    feeds it: every CPU but one (at most 8) augments. On a CPU the cores also train: workers only
    from 4 CPUs up, a quarter of them."""
    if device_type == "cuda":
        return max(0, min(8, cpus - 1))
    return 0 if cpus < 4 else cpus // 4


AUG_PATHS = ("auto", "per-image", "batched")


def use_batched_path(upstream, aug_path: str) -> bool:
    """auto: the batched path wherever the policy has one (bit-identical images; batched_path_default)."""
    if aug_path == "per-image":
        return False
    if aug_path == "batched":
        return True
    from baselines import batched_path_default

    return batched_path_default(upstream)


DATA_ON_DEVICE = ("auto", "on", "off")
# The training split may take at most this share of the device's free memory: the model, optimiser
# state and activations need the rest, and running out of memory mid-run costs more than the copies saved.
DEVICE_DATA_SHARE = 0.5


def _nbytes(t) -> int:
    return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0


def device_resident_blocker(upstream, x, y, device: torch.device, aug_path: str = "auto") -> str | None:
    """Why the training split (x, y) cannot stay on `device` with this upstream; None when it can."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        return "the task's training data is not a tensor"
    if getattr(upstream, "has_sample_stage", True):
        if not getattr(upstream, "has_batched_sample_stage", False):
            return f"upstream '{upstream}' has no batched per-sample path"
        if aug_path == "per-image":
            return "aug_path per-image asks for the per-image path; the device-resident path is batched"
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        need = _nbytes(x) + _nbytes(y)
        if need > DEVICE_DATA_SHARE * free:
            return (f"the training split ({need / 2**20:.0f} MiB) is over {DEVICE_DATA_SHARE:.0%} of the "
                    f"{free / 2**20:.0f} MiB free on {device}")
    return None  # the CPU: the data is in host memory already, it always fits


def use_device_resident(upstream, x, y, device: torch.device | str, setting: str, aug_path: str = "auto") -> tuple[bool, str | None]:
    """(keep the training data on the device?, why not when `auto` fell back). `on` where it cannot:
    UsageError. `auto` uses it on a GPU only: on the CPU the data is in host memory either way."""
    if setting not in DATA_ON_DEVICE:
        raise UsageError(f"unknown data_on_device '{setting}' (valid: {', '.join(DATA_ON_DEVICE)})")
    if setting == "off":
        return False, None
    device = torch.device(device)
    why = device_resident_blocker(upstream, x, y, device, aug_path)
    if setting == "on":
        if why is not None:
            raise UsageError(f"data_on_device on: {why} (valid: {', '.join(DATA_ON_DEVICE)}; auto falls back to the loader path)")
        return True, None
    if why is None and device.type != "cuda":
        why = "the device is the CPU"
    return why is None, why


# ---- the reference part ------------------------------------------------------------------------
def stratified_holdout(y: torch.Tensor, frac: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held-out) indices: `frac` of each class held out (rounded; at least one sample of a class
    with two or more), order-independent of anything but the generator."""
    labels = y if y.ndim == 1 else y.argmax(1)  # multi-label: stratify on the first positive
    kept, held = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = int(round(frac * len(idx)))
        if len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        else:
            k = 0
        held.append(idx[:k])
        kept.append(idx[k:])
    return torch.sort(torch.cat(kept)).values, torch.sort(torch.cat(held)).values


def with_reference(data: TaskData, ref_frac: float | None, ref_from: str, seed: int) -> TaskData:
    """Carve the reference part (seeded, stratified) from the selection or the training split. The
    same seed gives every learner the same carve, so every arm sees the same labelled data."""
    if ref_frac is None:
        return data
    source = data.select if ref_from == "val" else data.train
    kept, held = stratified_holdout(source.y, ref_frac, generator(seed, "reference", ref_from))
    if len(held) == 0 or len(kept) == 0:
        raise UsageError(f"ref_frac={ref_frac} leaves an empty {'reference' if not len(held) else ref_from} part "
                         f"({len(source)} samples in the {ref_from} split)")
    rest, ref = source.subset(kept), source.subset(held)
    info = {**data.info, "ref_from": ref_from, "n_reference": len(ref)}
    if ref_from == "val":
        return TaskData(data.train, rest, data.tests, ref, {**info, "n_select": len(rest)})
    return TaskData(rest, data.select, data.tests, ref, {**info, "n_train": len(rest)})
