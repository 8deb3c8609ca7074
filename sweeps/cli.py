"""`saflex-bench sweep FILE` and `saflex-bench status FILE` (registered through the
`saflex_bench.commands` entry point; bench never imports this module)."""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from typing import Any

from bench.errors import UsageError


def register(subparsers: Any) -> None:
    sw = subparsers.add_parser(
        "sweep", help="plan a sweep file's grid and submit the runs not done yet as one job array",
        description="Expand FILE's grid, drop runs that are done (valid result.json), skipped by rule or "
                    "still queued/running, and submit the rest as one submitit job array.")
    sw.add_argument("file", metavar="FILE", help="sweep YAML (a path, or a shipped sweep name: demo, medmnist)")
    sw.add_argument("--executor", choices=("local", "slurm", "debug"),
                    help="where to run (default: slurm when sbatch is on PATH and sinfo answers, else local)")
    sw.add_argument("--dry-run", action="store_true", help="print the plan (with skip reasons) and submit nothing")
    wait = sw.add_mutually_exclusive_group()
    wait.add_argument("--wait", dest="wait", action="store_true", default=None,
                      help="wait for the jobs and report each (default for local and debug)")
    wait.add_argument("--no-wait", dest="wait", action="store_false", help="return once submitted (default for slurm)")
    _common(sw)
    _narrowing(sw)
    sw.add_argument("--data-root", help="folder with the datasets (default $SAFLEX_DATA)")
    sw.add_argument("--wandb", choices=("online", "offline", "disabled"), help="wandb mode (default $WANDB_MODE or offline)")
    sw.add_argument("--threads", type=int,
                    help="torch CPU threads per run (default: the sweep's launcher.cpus_per_task); recorded in result.json")
    sw.add_argument("--oversubscribe", action="store_true",
                    help="allow --threads above this machine's CPUs on a local/debug executor (refused by default)")
    sw.add_argument("--runs-per-job", type=int, metavar="K",
                    help="train K runs concurrently in each job, sharing its GPU (default: the sweep's "
                         "launcher.runs_per_job, 1); the job asks for K x cpus_per_task CPUs and K x mem_gb")
    sw.add_argument("--cache", help="diffusion cache root for a generate: stage (default $SAFLEX_CACHE or ~/.cache/saflex-bench)")
    sw.set_defaults(func=cmd_sweep)

    st = subparsers.add_parser("status", help="done / running / pending / failed per run of a sweep file",
                               description="Print each planned run's state (failures with their last line) and the totals.")
    st.add_argument("file", metavar="FILE", help="sweep YAML (a path or a shipped sweep name)")
    _common(st)
    _narrowing(st)
    st.add_argument("--only", choices=("done", "running", "pending", "failed", "not-submitted"),
                    help="list only runs in this state (the totals still count all)")
    st.set_defaults(func=cmd_status)

    from sweeps.generate_cli import register_generate  # the diffusion-cache command, kept in its own module

    register_generate(subparsers)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", help="results root (default $SAFLEX_RESULTS or ./results)")
    p.add_argument("--allow-large-grid", dest="allow_large_grid", action="store_true",
                   help="plan a grid above 10,000 points (refused by default: planning takes ~1 ms a point)")


def _narrowing(p: argparse.ArgumentParser) -> None:
    """The flags that change the grid from the command line (give `status` the same ones as `sweep`)."""
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="fix a run field for the whole sweep, as `run --set` takes it (epochs=1, lr=0.01, "
                        "saflex.eps=0.05, task.<option>=...); replaces that axis of the grid; repeatable")
    p.add_argument("--seeds", metavar="S[,S...]", help="only these seeds (replaces the sweep's seed axis), e.g. 0,1")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N planned runs (a smoke test of a grid)")


def narrow_sweep(cfg, sets: dict[str, str] | None = None, seeds: list[int] | None = None):
    """`cfg` with `--set` fields fixed (dropped from every grid, so they override the file) and the seed
    axis replaced by `seeds`. The values go through the same coercion as `run --set` (bench.spec)."""
    sets = dict(sets or {})
    fixed = {**cfg.fixed, **sets}
    grids = [{k: v for k, v in g.items() if k not in sets} for g in cfg.grids]
    if seeds is not None:
        fixed.pop("seed", None)
        grids = [{**g, "seed": tuple(seeds)} for g in grids]
    return dataclasses.replace(cfg, fixed=fixed, grids=tuple(grids))


def _parse_seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or any(s < 0 for s in seeds):
        raise UsageError(f"--seeds: expected non-negative integers separated by commas (e.g. 0,1), got '{text}'")
    return list(dict.fromkeys(seeds))


