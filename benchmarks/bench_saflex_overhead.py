"""Step-time ratio SAFLEX / upstream alone, per task family, at SAFLEX's default knobs (goal: <= 1.10)
or at given refresh periods.

    python benchmarks/bench_saflex_overhead.py [--tasks digits/sklearn medmnist/breastmnist ...]
        [--data-root DIR] [--refresh 1 4 16] [--steps 40] [--threads 1] [--set saflex.val_batch=512]

Without --refresh it measures the default setting (today val_batch=32, refresh=4, ref_ema=0.5);
the first release's default is `--refresh 1 --set saflex.val_batch=512 --set saflex.ref_ema=0`.

Measured in one process: two trainers of the same upstream and seed — `X` and `X+saflex` — take the
same augmented batches and alternate steps, so both see the same machine state. The ratio is the
MEAN step time (total time over the steps, reference refreshes included) of X+saflex over X; a median
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


def measure(task_name: str, args, refresh: int | None, tmp: str) -> tuple[float, float, float]:
    over = dict(kv.split("=", 1) for kv in args.set)
    if args.model:
        over["model"] = args.model
    plain = build(task_name, args.upstream, over, args.data_root, args.device, tmp)
    sx_over = over if refresh is None else {**over, "saflex.refresh": refresh}
    sfx = build(task_name, f"{args.upstream}+saflex", sx_over, args.data_root, args.device, tmp)
    t_plain = t_sfx = 0.0
    n = 0
    for epoch in range(100):
        for bp, bs in zip(plain.batches(epoch), sfx.batches(epoch)):
            for tr, batch in ((plain, bp), (sfx, bs)):
                sync(tr.device)
                t0 = time.perf_counter()
                tr.step(batch)
                sync(tr.device)
                dt = time.perf_counter() - t0
                if n >= args.warmup:
                    if tr is plain:
                        t_plain += dt
                    else:
                        t_sfx += dt
            plain.state.step += 1
            sfx.state.step += 1
            n += 1
            if n >= args.warmup + args.steps:
                k = n - args.warmup
                return t_plain / k, t_sfx / k, t_sfx / t_plain
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
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--set", action="append", default=[], help="extra run field / saflex.knob overrides")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.data_root = resolve_data_root(args.data_root)
    tasks = args.tasks or one_task_per_family(args.data_root)
    print(f"threads {args.threads}  device {args.device}  upstream {args.upstream}  model {args.model}  "
          f"{args.steps} steps after {args.warmup} warm-up; ratio = mean step time X+saflex / X")
    from saflex_core import SaflexConfig

    default_refresh = SaflexConfig().replace(**{k[7:]: v for k, v in (kv.split("=", 1) for kv in args.set)
                                               if k.startswith("saflex.")}).refresh
    print(f"{'task':28s}{'refresh':>8}{'X ms':>9}{'X+S ms':>9}{'ratio':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for task_name in tasks:
            for refresh in args.refresh:
                a, b, r = measure(task_name, args, refresh, tmp)
                label = f"{default_refresh}*" if refresh is None else str(refresh)
                print(f"{task_name:28s}{label:>8}{a * 1e3:>9.2f}{b * 1e3:>9.2f}{r:>8.3f}", flush=True)
        print("* the default setting's refresh period")


if __name__ == "__main__":
    main()
