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
would hide the refresh steps when refresh > 1. Every step of the run's first --steps counts (the ramp's
early refreshes too; process warm-up runs on throwaway trainers), the order of the arms alternates step
by step, and the printed ratio is the median of --repeat measurements. (Until this protocol, the first
4 steps were dropped, which held 3 of the ramp's refreshes, and X always stepped first.) Data loading (per-sample augmentation) is excluded from
both: it is the same work. By default one task of every registered family whose data is reachable.
"""
from __future__ import annotations

import argparse
import statistics
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


def _warm(task_name: str, args, arms, over: dict, tmp: str) -> None:
    """First-call costs of the process (allocator, kernels, lazy imports) on throwaway trainers, so that
    the measured trainers count every one of their steps, the ramp's early refreshes included."""
    if args.warmup <= 0:
        return
    trainers = [build(task_name, args.upstream, over, args.data_root, args.device, tmp)]
    trainers += [build(task_name, method, {**over, **extra}, args.data_root, args.device, tmp) for method, extra in arms]
    for n, batches in enumerate(zip(*(tr.batches(0) for tr in trainers))):
        if n >= args.warmup:
            break
        for tr, batch in zip(trainers, batches):
            tr.step(batch)
            tr.state.step += 1


def measure(task_name: str, args, arms: list[tuple[str, dict]], tmp: str) -> list[float]:
    """Mean step time of X and of each (method, overrides) arm over the first --steps steps of a run
    (every step counted), the arms alternating step by step, in turn first (X first on even steps,
    last on odd ones, when --order alternate): no arm always runs on a cache the other warmed."""
    over = dict(kv.split("=", 1) for kv in args.set)
    if args.model:
        over["model"] = args.model
    _warm(task_name, args, arms, over, tmp)
    trainers = [build(task_name, args.upstream, over, args.data_root, args.device, tmp)]
    trainers += [build(task_name, method, {**over, **extra}, args.data_root, args.device, tmp) for method, extra in arms]
    total = [0.0] * len(trainers)
    n = 0
    for epoch in range(100):
        for batches in zip(*(tr.batches(epoch) for tr in trainers)):
            order = list(range(len(trainers)))
            if args.order == "alternate" and n % 2:
                order.reverse()
            for i in order:
                tr, batch = trainers[i], batches[i]
                sync(tr.device)
                t0 = time.perf_counter()
                tr.step(batch)
                sync(tr.device)
                if n >= args.skip:
                    total[i] += time.perf_counter() - t0
                tr.state.step += 1
            n += 1
            if n >= args.skip + args.steps:
                return [t / (n - args.skip) for t in total]
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
    p.add_argument("--warmup", type=int, default=2,
                   help="steps on throwaway trainers first (process warm-up; the measured run counts every step)")
    p.add_argument("--skip", type=int, default=0,
                   help="leave the measured run's first steps out (the old, biased protocol used 4: the ramp's refreshes)")
    p.add_argument("--order", choices=("alternate", "fixed"), default="alternate",
                   help="alternate which arm steps first (default); fixed = X always first (the old protocol)")
    p.add_argument("--repeat", type=int, default=3, help="measurements per task; the median ratio is printed")
    p.add_argument("--set", action="append", default=[], help="extra run field / saflex.knob overrides")
    p.add_argument("--csv", help="also write the rows to this CSV (task, upstream, arm, x_ms, arm_ms, ratio, ...): "
                                 "what `saflex-bench figures` draws as the side-by-side cost figure")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.data_root = resolve_data_root(args.data_root)
    tasks = args.tasks or one_task_per_family(args.data_root)
    print(f"threads {args.threads}  device {args.device}  upstream {args.upstream}  model {args.model}  "
          f"the run's first {args.steps} steps" + (f" after {args.skip} skipped" if args.skip else " (every step)")
          + f", order {args.order}, median of {args.repeat}; ratio = mean step time arm / X")
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
    print(f"{'task':28s}{'arm':>16}{'X ms':>9}{'arm ms':>9}{'ratio':>8}  (each repeat)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for task_name in tasks:
            reps = [measure(task_name, args, [(m, o) for _, m, o in arms], tmp) for _ in range(args.repeat)]
            for j, (label, _, _) in enumerate(arms, start=1):
                ratios = [r[j] / r[0] for r in reps]
                x_ms = statistics.median(r[0] for r in reps) * 1e3
                a_ms = statistics.median(r[j] for r in reps) * 1e3
                print(f"{task_name:28s}{label:>16}{x_ms:>9.2f}{a_ms:>9.2f}{statistics.median(ratios):>8.3f}  "
                      + " ".join(f"{x:.3f}" for x in ratios), flush=True)
                rows.append(dict(task=task_name, upstream=args.upstream, model=args.model, arm=label.rstrip("*"),
                                 x_ms=x_ms, arm_ms=a_ms, ratio=statistics.median(ratios), steps=args.steps,
                                 repeats=args.repeat, threads=args.threads, device=args.device))
        if "saflex" in args.learners:
            print("* the default setting's refresh period")
    if args.csv:
        import pandas as pd

        pd.DataFrame(rows).to_csv(args.csv, index=False)
        print(f"wrote {args.csv}")


if __name__ == "__main__":
    main()