# ---- helpers --------------------------------------------------------------------------------
def _load(args: argparse.Namespace):
    from bench.runner import resolve_results_root
    from bench.store import ResultsStore
    from sweeps.config import check_grid_size, load_sweep
    from sweeps.plan import plan_sweep

    from bench.spec import parse_assignments

    cfg = load_sweep(args.file)
    check_grid_size(cfg, getattr(args, "allow_large_grid", False))
    limit = getattr(args, "limit", None)
    if limit is not None and limit < 1:
        raise UsageError(f"--limit: expected an integer >= 1, got {limit}")
    sets = parse_assignments(getattr(args, "set", None) or [])
    seeds = _parse_seeds(getattr(args, "seeds", None))
    if sets or seeds is not None:
        cfg = narrow_sweep(cfg, sets, seeds)
    plan = plan_sweep(cfg)
    if limit is not None and limit < len(plan.runs):
        plan.runs = plan.runs[:limit]
    results = resolve_results_root(args.results).resolve()
    return cfg, plan, results, ResultsStore(results)


def _plan_line(plan) -> str:
    return (f"sweep {plan.sweep.name} ({plan.sweep.path}): {plan.points} grid points -> {len(plan.runs)} runs "
            f"({len(plan.skipped)} skipped by rule, {plan.duplicates} duplicates merged)")


def _narrowed(args: argparse.Namespace) -> str:
    parts = [f"--set {s}" for s in (getattr(args, "set", None) or [])]
    parts += [f"--seeds {args.seeds}"] if getattr(args, "seeds", None) else []
    parts += [f"--limit {args.limit}"] if getattr(args, "limit", None) else []
    return f"; narrowed by {' '.join(parts)}" if parts else ""


def _row(key: str, state: str, spec_or_point: Any, note: str = "") -> str:
    """One aligned line: key, state, task, method, seed, note."""
    if isinstance(spec_or_point, dict):
        task, method, seed = spec_or_point.get("task"), spec_or_point.get("method"), spec_or_point.get("seed", 0)
    else:
        task, method, seed = spec_or_point.task, spec_or_point.method, spec_or_point.seed
    return f"{key:<12}  {state:<13}  {task!s:<24}  {method!s:<26}  {seed!s:>4}  {note}".rstrip()


def _header(second: str = "STATE") -> str:
    return f"{'KEY':<12}  {second:<13}  {'TASK':<24}  {'METHOD':<26}  {'SEED':>4}  NOTE"


