"""`saflex-bench`: list, run — and the subcommands other packages register (sweep, status, report,
figures, wandb-report) through the `saflex_bench.commands` entry-point group, so bench never imports
them."""
from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import entry_points

from bench import __version__
from bench.errors import Interrupted, UsageError, disk_full_line, stop_signals_interrupt

LISTABLE = ("tasks", "methods", "learners", "models", "knobs")


def _list(args: argparse.Namespace) -> int:
    if args.what == "tasks":
        from bench.tasks import list_tasks

        names = list_tasks()
    elif args.what == "learners":
        from bench.learners import get_learner_class, list_learners

        names = [f"{n:10s} {get_learner_class(n).description}" for n in list_learners()]
    elif args.what == "methods":
        import baselines

        from bench.learners import list_learners

        upstreams = baselines.list_methods()
        names = upstreams + [f"{u}+{lr}" for lr in list_learners() if lr != "none" for u in upstreams]
    elif args.what == "models":
        from bench.models import list_models

        names = list_models()
    else:
        from bench.learners import get_learner_class, list_learners

        names = [f"{n}.{k}={v}" for n in list_learners() for k, v in (get_learner_class(n).default_knobs() or {}).items()]
    print("\n".join(names))
    return 0


def _run(args: argparse.Namespace) -> int:
    from bench.runner import check_threads, resolve_results_root, run_spec
    from bench.spec import ignored_knobs, make_spec, parse_assignments

    overrides = parse_assignments(args.set or [])
    for name in ("epochs", "batch_size", "lr", "model"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    spec = make_spec(args.task, args.method, args.seed, overrides)
    ignored = ignored_knobs(spec.method, overrides)
    if ignored:
        print(f"saflex-bench: warning: {', '.join(ignored)} ignored: method '{spec.method}' does not use that learner",
              file=sys.stderr)
    results = resolve_results_root(args.results)
    check_threads(args.threads, args.oversubscribe)
    threads = args.threads
    if args.deterministic:
        from bench.numerics import enable_deterministic
        from bench.runner import resolve_threads

        threads = resolve_threads(threads)  # pinned: the run uses exactly this count; recorded in result.json
        enable_deterministic(threads)
    print(f"run {spec.key}  {spec.task}  {spec.method}  seed {spec.seed}", flush=True)
    try:
        record = run_spec(spec, results, args.data_root, wandb_mode=args.wandb, progress=not args.quiet, echo=True,
                          device=args.device, workers=args.workers, threads=threads,
                          keep_checkpoints=args.keep_checkpoints, aug_path=args.aug_path,
                          data_on_device=args.data_on_device)
    except KeyboardInterrupt as e:
        print(f"saflex-bench: {_interrupted_line(results, spec, e)}", file=sys.stderr)
        return getattr(e, "exit_code", 130)
    for w in record.get("warnings") or []:
        print(f"warning {w} (see {results / 'runs' / record['key'] / 'run.log'})")
    m = record["metrics"]
    print(f"key {record['key']}")
    print(f"test_acc {m['test_acc']:.4f}  test_auc {m['test_auc']:.4f}  best_epoch {m['best_epoch']}  "
          f"epoch_s {record['cost']['epoch_s']:.2f}")
    print(f"result {results / 'runs' / record['key'] / 'result.json'}")
    return 0


def _interrupted_line(results, spec, stop: BaseException | None = None) -> str:
    """What Ctrl-C (or SIGTERM/SIGUSR2/SIGHUP) left behind, in one line with the way forward."""
    from bench.store import ResultsStore

    how = f"interrupted ({stop})" if isinstance(stop, Interrupted) else "interrupted"
    store = ResultsStore(results)
    if store.is_done(spec.key):
        return f"{how} after run {spec.key} finished; its result is saved (re-run the same command to print it)"
    attempt = store.read_attempt(spec.key) or {}
    saved = attempt.get("epochs_saved") if attempt.get("pid") == os.getpid() else None
    if saved is None:
        saved = len(store.read_metrics(spec.key))
    return (f"{how}; {saved}/{spec.epochs} epochs of run {spec.key} are saved: "
            f"re-run the same command to resume from epoch {saved + 1}")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got '{text}'")
    return value


class OneLineParser(argparse.ArgumentParser):
    """argparse, except that a bad flag is one line (argparse prints the whole usage block first)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="saflex-bench", description="Does SAFLEX beat the augmentations it sits on?")
    p.add_argument("--version", action="version", version=f"saflex-bench {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ls = sub.add_parser("list", help="print registered tasks, methods, models or SAFLEX knobs, one a line")
    ls.add_argument("what", choices=LISTABLE)
    ls.set_defaults(func=_list)

    run = sub.add_parser("run", help="train and evaluate one run; print its key and result path")
    run.add_argument("--task", required=True, help="FAMILY/DATASET, see `saflex-bench list tasks`")
    run.add_argument("--method", required=True, help="UPSTREAM[+LEARNER], e.g. rand-m9-n2+saflex (see `list learners`)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--epochs", type=int)
    run.add_argument("--batch-size", dest="batch_size", type=int)
    run.add_argument("--lr", type=float)
    run.add_argument("--model")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any run field (repeatable), e.g. lr=0.01, saflex.eps=0.05, task.val_frac=0.1")
    run.add_argument("--data-root", help="folder with the datasets (default $SAFLEX_DATA)")
    run.add_argument("--results", help="results root (default $SAFLEX_RESULTS or ./results)")
    run.add_argument("--wandb", choices=("online", "offline", "disabled"), help="wandb mode (default $WANDB_MODE or offline)")
    run.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    run.add_argument("--workers", type=int, help="data-loader worker processes for per-sample augmentation "
                     "(default: from the CPUs the job has: 0 below 4 CPUs on a CPU run; CPUs-1, at most 8, on a GPU)")
    run.add_argument("--keep-checkpoints", dest="keep_checkpoints", choices=("best", "full", "none"), default="best",
                     help="what stays once result.json is written: best = the selected epoch's weights (best.pt), "
                          "full = the resumable checkpoint too, none (default: best)")
    run.add_argument("--aug-path", dest="aug_path", choices=("auto", "per-image", "batched"), default="auto",
                     help="per-sample augmentation one image at a time or grouped by op over the batch (same images; "
                          "auto = batched wherever the policy has a batched kernel)")
    run.add_argument("--data-on-device", dest="data_on_device", choices=("auto", "on", "off"), default="off",
                     help="keep the training split on the device and augment it there (batched path, same batches; "
                          "on: error where the upstream has no batched path or the data would not fit; auto: on a GPU "
                          "where it can, else the loader path; recorded as cost.data_path) (default: off)")
    run.add_argument("--threads", type=_positive_int,
                     help="torch CPU threads (default: the CPUs the job was given: $SLURM_CPUS_PER_TASK, "
                          "$OMP_NUM_THREADS, else the CPU affinity); recorded in result.json")
    run.add_argument("--oversubscribe", action="store_true",
                     help="allow --threads above the CPUs this process may use (refused by default: it only slows the run)")
    run.add_argument("--quiet", action="store_true", help="no progress bars (the per-epoch lines stay)")
    run.add_argument("--deterministic", action="store_true",
                     help="deterministic algorithms, no cuDNN autotuning, fixed threads: reruns on the same "
                          "machine kind give identical metrics (see docs/reproducibility.md)")
    run.set_defaults(func=_run)

    for ep in entry_points(group="saflex_bench.commands"):
        try:
            register = ep.load()
        except ImportError as e:  # a half-installed extra must not break the core commands
            print(f"saflex-bench: warning: commands from {ep.value} unavailable ({e})", file=sys.stderr)
            continue
        register(sub)
    return p


def user_errors() -> tuple[type[BaseException], ...]:
    """UsageError plus the leaf packages' own user-error types, when they were imported at all (so
    the CLI does not import them just to name an exception)."""
    errors: list[type[BaseException]] = [UsageError]
    for module, name in (("baselines.registry", "PolicyError"), ("saflex_core.config", "ConfigError")):
        if module in sys.modules:
            errors.append(getattr(sys.modules[module], name))
    return tuple(errors)


def _stdout_gone() -> int:
    """The reader of our stdout went away (`... | head`): stop quietly, like any Unix tool. Point stdout
    at /dev/null so the interpreter's final flush does not complain either."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by a closed pipe


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with stop_signals_interrupt():
            code = int(args.func(args) or 0)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        return _stdout_gone()
    except KeyboardInterrupt as e:
        print(f"saflex-bench: {'interrupted' if not isinstance(e, Interrupted) else str(e)}; re-run the same "
              f"command to continue", file=sys.stderr)
        return getattr(e, "exit_code", 130)
    except OSError as e:
        line = disk_full_line(e)
        if line is None:
            raise
        print(f"saflex-bench: error: {line}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - user errors become one line; anything else keeps its traceback
        if not isinstance(e, user_errors()):
            raise
        print(f"saflex-bench: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
