"""Step-time ratio SAFLEX / upstream alone, for refresh periods 1, 4, 16 (goal: <= 1.10 at the default).

    python benchmarks/bench_saflex_overhead.py [--task medmnist/breastmnist --data-root DIR] [--model small_cnn]

Measured in one run: for each refresh period one trainer of `UPSTREAM+saflex` takes the same augmented
batches and alternates a plain upstream step and a SAFLEX step (reference forward when due, closed
form, weighted loss), so both see the same machine state; the ratio is median(SAFLEX) /
median(plain). Data loading (per-sample augmentation) is excluded from both: it is the same work.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

from bench.data import train_loader
from bench.seeding import generator
from bench.spec import make_spec
from bench.store import ResultsStore
from bench.tasks import get_task
from bench.trainer import Trainer


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(task, splits, args, refresh: int, tmp: str) -> tuple[float, float, float]:
    spec = make_spec(args.task, f"{args.upstream}+saflex", 0,
                     {"model": args.model, "epochs": 1, "saflex.refresh": refresh, **dict(kv.split("=", 1) for kv in args.set)})
    store = ResultsStore(tmp)
    store.run_dir(spec.key).mkdir(parents=True, exist_ok=True)
    tr = Trainer(spec, task, splits, store, data_root=args.data_root, device=args.device, progress=False)
    tr.model.train()
    tr.saflex.start_epoch(0)
    plain, saflex = [], []
    step = 0
    while len(plain) < args.steps:
        for b, (aug, clean, y) in enumerate(train_loader(tr.trainset, spec.batch_size, step, 0)):
            out = tr.upstream.batch_transform(tr.prepare(aug), tr.targets(y), generator(0, "batch", 0, b))
            ys = out.y.to(tr.device)
            for use, times in ((False, plain), (True, saflex)):
                sync(tr.device)
                t0 = time.perf_counter()
                tr.step(out.x, ys, clean, y, out.corrupted, 0, b, saflex=use)
                sync(tr.device)
                times.append(time.perf_counter() - t0)
                tr.state.step += use  # the refresh clock counts SAFLEX steps
            if len(plain) >= args.steps + args.warmup:
                break
        step += 1
    plain, saflex = plain[args.warmup :], saflex[args.warmup :]
    return statistics.median(plain), statistics.median(saflex), statistics.median(saflex) / statistics.median(plain)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="digits/sklearn")
    p.add_argument("--data-root", default=os.environ.get("SAFLEX_DATA"))
    p.add_argument("--upstream", default="rand-m9-n2")
    p.add_argument("--model", default="small_cnn")
    p.add_argument("--refresh", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--set", action="append", default=[], help="extra run field / saflex.knob overrides")
    p.add_argument("--device")
    args = p.parse_args()
    task = get_task(args.task)
    splits = task.load(args.data_root)
    print(f"task {args.task}  model {args.model}  upstream {args.upstream}  val split {len(splits.val_x)}  "
          f"threads {torch.get_num_threads()}  steps {args.steps}  extra {args.set or '-'}")
    print(f"{'refresh':>8}{'plain ms':>10}{'saflex ms':>11}{'ratio':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for k in args.refresh:
            a, b, r = measure(task, splits, args, k, tmp)
            print(f"{k:>8}{a * 1e3:>10.1f}{b * 1e3:>11.1f}{r:>8.3f}")


if __name__ == "__main__":
    main()
