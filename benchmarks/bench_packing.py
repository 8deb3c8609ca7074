"""Runs per hour with K runs packed per job (`launcher.runs_per_job`), K = 1, 4, 8 by default.

    python benchmarks/bench_packing.py --tasks medmnist/breastmnist --data-root DATA --epochs 5 --device cuda
    python benchmarks/bench_packing.py --tasks digits/sklearn --epochs 1 --runs 4 --ks 1,2   # a CPU smoke run

For each K: a fresh results root, the same N runs (tasks x seeds 0.., method --method), one
`saflex-bench sweep --executor local` with `runs_per_job: K` and `array_parallelism: 1` (one job at a
time, as on one GPU: K = 1 is one run at a time), timed end to end (process start, imports, data, all
runs). Prints runs/hour per K and the speed-up over the first K. The goal it measures: the 108-run
MedMNIST sweep (sweeps/medmnist.yaml) in under one GPU-hour on one modern GPU, i.e. >= 108 runs/hour
at the full protocol (100 epochs); with fewer --epochs the figure is only a relative one.
`--device cpu` hides the GPUs from the runs (CUDA_VISIBLE_DEVICES=""); `cuda` requires one.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="digits/sklearn", help="comma-separated tasks (default digits/sklearn)")
    ap.add_argument("--method", default="none")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--runs", type=int, default=8, help="runs per K (seeds 0.. spread over the tasks)")
    ap.add_argument("--ks", default="1,4,8", help="runs per job to compare (default 1,4,8)")
    ap.add_argument("--cpus-per-task", type=int, default=1, help="CPU threads per run (a pack asks K times)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--data-root", help="dataset folder (MedMNIST npz files)")
    ap.add_argument("--pack-mode", choices=("processes", "serial"), default="processes",
                    help="launcher.pack_mode for K > 1 (serial: the pack's runs one after another in one interpreter)")
    ap.add_argument("--wandb", choices=("offline", "disabled"), default="disabled")
    ap.add_argument("--keep", help="keep the results roots under this folder (default: a temporary one)")
    args = ap.parse_args()

    env = dict(os.environ, WANDB_MODE=args.wandb, PYTHONPATH=str(REPO))
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    elif args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("bench_packing: --device cuda but no CUDA GPU is visible", file=sys.stderr)
            return 2
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    seeds = list(range(-(-args.runs // len(tasks))))
    ks = [int(k) for k in args.ks.split(",")]
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-packing-"))
    rows = []
    for k in ks:
        sweep = root / f"pack{k}.yaml"
        sweep.parent.mkdir(parents=True, exist_ok=True)
        sweep.write_text(json.dumps({  # JSON is YAML
            "name": f"pack{k}", "fixed": {"method": args.method, "epochs": args.epochs},
            "grid": {"task": tasks, "seed": seeds},
            "launcher": {"runs_per_job": k, "array_parallelism": 1, "cpus_per_task": args.cpus_per_task,
                         "timeout_min": 600, **({"pack_mode": args.pack_mode} if k > 1 else {})},
        }))
        cmd = [sys.executable, "-m", "bench", "sweep", str(sweep), "--executor", "local",
               "--results", str(root / f"results-k{k}"), "--wandb", args.wandb]
        if args.data_root:
            cmd += ["--data-root", args.data_root]
        t0 = time.perf_counter()
        c0 = os.times()
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        c1 = os.times()
        cpu = (c1.children_user - c0.children_user) + (c1.children_system - c0.children_system)
        n = len(tasks) * len(seeds)
        done = sum(1 for p in (root / f"results-k{k}" / "runs").glob("*/result.json"))
        if out.returncode != 0 or done != n:
            print(out.stdout[-2000:] + out.stderr[-2000:], file=sys.stderr)
            print(f"bench_packing: K={k}: {done}/{n} runs done (exit {out.returncode})", file=sys.stderr)
            return 1
        rows.append((k, n, wall, n / wall * 3600, cpu))
        print(f"K={k}: {n} runs in {wall:.1f} s ({cpu:.1f} CPU s) -> {n / wall * 3600:.0f} runs/hour", flush=True)
    # runs per CPU-hour: what a loaded / shared machine does not distort (all processes of the sweep)
    print(f"\n{'K':>3}  {'runs':>4}  {'wall_s':>8}  {'runs/hour':>9}  {'cpu_s/run':>9}  {'runs/CPU-h':>10}  speed-up (CPU)")
    for k, n, wall, rate, cpu in rows:
        print(f"{k:>3}  {n:>4}  {wall:>8.1f}  {rate:>9.0f}  {cpu / n:>9.2f}  {n / cpu * 3600:>10.0f}  "
              f"{(rows[0][4] / rows[0][1]) / (cpu / n):.2f}x")
    print(f"(tasks {','.join(tasks)}, method {args.method}, {args.epochs} epochs, device {args.device}, "
          f"{args.cpus_per_task} CPU threads per run, packs {args.pack_mode}, wandb {args.wandb}" + (f"; results under {root})" if args.keep else ")"))
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
