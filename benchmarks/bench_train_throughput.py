"""Training-loop throughput (samples/s) per upstream method on BreastMNIST.

    python benchmarks/bench_train_throughput.py --data-root ../shared/data/medmnist [--model resnet18] [--epochs 2]

Each method trains the same model from the same seed for a few epochs in this process; the figure is
training samples per second of wall time inside the epoch loop (augmentation + forward + backward +
step), excluding validation. Prints one row per method and the ratio to `none`.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from bench.spec import make_spec
from bench.store import ResultsStore
from bench.tasks import get_task
from bench.trainer import Trainer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=os.environ.get("SAFLEX_DATA"))
    p.add_argument("--task", default="medmnist/breastmnist")
    p.add_argument("--model", default="small_cnn")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--methods", nargs="+", default=["none", "rand-m9-n2", "cutmix-a1.0"])
    p.add_argument("--device")
    args = p.parse_args()
    task = get_task(args.task)
    data = task.load(args.data_root, make_spec(args.task, "none", 0, {"model": args.model}))
    print(f"task {args.task}  model {args.model}  epochs {args.epochs}  threads {torch.get_num_threads()}  "
          f"device {args.device or ('cuda' if torch.cuda.is_available() else 'cpu')}")
    print(f"{'method':<16}{'samples/s':>12}{'epoch_s':>10}{'vs none':>9}")
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            spec = make_spec(args.task, method, 0, {"model": args.model, "epochs": args.epochs})
            store = ResultsStore(tmp)
            store.run_dir(spec.key).mkdir(parents=True, exist_ok=True)
            tr = Trainer(spec, task, data, store, device=args.device, progress=False)
            tr.train_epoch(0)  # warm-up epoch (allocator, first-call overheads) not timed
            t0 = time.perf_counter()
            for e in range(1, args.epochs + 1):
                tr.train_epoch(e)
            dt = time.perf_counter() - t0
            rate = args.epochs * len(data.train) / dt
            base = base or rate
            print(f"{method:<16}{rate:>12.1f}{dt / args.epochs:>10.2f}{rate / base:>9.2f}")


if __name__ == "__main__":
    main()
