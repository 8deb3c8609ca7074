"""How long do `report` and `compare` take on 10k runs when they read the results index? (goal: <= 2 s warm)

    python benchmarks/bench_results_index.py [--runs 10000] [--epochs 5]

Synthesises two results roots of `--runs` run records each (result.json + metrics.jsonl, the shape
bench/runner.py writes: tasks x upstreams x learners x seeds; root B = root A with the metrics nudged),
then times, in this process, as CPU seconds (time.process_time):
  build cold    index built from nothing (every result.json and metrics.jsonl read)
  build warm    index brought up to date when nothing changed (a stat per file)
  build +1%     ... after 1 % of the runs were rewritten (only those are re-read)
  load, new     load_results(root) after a change: the frame built from the index rows and cached
  load, warm    load_results(root) again: the cached frame (plus the warm build)
  report        load + write_tables (what `saflex-bench report` does; figures are a separate command)
  compare       compare_roots(A, B) + to_markdown (what `saflex-bench compare` does)
CPU seconds, not wall: the machine this runs on may be shared.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TASKS = [f"medmnist/set{i}" for i in range(10)]
UPSTREAMS = ["none", "rand-m9-n2", "trivialaug", "cutmix-a1.0", "mixup-a0.2"]
LEARNERS = ["", "+saflex", "+ref", "+augnet"]
BASE = dict(model="small_cnn", epochs=20, optimizer="adam", lr=1e-3, weight_decay=0.0, momentum=0.9, schedule="multistep",
            milestones=[0.5, 0.75], gamma=0.1, batch_size=128, select_metric="auc", as_rgb=False, saflex=None)


# every field of a real record (bench/runner.py's shape: cost, data, info, versions, numerics, ...)
SHAPE = {
    "schema_version": 2, "semantics": {}, "status": "done", "device": "cpu", "host": "node01", "threads": 1,
    "workers": 0, "warnings": [], "finished_at": "2026-12-01T00:00:00Z",
    "cost": {"ckpt_s": 0.36, "compute_s": 61.1, "data_s": 5.96, "epoch_s": 3.67, "learner_s": 6.33, "peak_mem_mb": 1124.6,
             "samples_per_s": 294.2, "step_s": 0.41, "val_s": 5.23, "wall_s": 79.1},
    "data": {"reference": 60, "test": 400, "train": 1080, "val": 60},
    "info": {"n_reference": 60, "n_select": 60, "ref_from": "val"},
    "metrics": {"last_val_acc": 0.5, "test_loss": 1.25, "val_auc": 0.81, "val_loss": 1.09},
    "numerics": {"cpu_capability": "AVX512", "cpu_model": "AMD EPYC", "cublas_workspace_config": None, "cuda": "13.0",
                 "cudnn": 92400, "cudnn_benchmark": False, "cudnn_deterministic": False, "deterministic": False,
                 "deterministic_algorithms": False, "device": "cpu", "device_name": "AMD EPYC", "interop_threads": 2,
                 "mkl_num_threads": None, "mkldnn": True, "numpy_blas": "scipy-openblas 0.3.31", "omp_num_threads": "1",
                 "openblas_num_threads": None, "threads": 1, "torch": "2.14.1+cu130", "torch_blas": "mkl"},
    "versions": {"python": "3.11.7", "saflex_bench": "0.1.0", "torch": "2.14.1+cu130"},
}


def synthesise(root: Path, n: int, epochs: int, shift: float = 0.0) -> None:
    """n run folders, written directly (no fsync: the writer's speed is not what is measured)."""
    runs = root / "runs"
    per = len(TASKS) * len(UPSTREAMS) * len(LEARNERS)
    seeds = -(-n // per)
    i = 0
    for seed in range(seeds):
        for task in TASKS:
            for up in UPSTREAMS:
                for lr in LEARNERS:
                    if i >= n:
                        return
                    key = f"{i:012x}"
                    spec = dict(BASE, task=task, method=up + lr, seed=seed)
                    if lr == "+saflex":
                        spec["saflex"] = {"eps": 0.05, "refresh": "auto", "val_batch": 64}
                    acc = 0.6 + 0.01 * (hash((task, up, lr)) % 20) + 0.001 * seed + shift * ((i % 7) - 3) / 1000
                    rec = {**SHAPE, "key": key, "sweep": "big", "spec": spec,
                           "metrics": {**SHAPE["metrics"], "test_acc": acc, "test_auc": acc + 0.1, "val_acc": acc,
                                       "best_epoch": epochs, "epochs_run": epochs}}
                    d = runs / key
                    d.mkdir(parents=True)
                    (d / "result.json").write_text(json.dumps(rec, indent=2))
                    (d / "metrics.jsonl").write_text("".join(
                        json.dumps({"epoch": e, "train_loss": 1.0 / e, "val_acc": acc - 0.01 * (epochs - e)}) + "\n"
                        for e in range(1, epochs + 1)))
                    i += 1


def cpu(fn):
    t = time.process_time()
    out = fn()
    return time.process_time() - t, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=5, help="metrics.jsonl rows per run")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    from bench.results.index import ResultsIndex
    from reports.compare import compare_roots, to_markdown
    from reports.load import load_results
    from reports.tables import write_tables

    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp) / "a", Path(tmp) / "b"
        t = time.perf_counter()
        synthesise(a, args.runs, args.epochs)
        synthesise(b, args.runs, args.epochs, shift=1.0)
        print(f"synthesised 2 x {args.runs} runs in {time.perf_counter() - t:.1f} s wall")

        rows = []
        s, idx = cpu(lambda: ResultsIndex(a).build())
        rows.append(("build cold", s, f"{idx.last_build['read']} runs read"))
        ResultsIndex(b).build()
        s, idx = cpu(lambda: ResultsIndex(a).build())
        rows.append(("build warm", s, f"{idx.last_build['read']} runs read"))
        for k in range(0, args.runs, 100):  # rewrite 1 % of the records
            f = a / "runs" / f"{k:012x}" / "result.json"
            rec = json.loads(f.read_text())
            rec["metrics"]["test_acc"] += 1e-6
            f.write_text(json.dumps(rec))
            os.utime(f, ns=(time.time_ns(), time.time_ns()))
        s, idx = cpu(lambda: ResultsIndex(a).build())
        rows.append(("build +1%", s, f"{idx.last_build['read']} runs read"))
        s, df = cpu(lambda: load_results(a))
        rows.append(("load, new", s, f"frame of {len(df)} rows x {df.shape[1]} columns built and cached in the index"))
        load_results(b)
        s, df = cpu(lambda: load_results(a))
        rows.append(("load, warm", s, "the cached frame"))
        out = Path(tmp) / "report"
        s = median(cpu(lambda: write_tables(load_results(a), out))[0] for _ in range(args.repeat))
        rows.append(("report", s, f"load + write_tables (median of {args.repeat})"))
        s = median(cpu(lambda: to_markdown(compare_roots(a, b)))[0] for _ in range(args.repeat))
        rows.append(("compare", s, f"2 x load + compare + markdown (median of {args.repeat})"))

        print(f"\n{'step':<12} {'CPU s':>7}  note")
        for name, sec, note in rows:
            print(f"{name:<12} {sec:7.2f}  {note}")
        goal = max(s for n, s, _ in rows if n in ("report", "compare"))
        print(f"\nreport/compare on {args.runs} runs, warm index: max {goal:.2f} CPU s (goal <= 2 s): "
              + ("met" if goal <= 2 else "NOT met"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
