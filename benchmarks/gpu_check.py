"""The suite's cost on one GPU, in one command and one table (within ~8 minutes on an H100).

    python benchmarks/gpu_check.py --data-root DATA            # on a GPU node (or: bash scripts/gpu_check.sh)
    python benchmarks/gpu_check.py --dry [--data-root DATA]    # the same sections, tiny, on the CPU (tests)

Sections (each row: section, what, value, note):
  loop       the suite's loop vs a plain PyTorch loop (samples/s ratio; benchmarks/bench_loop.py)
  saflex     X+SAFLEX / X mean step time, every step, order alternated, median of 3 (bench_saflex_overhead.py)
  augment    RandAugment images/s: per-image (CPU), batched (CPU), batched on the device (bench_augment.py)
  data path  loader path vs device-resident split (samples/s ratio; bench_loop.py --data-path)
  packing    runs/hour with 1, 4, 8 runs per job, one job at a time (bench_packing.py)
  epoch      one epoch of one task per family with its default model, bf16 autocast on a GPU: epoch_s, peak MB
  projection the 108-run MedMNIST sweep (sweeps/medmnist.yaml): sum over its runs of epochs x measured
             epoch time (at each run's train size) + fixed cost per run, one run at a time and packed
A section that fails prints its error in its row and the rest go on. Exit code 1 if any failed.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

ROWS: list[tuple[str, str, str, str]] = []
FAILED: list[str] = []


def row(section: str, what: str, value: str, note: str = "") -> None:
    ROWS.append((section, what, value, note))
    print(f"  {section:10s} {what:42s} {value:>12s}  {note}", flush=True)


def section(name: str):
    def deco(fn):
        def run(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            except Exception as e:  # noqa: BLE001 - one section's failure must not hide the others
                FAILED.append(name)
                row(name, "FAILED", "-", f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:120])
                traceback.print_exc(file=sys.stderr)
            finally:
                print(f"  ({name}: {time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
        return run
    return deco


def _available(tasks, data_root):
    from bench.tasks import get_task

    return [t for t in tasks if get_task(t).check_data(data_root) is None]


@section("loop")
def check_loop(cfg) -> None:
    import bench_loop

    args = SimpleNamespace(device=cfg.device, steps=cfg.steps, upstream="none", data_root=cfg.data_root)
    with tempfile.TemporaryDirectory() as tmp:
        for task in cfg.image_tasks[:1]:
            for model in cfg.models:
                plain, suite = bench_loop.measure(task, model, args, tmp)
                row("loop", f"{task} {model} suite/plain", f"{suite / plain:.3f}x", f"{suite:.0f} vs {plain:.0f} samples/s")


@section("saflex")
def check_saflex(cfg) -> None:
    import statistics

    import bench_saflex_overhead as bso

    args = SimpleNamespace(set=[], model="small_cnn", upstream="rand-m9-n2", data_root=cfg.data_root, device=cfg.device,
                           warmup=2, skip=0, order="alternate", steps=cfg.steps)
    with tempfile.TemporaryDirectory() as tmp:
        for task in cfg.image_tasks:
            ratios = []
            for _ in range(cfg.repeat):
                x, arm = bso.measure(task, args, [("rand-m9-n2+saflex", {})], tmp)
                ratios.append(arm / x)
            row("saflex", f"{task} small_cnn", f"{statistics.median(ratios):.3f}x",
                f"median of {cfg.repeat}, first {cfg.steps} steps: " + " ".join(f"{r:.3f}" for r in ratios))


@section("augment")
def check_augment(cfg) -> None:
    import torch

    import bench_augment

    for size, c in ((28, 1), (32, 3)):
        args = SimpleNamespace(batch=cfg.aug_batch, reps=cfg.aug_reps, device="cpu")
        per_image, batched = bench_augment.measure("rand-m9-n2", c, size, args)
        row("augment", f"rand-m9-n2 {c}x{size}px per-image / batched CPU", f"{batched / per_image:.2f}x",
            f"{per_image:.0f} vs {batched:.0f} images/s")
        if torch.device(cfg.device).type == "cuda":
            args.device = cfg.device
            _, on_dev = bench_augment.measure("rand-m9-n2", c, size, args)
            row("augment", f"rand-m9-n2 {c}x{size}px batched on {cfg.device}", f"{on_dev:.0f}/s",
                f"{on_dev / per_image:.1f}x the per-image path")


@section("data path")
def check_data_path(cfg) -> None:
    import bench_loop

    args = SimpleNamespace(device=cfg.device, steps=cfg.steps, upstream="rand-m9-n2", data_root=cfg.data_root)
    with tempfile.TemporaryDirectory() as tmp:
        task = cfg.image_tasks[0]
        loader, device = bench_loop.measure_data_path(task, cfg.models[-1], args, tmp)
        row("data path", f"{task} {cfg.models[-1]} device/loader", f"{device / loader:.2f}x",
            f"{device:.0f} vs {loader:.0f} samples/s (rand-m9-n2)")


@section("packing")
def check_packing(cfg) -> dict[int, float]:
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_packing.py"), "--tasks", cfg.pack_task, "--epochs", "1",
           "--runs", str(cfg.pack_runs), "--ks", ",".join(map(str, cfg.ks)), "--device", cfg.pack_device,
           "--pack-mode", cfg.pack_mode]
    if cfg.data_root:
        cmd += ["--data-root", str(cfg.data_root)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    if out.returncode != 0:
        raise RuntimeError((out.stderr.strip().splitlines() or ["bench_packing failed"])[-1])
    rates = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0].isdigit() and parts[1].isdigit():
            k, rate = int(parts[0]), float(parts[3])
            rates[k] = rate
            row("packing", f"{cfg.pack_task} 1 epoch, K={k} ({cfg.pack_mode})", f"{rate:.0f}/h",
                f"{rate / rates[min(rates)]:.2f}x K={min(rates)}")
    if not rates:
        raise RuntimeError("bench_packing printed no table")
    return rates


@section("epoch")
def check_epochs(cfg) -> dict[str, dict]:
    import bench_saflex_overhead as bso
    from bench.runner import run_spec
    from bench.spec import make_spec

    tasks = cfg.family_tasks or bso.one_task_per_family(cfg.data_root)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for task in tasks:
            over = {"epochs": 1, **({"model": cfg.epoch_model} if cfg.epoch_model else {})}
            spec = make_spec(task, "none", 0, over)
            rec = run_spec(spec, tmp, cfg.data_root, wandb_mode="disabled", progress=False, device=cfg.device,
                           keep_checkpoints="none")
            c = rec["cost"]
            out[task] = dict(epoch_s=c["epoch_s"], samples_per_s=c["samples_per_s"], train=rec["data"]["train"],
                             model=spec.model, wall_s=c["wall_s"])
            row("epoch", f"{task} {spec.model}", f"{c['epoch_s']:.2f} s",
                f"{c['samples_per_s']:.0f} samples/s, peak {c['peak_mem_mb']:.0f} MB, "
                f"{'bf16 autocast' if str(rec['device']).startswith('cuda') else 'fp32 CPU'}")
    return out


@section("projection")
def project(cfg, epochs: dict, rates: dict | None, fixed_s: float) -> None:
    from sweeps import load_sweep, plan_sweep

    plan = plan_sweep(load_sweep(str(REPO / "sweeps" / "medmnist.yaml")))
    ref = next((v for t, v in epochs.items() if t.startswith("medmnist/")), None) or next(iter(epochs.values()))
    sizes = {"medmnist/breastmnist": 546, "medmnist/pneumoniamnist": 4708, "medmnist/retinamnist": 1080}
    total = 0.0
    for run in plan.runs:
        n = sizes.get(run.spec.task, ref["train"])
        total += run.spec.epochs * n / ref["samples_per_s"] * (1.15 if run.spec.learner == "saflex" else 1.0) + fixed_s
    note = (f"{len(plan.runs)} runs, epochs x train size / {ref['samples_per_s']:.0f} samples/s ({ref['model']}), "
            f"+{fixed_s:.0f} s per run, SAFLEX at 1.15x")
    row("projection", "MedMNIST sweep, one run at a time", f"{total / 3600:.2f} h", note)
    if rates and len(rates) > 1:
        k = max(rates, key=rates.get)
        row("projection", f"MedMNIST sweep, K={k} packed", f"{total / 3600 / (rates[k] / rates[min(rates)]):.2f} h",
            f"the packing speed-up measured above ({rates[k] / rates[min(rates)]:.2f}x)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=os.environ.get("SAFLEX_DATA"))
    p.add_argument("--device", help="default: cuda (cpu with --dry)")
    p.add_argument("--dry", action="store_true", help="tiny sizes on the CPU: checks that every section runs")
    args = p.parse_args(argv)
    import torch

    from bench.runner import resolve_data_root

    data_root = resolve_data_root(args.data_root)
    if args.dry:
        device = args.device or "cpu"
        torch.set_num_threads(1)
        cfg = SimpleNamespace(device=device, steps=4, repeat=1, models=["small_cnn"], aug_batch=16, aug_reps=1,
                              pack_task="digits/sklearn", pack_runs=2, ks=(2,), pack_mode="serial", pack_device="cpu",
                              family_tasks=["digits/sklearn"], epoch_model="small_cnn")
    else:
        device = args.device or "cuda"
        if device.startswith("cuda") and not torch.cuda.is_available():
            print("gpu_check: no CUDA GPU visible (use --dry for the CPU check)", file=sys.stderr)
            return 2
        cfg = SimpleNamespace(device=device, steps=60, repeat=3, models=["small_cnn", "resnet18"], aug_batch=256,
                              aug_reps=3, pack_task="medmnist/breastmnist", pack_runs=8, ks=(1, 4, 8),
                              pack_mode="processes", pack_device="cuda", family_tasks=None, epoch_model=None)
    cfg.data_root = data_root
    cfg.image_tasks = _available(["medmnist/breastmnist", "digits/sklearn"], data_root) or ["digits/sklearn"]
    if not args.dry and cfg.pack_task not in cfg.image_tasks:
        cfg.pack_task = cfg.image_tasks[0]
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "CPU"
    print(f"gpu_check: {name}, torch {torch.__version__}{' (dry run: tiny sizes, figures not meaningful)' if args.dry else ''}")
    print(f"  {'section':10s} {'what':42s} {'value':>12s}  note")
    t0 = time.perf_counter()
    check_loop(cfg)
    check_saflex(cfg)
    check_augment(cfg)
    check_data_path(cfg)
    rates = check_packing(cfg)
    epochs = check_epochs(cfg) or {}
    if epochs:
        fixed = 6.0  # CPU s of a run's fixed cost, one process per run (benchmarks/bench_fixed_cost.py)
        project(cfg, epochs, rates, fixed)
    print(f"gpu_check: {time.perf_counter() - t0:.0f} s" + (f"; FAILED: {', '.join(FAILED)}" if FAILED else ""))
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
