"""Step-time ratio SAFLEX / upstream alone, per task family, at SAFLEX's default knobs (goal: <= 1.10)
or at given refresh periods; with --learners, the same ratio for other learners in the same loop.

    python benchmarks/bench_saflex_overhead.py [--tasks digits/sklearn medmnist/breastmnist ...]
        [--data-root DIR] [--refresh 1 4 16] [--steps 40] [--threads 1] [--set saflex.val_batch=512]
        [--learners saflex augerino augnet adautomix softaug]

Without --refresh it measures the default setting (today val_batch=512, refresh=auto,
ref_budget=0.125, ref_ema=0); the first release's default is `--refresh 1 --set saflex.val_batch=512
--set saflex.ref_ema=0`, the interim one `--refresh 4 --set saflex.val_batch=32 --set saflex.ref_ema=0.5`.

Measured in one process: trainers of the same upstream and seed — `X`, `X+saflex` and any other
learner arm — take the same augmented batches and alternate steps, so all see the same machine state. The ratio is the
MEAN step time (total time over the steps, reference refreshes included) of the arm over X; a median
would hide the refresh steps when refresh > 1. Data loading (per-sample augmentation) is excluded from
both: it is the same work. By default one task of every registered family whose data is reachable.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from bench.data import with_reference
from bench.runner import resolve_data_root
from bench.spec import make_spec
from bench.store import ResultsStore
from bench.tasks import get_task, list_tasks
from bench.trainer import Trainer


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def one_task_per_family(data_root) -> list[str]:
    chosen: dict[str, str] = {}
    for name in list_tasks():
        family = name.split("/", 1)[0]
        if family in chosen:
            continue
        task = get_task(name)
        if task.check_data(data_root) is None:
            chosen[family] = name
    return list(chosen.values())


def build(task_name: str, method: str, overrides: dict, data_root, device, tmp: str) -> Trainer:
    spec = make_spec(task_name, method, 0, {"epochs": 1, **overrides})
    task = get_task(task_name)
    data = with_reference(task.load(data_root, spec), spec.ref_frac, spec.ref_from, spec.seed)
    store = ResultsStore(tmp)
    store.run_dir(spec.key).mkdir(parents=True, exist_ok=True)
    return Trainer(spec, task, data, store, device=device, progress=False)


def measure(task_name: str, args, arms: list[tuple[str, dict]], tmp: str) -> list[float]:
    """Mean step time of X and of each (method, overrides) arm, the arms alternating step by step."""
    over = dict(kv.split("=", 1) for kv in args.set)
    if args.model:
        over["model"] = args.model
    trainers = [build(task_name, args.upstream, over, args.data_root, args.device, tmp)]
    trainers += [build(task_name, method, {**over, **extra}, args.data_root, args.device, tmp) for method, extra in arms]
    total = [0.0] * len(trainers)
    n = 0
    for epoch in range(100):
        for batches in zip(*(tr.batches(epoch) for tr in trainers)):
            for i, (tr, batch) in enumerate(zip(trainers, batches)):
                sync(tr.device)
                t0 = time.perf_counter()
                tr.step(batch)
                sync(tr.device)
                if n >= args.warmup:
                    total[i] += time.perf_counter() - t0
                tr.state.step += 1
            n += 1
            if n >= args.warmup + args.steps:
                return [t / (n - args.warmup) for t in total]
    raise RuntimeError("not enough batches")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="*", help="default: one task of every family whose data is reachable")
    p.add_argument("--upstream", default="rand-m9-n2")
    p.add_argument("--model", default="small_cnn")
    p.add_argument("--data-root")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--refresh", type=int, nargs="*", default=[None],
                   help="refresh periods to measure (default: the default setting's)")
    p.add_argument("--learners", nargs="*", default=["saflex"],
                   help="learners measured against X in the same loop (e.g. saflex augerino augnet adautomix softaug)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--set", action="append", default=[], help="extra run field / saflex.knob overrides")
    p.add_argument("--csv", help="also write the rows to this CSV (task, upstream, arm, x_ms, arm_ms, ratio, ...): "
                                 "what `saflex-bench figures` draws as the side-by-side cost figure")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.data_root = resolve_data_root(args.data_root)
    tasks = args.tasks or one_task_per_family(args.data_root)
    print(f"threads {args.threads}  device {args.device}  upstream {args.upstream}  model {args.model}  "
          f"{args.steps} steps after {args.warmup} warm-up; ratio = mean step time arm / X")
    from saflex_core import SaflexConfig

    default_refresh = SaflexConfig().replace(**{k[7:]: v for k, v in (kv.split("=", 1) for kv in args.set)
                                               if k.startswith("saflex.")}).refresh
    arms = []  # (label, method, overrides)
    for learner in args.learners:
        if learner == "saflex":
            arms += [(f"saflex r{default_refresh}*" if r is None else f"saflex r{r}", f"{args.upstream}+saflex",
                      {} if r is None else {"saflex.refresh": r}) for r in args.refresh]
        else:
            arms.append((learner, f"{args.upstream}+{learner}", {}))
    print(f"{'task':28s}{'arm':>16}{'X ms':>9}{'arm ms':>9}{'ratio':>8}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for task_name in tasks:
            times = measure(task_name, args, [(m, o) for _, m, o in arms], tmp)
            for (label, _, _), t in zip(arms, times[1:]):
                print(f"{task_name:28s}{label:>16}{times[0] * 1e3:>9.2f}{t * 1e3:>9.2f}{t / times[0]:>8.3f}", flush=True)
                rows.append(dict(task=task_name, upstream=args.upstream, model=args.model, arm=label.rstrip("*"),
                                 x_ms=times[0] * 1e3, arm_ms=t * 1e3, ratio=t / times[0], steps=args.steps,
                                 threads=args.threads, device=args.device))
    if args.csv:
        import pandas as pd

        pd.DataFrame(rows).to_csv(args.csv, index=False)
        print(f"wrote {args.csv}")
        if "saflex" in args.learners:
            print("* the default setting's refresh period")


if __name__ == "__main__":
    main()
