"""How long does `saflex-bench sweep` take to plan a 1000-run grid and check it against a results root
that already holds those 1000 runs, done? (goal: < 2 s)

    python benchmarks/bench_sweep_planning.py [--runs 1000] [--repeat 3]

Creates a temporary results root with one valid result.json per planned run (plus 1000 unrelated
runs, so the check cannot just count directories), then times, in this process:
  load   parse + validate the YAML
  plan   expand the grid, apply skip rules, build + normalise every RunSpec, dedupe by key
  check  which planned runs are done (valid result.json) -> the set `sweep` would drop
  status the full per-run state (`status`: done / running / pending / failed / not submitted)
Package imports (torch, torchvision via the method registry) are timed separately: they are paid
once per CLI call whatever the grid size.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000, help="grid size (multiple of 10)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    t0 = time.perf_counter()
    import bench.tasks  # noqa: F401  (torch)
    import baselines  # noqa: F401  (torchvision)
    from bench.store import ResultsStore
    from sweeps.config import load_sweep
    from sweeps.plan import done_keys, plan_sweep
    from sweeps.status import counts, run_states

    t_import = time.perf_counter() - t0

    seeds = args.runs // 10
    methods = ["none", "rand-m9-n2", "trivialaug", "cutmix-a1.0", "mixup-a0.2"]
    methods += [m + "+saflex" for m in methods]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sweep = tmp / "bench1000.yaml"
        sweep.write_text(json.dumps({
            "name": "bench1000",
            "fixed": {"task": "digits/sklearn", "epochs": 3},
            "grid": {"method": methods, "seed": list(range(seeds))},
            "skip": [{"when": {"method": "autoaug-*"}, "reason": "never matches here; rules are evaluated"}],
        }))
        plan = plan_sweep(load_sweep(sweep))
        assert len(plan.runs) == args.runs, len(plan.runs)
        store = ResultsStore(tmp / "results")
        for i, run in enumerate(plan.runs):  # 1000 done runs of this grid ...
            store.write_spec(run.key, run.spec.to_dict())
            store.write_result(run.key, {"key": run.key, "status": "done", "spec": run.spec.to_dict(),
                                         "metrics": {"test_acc": 0.9, "test_auc": 0.95}, "cost": {"wall_s": 1.0}})
        for i in range(args.runs):  # ... and 1000 runs of other sweeps
            k = f"{i:012x}"
            store.write_result(k, {"key": k, "status": "done"})

        rows = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            cfg = load_sweep(sweep)
            t_load = time.perf_counter() - t
            t = time.perf_counter()
            plan = plan_sweep(cfg)
            t_plan = time.perf_counter() - t
            t = time.perf_counter()
            done = done_keys(store, plan.keys)
            t_check = time.perf_counter() - t
            t = time.perf_counter()
            c = counts(run_states(store, plan.keys, {}, done))
            t_status = time.perf_counter() - t
            assert len(done) == args.runs and c["done"] == args.runs
            rows.append((t_load, t_plan, t_check, t_status))

    med = [statistics.median(col) for col in zip(*rows)]
    total = med[0] + med[1] + med[2]
    print(f"sweep planning benchmark: {args.runs}-run grid vs a results root with {args.runs} done runs "
          f"(+{args.runs} others), median of {args.repeat}")
    print(f"  imports (once per CLI call): {t_import:.2f} s")
    print(f"  load {med[0] * 1e3:.1f} ms | plan {med[1] * 1e3:.0f} ms | check done {med[2] * 1e3:.0f} ms | "
          f"full status {med[3] * 1e3:.0f} ms")
    verdict = "OK" if total < 2.0 else "SLOWER THAN GOAL"
    print(f"plan + check {args.runs} runs: {total:.3f} s  (goal < 2 s: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
