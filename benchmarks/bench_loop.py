"""Is the suite's training loop as fast as a plain PyTorch loop? (goal: >= 0.95x with `none` on CPU)

    python benchmarks/bench_loop.py [--data-root DIR] [--tasks medmnist/breastmnist natural/cifar10]
        [--models small_cnn resnet18] [--steps 30] [--threads 1] [--device cpu] [--upstream none]

For each task and model, in one process: the official MedMNIST training recipe (Adam 1e-3, batch
128, cross-entropy) as a plain loop written here — its own model definitions, shuffling and
normalisation, nothing imported from the suite — and the suite's Trainer on the same data, model
architecture, optimiser and batch size, alternating blocks of steps so both see the same machine
state. Prints training samples/s of each and the ratio suite / plain. With `--upstream rand-m9-n2`
the suite applies per-sample RandAugment while the plain loop does not (that shows its cost).

With `--data-path` the two sides are both the suite's Trainer: the loader path (aug_path=batched: each
batch augmented on the host, then copied to the device) and the device-resident path
(data_on_device=on: the split lives on the device, batches are gathered and augmented there). Same
batches, same alternating blocks; prints samples/s of each and the ratio device / loader.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch
from torch import nn

from bench.data import with_reference
from bench.runner import resolve_data_root
from bench.spec import make_spec
from bench.store import ResultsStore
from bench.tasks import get_task
from bench.trainer import Trainer


# ---- the plain loop's own models (same architectures as the suite's, written independently) --------
def plain_small_cnn(c: int, k: int) -> nn.Module:
    def block(i, o):
        return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]

    return nn.Sequential(*block(c, 32), *block(32, 32), nn.MaxPool2d(2, ceil_mode=True), *block(32, 64),
                         *block(64, 64), nn.MaxPool2d(2, ceil_mode=True), *block(64, 128), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(128, k))


def plain_resnet18(c: int, k: int) -> nn.Module:
    from torchvision.models import resnet18

    net = resnet18(num_classes=k)
    net.conv1 = nn.Conv2d(c, 64, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()
    return net


PLAIN = {"small_cnn": plain_small_cnn, "resnet18": plain_resnet18}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def plain_steps(model, opt, x_uint8, y, batch, steps, device, g):
    crit = nn.CrossEntropyLoss()
    model.train()
    n = 0
    order = torch.randperm(len(y), generator=g)
    for i in range(steps):
        idx = order[(i * batch) % len(y):][:batch]
        xb = ((x_uint8[idx].float() / 255 - 0.5) / 0.5).to(device, non_blocking=True)
        yb = y[idx].to(device, non_blocking=True)
        loss = crit(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        float(loss.detach())  # the suite reads the loss every step too
        n += len(idx)
    return n


def suite_steps(tr: Trainer, it, steps):
    n = 0
    for _ in range(steps):
        try:
            batch = next(it[0])
        except StopIteration:
            it[1] += 1
            it[0] = iter(tr.batches(it[1]))
            batch = next(it[0])
        loss, _ = tr.step(batch)
        float(loss)
        tr.state.step += 1
        n += len(batch.y)
    return n


def measure(task_name, model_name, args, tmp):
    device = torch.device(args.device)
    spec = make_spec(task_name, args.upstream, 0, {"model": model_name, "batch_size": 128, "optimizer": "adam", "lr": 1e-3})
    task = get_task(task_name)
    data = with_reference(task.load(args.data_root, spec), None, "val", 0)
    store = ResultsStore(tmp)
    store.run_dir(spec.key).mkdir(parents=True, exist_ok=True)
    tr = Trainer(spec, task, data, store, device=args.device, progress=False, workers=0)
    x, y = data.train.x, data.train.y
    if task.prepare(x[:2]).shape != x[:2].shape:
        raise SystemExit(f"{task_name}: the plain loop here normalises like ImageTask only")
    plain = PLAIN[model_name](x.shape[1], task.num_classes).to(device)
    opt = torch.optim.Adam(plain.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    it = [iter(tr.batches(0)), 0]
    return alternate(lambda k: plain_steps(plain, opt, x, y, 128, k, device, g), lambda k: suite_steps(tr, it, k),
                     args.steps, device)


def alternate(run_a, run_b, steps, device):
    """samples/s of run_a and run_b (each: k steps -> samples), timed in 5 alternating blocks after a warm-up
    of 2 steps each, so both see the same machine state (the shared machine's load drifts)."""
    run_a(2)
    run_b(2)
    t_a = t_b = 0.0
    n_a = n_b = 0
    block = max(1, steps // 5)
    for _ in range(5):
        sync(device)
        t0 = time.perf_counter()
        n_a += run_a(block)
        sync(device)
        t1 = time.perf_counter()
        n_b += run_b(block)
        sync(device)
        t2 = time.perf_counter()
        t_a += t1 - t0
        t_b += t2 - t1
    return n_a / t_a, n_b / t_b


def measure_data_path(task_name, model_name, args, tmp):
    """(loader path samples/s, device-resident path samples/s): the same run, two Trainers."""
    spec = make_spec(task_name, args.upstream, 0, {"model": model_name, "batch_size": 128, "optimizer": "adam", "lr": 1e-3})
    task = get_task(task_name)
    data = with_reference(task.load(args.data_root, spec), None, "val", 0)
    trainers = []
    for name, kw in (("loader", dict(aug_path="batched")), ("device", dict(data_on_device="on"))):
        store = ResultsStore(f"{tmp}/{name}")
        store.run_dir(spec.key).mkdir(parents=True, exist_ok=True)
        trainers.append(Trainer(spec, task, data, store, device=args.device, progress=False, workers=0, **kw))
    its = [[iter(tr.batches(0)), 0] for tr in trainers]
    return alternate(lambda k: suite_steps(trainers[0], its[0], k), lambda k: suite_steps(trainers[1], its[1], k),
                     args.steps, torch.device(args.device))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="*", default=["medmnist/breastmnist", "natural/cifar10"])
    p.add_argument("--models", nargs="*", default=["small_cnn", "resnet18"])
    p.add_argument("--data-root")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--upstream", default="none")
    p.add_argument("--data-path", action="store_true",
                   help="time the device-resident path (data_on_device=on) against the loader path (aug_path=batched)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.data_root = resolve_data_root(args.data_root)
    print(f"device {args.device}  threads {args.threads}  upstream (suite) {args.upstream}  {args.steps} steps each, "
          f"batch 128, Adam 1e-3")
    heads = ("loader/s", "device/s") if args.data_path else ("plain/s", "suite/s")
    print(f"{'task':26s}{'model':>10s}{heads[0]:>10s}{heads[1]:>10s}{'ratio':>8s}")
    with tempfile.TemporaryDirectory() as tmp:
        for task_name in args.tasks:
            if get_task(task_name).check_data(args.data_root) is not None:
                print(f"{task_name:26s}  skipped: {get_task(task_name).check_data(args.data_root)}")
                continue
            for model_name in args.models:
                a, b = (measure_data_path if args.data_path else measure)(task_name, model_name, args, tmp)
                print(f"{task_name:26s}{model_name:>10s}{a:>10.1f}{b:>10.1f}{b / a:>8.3f}", flush=True)


if __name__ == "__main__":
    main()
