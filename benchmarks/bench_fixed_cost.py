"""What one `saflex-bench run` costs besides training: CPU seconds per phase of a 1-epoch run.

    OMP_NUM_THREADS=1 python benchmarks/bench_fixed_cost.py --data-root DATA [--repeat 3] [--wandb offline]
        [--runs digits breast tabular]

Each run is a fresh interpreter calling the real CLI (`bench.cli.main(["run", ...])`) with timers
wrapped around its phases (nothing else changes):

    imports   interpreter start up to the first data read (CLI, spec, torch, the task's modules)
    data      the task's load + the reference split
    tracking  opening the wandb run (start_tracking)
    build     Trainer(...): model, learner, optimiser, data path
    training  Trainer.fit without its final evaluation
    test      Trainer.finish: best weights on the selection and test splits
    exit      result.json, closing the wandb run, checkpoints pruned, interpreter exit, plus the CPU of
              any process the run started and waited for (wandb's service)

CPU = user + system time of the run's process tree (os.wait4), so a loaded machine does not inflate
it the way wall time would. fixed = total - training - test: what a run pays whatever its length.
Prints the median over --repeat runs per phase. `--in-process N` runs N runs in one interpreter (as
a serial pack does, `launcher.pack_mode: serial`) and prints the last run's phases: what one more run
costs once the interpreter is warm (imports = the CLI call up to the data read; exit = after the test
evaluation up to the call's return).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PHASES = ("imports", "data", "tracking", "build", "training", "test", "exit")
RUNS = {  # name -> (task, method, extra CLI args)
    "digits": ("digits/sklearn", "rand-m9-n2+saflex", []),
    "breast": ("medmnist/breastmnist", "rand-m9-n2+saflex", ["--model", "small_cnn"]),
    "tabular": ("tabular/pmlb:pima", "gauss-s0.1+saflex", []),
}


def _child(argv: list[str]) -> None:
    """Run the CLI with phase timers; print the phase marks as one JSON line on fd 3's stand-in (stderr tag)."""
    marks: dict[str, float] = {}
    clock = time.process_time

    def wrap(obj, name, before=None, after=None):
        fn = getattr(obj, name)

        def wrapper(*a, **k):
            if before:
                before()
            try:
                return fn(*a, **k)
            finally:
                if after:
                    after()

        setattr(obj, name, wrapper)

    import bench.tasks as tasks_mod

    get_task = tasks_mod.get_task

    def timed_get_task(name):
        task = get_task(name)
        load = task.load

        def timed_load(*a, **k):
            marks.setdefault("data0", clock())
            return load(*a, **k)

        task.load = timed_load
        return task

    tasks_mod.get_task = timed_get_task
    import bench.tracking as tracking_mod

    wrap(tracking_mod, "start_tracking", lambda: marks.setdefault("track0", clock()),
         lambda: marks.setdefault("track1", clock()))
    import bench.trainer as trainer_mod

    wrap(trainer_mod.Trainer, "__init__", lambda: marks.setdefault("build0", clock()),
         lambda: marks.setdefault("build1", clock()))
    wrap(trainer_mod.Trainer, "finish", lambda: marks.setdefault("test0", clock()),
         lambda: marks.setdefault("test1", clock()))
    from bench.cli import main

    n = int(os.environ.get("BENCH_FIXED_COST_RUNS", "1"))
    code = 0
    for i in range(n):  # n > 1: the runs of a serial pack, one interpreter (seeds i, i+1, ...)
        marks.clear()
        marks["start"] = clock() if i else 0.0
        run_argv = list(argv)
        run_argv[run_argv.index("--seed") + 1] = str(int(run_argv[run_argv.index("--seed") + 1]) + 100 * i)
        code = main(run_argv) or code
        marks["end"] = clock()
        sys.stderr.write("PHASES " + json.dumps(marks) + "\n")
        sys.stderr.flush()
    raise SystemExit(code)