def _fmt_s(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{int(s // 60)} min {int(s % 60)} s"


# ---- sweep ------------------------------------------------------------------------------------
def cmd_sweep(args: argparse.Namespace) -> int:
    from bench.runner import resolve_data_root
    from bench.tracking import resolve_mode
    from sweeps.launcher import LEDGER, detect_executor, logs_folder, read_ledger, submit_runs, sweep_dir, sweep_lock
    from sweeps.plan import done_keys
    from sweeps.status import ALIVE, run_states

    from bench.store import check_results_root

    wandb_mode = resolve_mode(args.wandb)
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    if args.runs_per_job is not None and args.runs_per_job < 1:
        raise UsageError(f"--runs-per-job: expected an integer >= 1, got {args.runs_per_job}")
    cfg, plan, results, store = _load(args)
    check_results_root(results, create=not args.dry_run)
    if args.executor:
        kind, why = args.executor, "--executor"
    else:
        kind, why = detect_executor()
    if kind != "slurm":  # the runs share this machine's CPUs
        from bench.runner import check_threads

        check_threads(args.threads, args.oversubscribe)
    data_root = resolve_data_root(args.data_root)
    data_root = data_root.resolve() if data_root else None
    print(_plan_line(plan) + _narrowed(args))
    print(f"results {results}  executor {kind} ({why})  wandb {wandb_mode}")

    ledger_path = sweep_dir(results, cfg.name) / LEDGER
    launcher = cfg.launcher
    if cfg.generate is not None:  # diffusion caches first (sweeps/generate_stage.py)
        from sweeps.generate_cli import before_training

        launcher = before_training(cfg, kind, args.cache, data_root, results, args.dry_run)
        if launcher is None:
            return 1
    if args.runs_per_job is not None:  # the flag overrides the file
        launcher = dataclasses.replace(launcher, runs_per_job=args.runs_per_job)

    def classify():
        keys, specs = plan.keys, {r.key: r.spec for r in plan.runs}
        done = done_keys(store, keys, specs)
        states = run_states(store, keys, read_ledger(ledger_path), done, specs=specs)
        alive = [r for r in plan.runs if states[r.key].state in ALIVE]
        todo = [r for r in plan.runs if r.key not in done and states[r.key].state not in ALIVE]
        return done, states, alive, todo

    if args.dry_run:
        done, states, alive, todo = classify()
        missing = _missing_data(plan, data_root)
        if kind == "slurm" and shutil.which("srun") is None:
            missing["*"] = "--executor slurm but no `srun` on PATH (not a SLURM node; use --executor local)"
        axes = [a for g in cfg.grids for a in g if a not in ("task", "method", "seed")]

        def extra(point) -> str:  # the run's values on the other grid axes (knobs it ignores are left out)
            items = [f"{a}={point[a]}" for a in dict.fromkeys(axes) if a in point]
            return f"[{' '.join(items)}] " if items else ""

        from sweeps.launcher import estimate_run_s, stored_run_times
        from sweeps.plan import spec_view

        times = stored_run_times(store.iter_results())
        estimates = {r.key: estimate_run_s(times, r.spec) for r in todo}
        print(_header("ACTION"))
        for r in plan.runs:
            st = states[r.key]
            if r.key in done:
                action, note = "done", ""
            elif st.state in ALIVE:
                action, note = "in flight", f"{st.state} (job {st.job_id})"
            else:
                action = "submit"
                note = "resubmit: " + st.detail if st.state == "failed" else ""
                est = estimates.get(r.key)
                note = (note + "; " if note else "") + (f"est {est.describe()}" if est else "est ? (no stored run of this task and model)")
                if r.spec.task in missing or "*" in missing:
                    action = "would fail"
                    note = (note + "; " if note else "") + missing.get(r.spec.task, missing.get("*", ""))
            print(_row(r.key, action, r.spec, extra(spec_view(r.spec)) + note))
        for s in plan.skipped:
            print(_row("-", "skip", s.point, extra(s.point) + s.reason))
        print(f"planned {len(plan.runs)} | done {len(done)} | skipped by rule {len(plan.skipped)} | "
              f"in flight {len(alive)} | would submit {len(todo)}  (dry run: nothing submitted)")
        _warn_timeout(launcher, [e for e in estimates.values() if e is not None], len(todo))
        failing = [r for r in todo if r.spec.task in missing]
        if failing or "*" in missing:
            problems = sorted(set(missing.values()))
            raise UsageError(f"{len(failing) if '*' not in missing else len(todo)} of the {len(todo)} runs to submit "
                             f"cannot start: {problems[0]}" + (f" (and {len(problems) - 1} more problems, listed above)"
                                                               if len(problems) > 1 else ""))
        return 0

    with sweep_lock(results, cfg.name):
        from bench.store import sweep_plan_path, write_json_atomic

        # a run shared with another sweep (same spec, same key) keeps that sweep's name in its record:
        # the plan says which runs are this sweep's
        keys = list(plan.keys)
        if _narrowed(args):  # a narrowed run adds to the sweep's plan: the full grid's shared runs stay listed
            from bench.store import read_json

            before = read_json(sweep_plan_path(results, cfg.name))
            previous = before.get("keys") if isinstance(before, dict) else None
            keys = list(dict.fromkeys([*(previous or []), *keys]))
        write_json_atomic(sweep_plan_path(results, cfg.name), {"sweep": cfg.name, "keys": keys})
        done, states, alive, todo = classify()
        resubmits = sum(1 for r in todo if states[r.key].state == "failed")
        pairs = []
        if todo:
            pairs = submit_runs(kind, results, cfg.name, launcher, todo, data_root, wandb_mode, args.threads)
    print(f"planned {len(plan.runs)} | done {len(done)} | skipped by rule {len(plan.skipped)} | "
          f"in flight {len(alive)} | submitted {len(todo)}" + (f" ({resubmits} failed before)" if resubmits else ""))
    if not pairs:
        print("nothing to submit" + (" (all runs done)" if len(done) == len(plan.runs) else ""))
        return 0
    ids = list(dict.fromkeys(str(j.job_id) for _, j in pairs))  # the runs of a pack share a job
    packed = f", {launcher.runs_per_job} runs per job" if launcher.runs_per_job > 1 else ""
    arr = ids[0].split("_", 1)[0] if kind == "slurm" else None
    if kind == "slurm":
        par = cfg.launcher.array_parallelism
        what = f"job array {arr} ({len(ids)} tasks, {par} at a time" if len(ids) > 1 else f"job {ids[0]} (1 task"
        print(f"{what}, partition {cfg.launcher.partition or 'default'}{packed})")
    elif kind == "local":
        print(f"{len(ids)} local jobs (pids {ids[0]}..{ids[-1]}), {cfg.launcher.array_parallelism} at a time{packed}")
    print(f"logs {logs_folder(results, cfg.name)}  (%j = job id)")
    print(f"ledger {sweep_dir(results, cfg.name) / 'submissions.jsonl'}")
    wait = args.wait if args.wait is not None else kind in ("local", "debug")
    if not wait:
        print(f"follow with: saflex-bench status {args.file} --results {results}")
        return 0
    return _wait(pairs, kind, store, results, cfg.name)


def _warn_timeout(launcher, estimates, n_todo: int) -> None:
    """The longest estimated run against the launcher's timeout_min (a job trains one run, or
    runs_per_job of them side by side)."""
    if not estimates:
        if n_todo:
            print("time per job: no stored run of these tasks and models to estimate from")
        return
    worst = max(estimates, key=lambda e: e.seconds)
    line = f"time per job: longest estimate {worst.describe()}; launcher timeout_min {launcher.timeout_min}"
    print(line)
    if worst.seconds > 60 * launcher.timeout_min:
        print(f"saflex-bench: warning: launcher timeout_min {launcher.timeout_min} is below the estimated "
              f"{worst.seconds / 60:.1f} min of the longest run: raise it in the sweep file", file=sys.stderr)


def _missing_data(plan, data_root) -> dict[str, str]:
    """task -> what its data lacks (Task.check_data), for the tasks of the runs planned."""
    from bench.tasks import get_task

    out = {}
    for task in dict.fromkeys(r.spec.task for r in plan.runs):
        problem = get_task(task).check_data(data_root)
        if problem:
            out[task] = problem
    return out


PACK_SCAN_S = 5.0  # how often the wait reads the records of runs whose pack job is still running


def _wait(pairs, kind: str, store, results=None, sweep_name: str | None = None) -> int:
    t0 = time.time()
    n = len(pairs)
    n_jobs = len({id(j) for _, j in pairs})
    what = f"{n} jobs" if n_jobs == n else f"{n} runs in {n_jobs} jobs"  # packs: several runs per job
    remaining = list(pairs)
    finished = failed = 0
    interactive = sys.stdin.isatty()
    ledger = {}
    if results is not None and sweep_name:
        from sweeps.launcher import LEDGER, read_ledger, sweep_dir

        ledger = read_ledger(sweep_dir(results, sweep_name) / LEDGER)
    errors: dict[int, Any] = {}  # job -> its error, asked once (a failed debug job reruns when asked again)
    print(f"waiting for {what} (Ctrl-C stops waiting{'' if kind == 'slurm' else ' and the jobs'}; "
          "a later `sweep` resumes unfinished runs)", flush=True)
    from tqdm.auto import tqdm

    from sweeps.status import run_seconds

    # the bar (stderr) counts finished runs, ETA from their rate; the per-run lines go above it (stdout)
    bar = tqdm(total=n, unit="run", desc=sweep_name or "sweep", file=sys.stderr, dynamic_ncols=True, mininterval=1.0)
    packs = n_jobs < n
    next_scan = 0.0
    try:
        while remaining:
            progressed = False
            # a pack's runs finish one by one inside a running job: count each when its record is done
            # (at most every few seconds: one file read per pending run)
            scan = packs and time.time() >= next_scan
            if scan:
                next_scan = time.time() + PACK_SCAN_S
            for run, job in list(remaining):
                early = False
                if id(job) in errors:
                    err = errors[id(job)]
                elif kind == "debug":
                    err = None
                    if interactive:
                        try:
                            job.results()  # runs in this process; pdb post-mortem on failure
                        except Exception as e:  # noqa: BLE001
                            err = e
                    else:
                        err = job.exception()
                elif not job.done():
                    if not (scan and store.read_result(run.key) is not None):
                        continue
                    err, early = None, True  # the job goes on with its other runs
                else:
                    err = job.exception()
                if not early:
                    errors[id(job)] = err
                remaining.remove((run, job))
                finished += 1
                progressed = True
                rec = store.read_result(run.key)
                if rec is not None:
                    m = rec.get("metrics", {})
                    note = f"test_acc {m.get('test_acc', float('nan')):.4f}  ({_fmt_s(run_seconds(rec) or 0)})"
                    state = "done"
                else:
                    failed += 1
                    state = "failed"
                    note = _failure_line(store, run.key, job, err, ledger.get(run.key))
                bar.write(f"[{finished}/{n}] " + _row(run.key, state, run.spec, note), file=sys.stdout)
                bar.update(1)
                bar.set_postfix(failed=failed, refresh=False)
            if remaining and not progressed:
                time.sleep(1.0 if kind != "slurm" else 5.0)
        # runs counted early: their jobs still write logs and tracking records; return once they end
        while kind != "debug" and not all(j.done() for j in {id(j): j for _, j in pairs}.values()):
            time.sleep(1.0 if kind != "slurm" else 5.0)
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM/SIGUSR2/SIGHUP (bench.errors.Interrupted)
        bar.close()
        left = [(r, j) for r, j in remaining]
        never = []
        if kind == "local" and left:
            from sweeps.launcher import mark_cancelled, stop_local_jobs

            print(f"\nstopping {len(left)} local jobs...", file=sys.stderr, flush=True)
            stop_local_jobs(left)
            if results is not None and sweep_name:
                never = mark_cancelled(results, sweep_name, left, store)
        stopped = len(left) - len(never)
        how = f"interrupted ({stop})" if str(stop) else "interrupted"
        if kind == "slurm":
            print(f"saflex-bench: {how}: stopped waiting; {finished}/{n} finished, the other {len(left)} jobs go on "
                  f"under SLURM (follow with `saflex-bench status`, re-run the same `sweep` to resubmit failures)",
                  file=sys.stderr)
        else:
            print(f"saflex-bench: {how}: {finished}/{n} finished, {stopped} stopped (they keep their last checkpoint), "
                  f"{len(never)} never started; re-run the same `sweep` command to resume", file=sys.stderr)
        return getattr(stop, "exit_code", 130)
    bar.close()
    print(f"finished {what} in {_fmt_s(time.time() - t0)}: done {n - failed} / failed {failed}")
    return 1 if failed else 0


def _failure_line(store, key: str, job, err, entry: dict | None = None) -> str:
    from sweeps.status import last_error_line, run_log_error

    attempt = store.read_attempt(key) or {}
    if attempt.get("state") in ("failed", "interrupted") and attempt.get("error"):
        return str(attempt["error"])[:300]
    line = run_log_error(entry)  # a packed run: its own child's logs before the pack's
    try:
        line = line or last_error_line(job.paths.stderr) or last_error_line(job.paths.stdout)
    except Exception:  # noqa: BLE001 - debug jobs have no files
        line = ""
    if not line and err is not None:
        line = (str(err).strip().splitlines() or [""])[-1]
    return (line or "ended without a result")[:300]


# ---- status -----------------------------------------------------------------------------------
def cmd_status(args: argparse.Namespace) -> int:
    from sweeps.launcher import LEDGER, read_ledger, sweep_dir
    from sweeps.status import counts, format_counts, progress_line, run_states, sweep_line

    cfg, plan, results, store = _load(args)
    if results.exists() and not results.is_dir():  # one line, not a traceback (a read-only root is fine)
        raise UsageError(f"results root {results} is a file, not a directory; choose another with --results DIR "
                         "or $SAFLEX_RESULTS")
    ledger = read_ledger(sweep_dir(results, cfg.name) / LEDGER)
    states = run_states(store, plan.keys, ledger, specs={r.key: r.spec for r in plan.runs})
    print(_plan_line(plan) + _narrowed(args))
    print(f"results {results}")
    only = args.only.replace("-", " ") if args.only else None
    print(_header())
    for r in plan.runs:
        st = states[r.key]
        if only and st.state != only:
            continue
        note = st.detail
        if st.state == "done":
            rec = store.read_result(r.key) or {}
            m = rec.get("metrics", {})
            note = f"test_acc {m.get('test_acc', float('nan')):.4f}"
        elif st.job_id and st.state in ("running", "pending"):
            note = f"job {st.job_id}" + (f" {st.job_state}" if st.job_state else "") + (f", {st.detail}" if st.detail else "")
            if st.state == "running":
                last = progress_line(store, r.key)
                note += f"  {last}" if last else ""
        print(_row(r.key, st.state, r.spec, note))
    c = counts(states)
    print(format_counts(c) + f"  (skipped by rule {len(plan.skipped)})")
    print(sweep_line(store, states, cfg.launcher.array_parallelism))
    return 0


def main(argv: list[str] | None = None) -> int:  # `python -m sweeps.cli ...` without the entry point
    p = argparse.ArgumentParser(prog="saflex-bench")
    register(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as e:
        print(f"saflex-bench: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