CHILD = ("import sys, time; sys.path.insert(0, sys.argv[1]); "
         "import runpy; m = runpy.run_path(sys.argv[2], run_name='bench_fixed_cost_child'); m['_child'](sys.argv[3:])")


def one_run(name: str, data_root: str | None, results: str, wandb: str, seed: int, in_process: int = 1) -> dict[str, float]:
    task, method, extra = RUNS[name]
    argv = ["run", "--task", task, "--method", method, "--seed", str(seed), "--epochs", "1", "--quiet",
            "--results", results, "--wandb", wandb, "--threads", "1", "--keep-checkpoints", "none", *extra]
    if data_root:
        argv += ["--data-root", data_root]
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, OMP_NUM_THREADS="1", BENCH_FIXED_COST_RUNS=str(in_process))
    proc = subprocess.Popen([sys.executable, "-c", CHILD, root, __file__, *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: run failed ({err.strip().splitlines()[-1] if err.strip() else proc.returncode})")
    all_marks = [json.loads(line[7:]) for line in err.splitlines() if line.startswith("PHASES ")]
    if in_process > 1:  # a later run of the pack: what one more run costs in a warm interpreter
        return _phases(all_marks[-1], all_marks[-1]["end"] - all_marks[-1]["start"], all_marks[-1]["start"])
    return _phases(all_marks[0], usage.ru_utime + usage.ru_stime, 0.0)


def _phases(marks: dict, total: float, start: float) -> dict[str, float]:
    """Phase seconds from one run's marks; `total` from `start` (0: the process start)."""
    marks = {k: v - start for k, v in marks.items()}
    # the trainer is built before the run folder and the tracker (a run that cannot start writes
    # nothing): phases are read from their own marks, whatever their order
    first_after_data = min(marks["track0"], marks["build0"])
    out = dict(imports=marks["data0"], data=first_after_data - marks["data0"], tracking=marks["track1"] - marks["track0"],
               build=marks["build1"] - marks["build0"], training=marks["test0"] - max(marks["build1"], marks["track1"]),
               test=marks["test1"] - marks["test0"])
    # exit, plus what sits between the phases (run directory, attempt file, lock): the rest of the total
    out["exit"] = total - sum(out.values())
    out["total"] = total
    out["fixed"] = total - out["training"] - out["test"]
    return out


def measure(names, data_root, wandb: str, repeat: int, in_process: int = 1) -> dict[str, dict[str, float]]:
    table = {}
    for name in names:
        rows = []
        for r in range(repeat):
            with tempfile.TemporaryDirectory() as results:
                rows.append(one_run(name, data_root, results, wandb, seed=r, in_process=in_process))
        table[name] = {k: statistics.median(row[k] for row in rows) for k in rows[0]}
    return table


def format_table(table: dict[str, dict[str, float]]) -> str:
    cols = [*PHASES, "fixed", "total"]
    lines = [f"{'run':10s}" + "".join(f"{c:>10s}" for c in cols)]
    for name, row in table.items():
        lines.append(f"{name:10s}" + "".join(f"{row[c]:>10.2f}" for c in cols))
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=os.environ.get("SAFLEX_DATA"))
    p.add_argument("--runs", nargs="*", default=list(RUNS), choices=list(RUNS))
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--wandb", default="offline", choices=("offline", "disabled"))
    p.add_argument("--in-process", type=int, default=1, metavar="N",
                   help="N runs in one interpreter (a serial pack): print the phases of the last one")
    args = p.parse_args()
    what = f", the {args.in_process}th run in one interpreter" if args.in_process > 1 else ", one process per run"
    print(f"CPU seconds per phase, 1 epoch, 1 thread, wandb {args.wandb}, median of {args.repeat}{what}")
    print(format_table(measure(args.runs, args.data_root, args.wandb, args.repeat, args.in_process)))


if __name__ == "__main__":
    main()
