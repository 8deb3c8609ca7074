"""`saflex-bench report | figures | wandb-report`, registered through the entry-point group
`saflex_bench.commands` (bench/cli.py never imports reports/). Heavy imports stay inside the
command functions so `saflex-bench --help` stays fast."""
from __future__ import annotations

import argparse
from pathlib import Path



def _results_root(args: argparse.Namespace) -> Path:
    from reports.load import default_results_root

    return Path(args.results) if getattr(args, "results", None) else default_results_root()


def _out_dir(args: argparse.Namespace, root: Path) -> Path:
    return Path(args.out) if getattr(args, "out", None) else root / "report"


def _load(args: argparse.Namespace):
    from reports.load import load_results, load_wandb

    root = _results_root(args)
    if getattr(args, "from_wandb", None):
        # wandb run id == run key, so figures 3/5 still find run files when the local store has them
        return load_wandb(args.from_wandb, args.sweep), root, root
    return load_results(root, args.sweep), root, root


def _source_line(df) -> str:
    from reports.load import describe_skipped

    skipped = describe_skipped(df.attrs.get("skipped") or {})
    sweep = df.attrs.get("sweep")
    not_done = sorted((df.attrs.get("not_done") or {}).items())  # named, never silently dropped
    shown = [f"  not done: {k}: {why}" for k, why in not_done[:20]]
    shown += [f"  ... and {len(not_done) - 20} more"] if len(not_done) > 20 else []
    return "\n".join([f"loaded {len(df)} done runs from {df.attrs.get('source')}" + (f" (sweep {sweep})" if sweep else "")
                      + (f"; {skipped}" if skipped else ""), *shown])


def cmd_report(args: argparse.Namespace) -> int:
    from reports.selection import annotate_selection
    from reports.tables import write_tables

    df, root, _ = _load(args)
    print(_source_line(df))
    if len(df):  # degenerate selections: the majority rate is recorded, or recomputed from the data
        from bench.runner import resolve_data_root

        df = annotate_selection(df, resolve_data_root(getattr(args, "data_root", None)))
    paths, _ = write_tables(df, _out_dir(args, root), metric=args.metric)
    print(paths[0].read_text())  # the Markdown table, headline gain included
    for p in paths:
        print(f"wrote {p}")
    return 0


def cmd_figures(args: argparse.Namespace) -> int:
    from reports.figures import FIGURES, write_figures
    from reports.load import _usage_error

    unknown = sorted(set(args.only or ()) - set(FIGURES))
    if unknown:  # checked here, not via argparse choices, so registering the CLI imports no matplotlib
        raise _usage_error(f"unknown figure {', '.join(unknown)} (valid: {', '.join(FIGURES)})")
    df, root, files_root = _load(args)
    print(_source_line(df))
    from reports.figures import FAMILY_FIGURES

    written = write_figures(df, files_root, _out_dir(args, root), metric=args.metric, only=args.only,
                            cost_csv=args.cost_csv)
    for name, paths, why in written:
        if why:
            print(f"{name}: no data: {why} (placeholder written)")
        print(f"wrote {', '.join(str(p) for p in paths)}")
    left = sorted(FAMILY_FIGURES - {n for n, _, _ in written}) if not args.only else []
    if left:
        print(f"not drawn (their data is not there; ask with --only to see why): {', '.join(left)}")
    return 0


def cmd_wandb_report(args: argparse.Namespace) -> int:
    from reports import wandb_report as wrep
    from reports.load import load_results, load_wandb, wandb_is_offline

    wrep.split_project(args.project)  # fail fast on a malformed project, before any loading
    wrep.import_wr()
    offline = wandb_is_offline(args.dry_run)
    root = _results_root(args)
    # Online the report describes the project's own runs; offline the local store stands in for them.
    df = load_results(root, args.sweep) if offline else load_wandb(args.project, args.sweep)
    print(_source_line(df))
    report = wrep.build_report(df, args.project, args.sweep, metric=args.metric)
    meta = {"project": args.project, "sweep": args.sweep, "metric": args.metric, "source": df.attrs.get("source"),
            "saved": not offline}
    path = wrep.write_spec(report, _out_dir(args, root), meta)
    print(f"wrote {path}")
    if offline:
        print("wandb offline (WANDB_MODE offline/disabled, no API key, or --dry-run): report not saved; "
              "its specification is in the file above")
        return 0
    print(f"saved wandb report: {wrep.save_report(report)}")
    return 0


def cmd_wandb_push(args: argparse.Namespace) -> int:
    from reports import wandb_push
    from reports.load import load_results

    entity, _, project = args.project.rpartition("/")
    if not project or "/" in entity:
        from bench.errors import UsageError

        raise UsageError(f"--project must be PROJECT or ENTITY/PROJECT (got '{args.project}')")
    root = _results_root(args)
    df = load_results(root, args.sweep)
    print(_source_line(df))
    out = Path(args.out) if args.out else root / "wandb_push"
    runs = wandb_push.push_offline(root, df, out, project)
    print(f"wrote {len(runs)} offline wandb runs under {out}")
    cmd = wandb_push.sync_command([out / "*" / "wandb" / "offline-run-*"], entity or None, project)
    if not args.sync:
        print("upload them with:  " + " ".join(cmd))
        return 0
    code = wandb_push.sync(runs, entity or None, project)
    if code:
        from bench.errors import UsageError

        raise UsageError(f"`wandb sync` failed (exit {code}); the offline runs stay under {out}: retry with "
                         + " ".join(cmd))
    print(f"synced {len(runs)} runs to {args.project}")
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from reports.study_loader import load_study, study_names

    if args.list:
        for name in study_names(args.studies_dir):
            study = load_study(name, args.studies_dir)
            print(f"{name}: {study.QUESTION}")
            for c in study.COMMANDS:
                print(f"    {c}")
        return 0
    if not args.name:
        from bench.errors import UsageError

        raise UsageError("study: give a study NAME or --list")
    study = load_study(args.name, args.studies_dir)
    if args.build_table:
        for p in args.build_table:
            if not (Path(p) / "runs").is_dir():
                from bench.errors import UsageError

                raise UsageError(f"results root {p}: no run folders there (expected {Path(p) / 'runs'}/<key>/)")
        paths = study.build_table([Path(p) for p in args.build_table], args.table)
    else:
        paths = study.write_report(args.table, args.out)
    for p in paths:
        print(f"wrote {p}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from reports.compare import compare_roots, to_markdown, write_comparison

    c = compare_roots(args.results_a, args.results_b, args.sweep, args.metric)
    print(to_markdown(c))
    for p in write_comparison(c, args.out or Path(args.results_b) / "compare"):
        print(f"wrote {p}")
    return 0


def _common(p: argparse.ArgumentParser, wandb_source: bool = True) -> None:
    p.add_argument("--results", metavar="R", help="results root (default: $SAFLEX_RESULTS or ./results)")
    p.add_argument("--sweep", metavar="NAME", help="only runs of this sweep (result.json 'sweep')")
    p.add_argument("--out", metavar="DIR", help="output directory (default: <results>/report)")
    # any metric the records hold (test_acc, test_auc, ood_usps_acc, ...): checked against the loaded runs
    p.add_argument("--metric", default="test_acc", metavar="M",
                   help="metric compared, any metrics.<M> of the records (default: test_acc; e.g. test_auc, ood_usps_acc)")
    if wandb_source:
        p.add_argument("--from-wandb", metavar="ENTITY/PROJECT",
                       help="load the runs from the wandb API instead of the local store (needs wandb online)")


def register(subparsers) -> None:
    p = subparsers.add_parser("report", help="tables X vs every X+LEARNER (Markdown, LaTeX, CSV) from stored results",
                              description="Per (task, upstream) and learner arm: mean and 95% t-CI over seeds for X "
                                          "and X+LEARNER, paired difference vs X and vs X+ref, cost; average gain "
                                          "per arm. Tables and CSVs in points (x100).")
    _common(p)
    p.add_argument("--data-root", metavar="DIR", help="task data, to recompute the selection split's majority rate "
                                                      "for records that predate it (default: $SAFLEX_DATA)")
    p.set_defaults(func=cmd_report)

    p = subparsers.add_parser("figures", help="figures of the stored results: paired-gain forest plot, learning "
                                              "curves, ... (PNG, PDF + the plotted data as CSV)")
    _common(p)
    p.add_argument("--only", nargs="+", metavar="FIG",
                   help="only these figures, e.g. fig1_accuracy fig2_forest (default: all)")
    p.add_argument("--cost-csv", metavar="FILE",
                   help="side-by-side step timings for fig4_cost (benchmarks/bench_saflex_overhead.py --csv; "
                        "default: <results>/benchmarks/side_by_side_cost.csv, else no cost figure)")
    p.set_defaults(func=cmd_figures)

    p = subparsers.add_parser("study", help="a study's report from its results table (studies/<NAME>/), "
                                            "or its table from run folders, or --list",
                              description="Studies live in the checkout (studies/<NAME>/: sweeps, report code, "
                                          "README, results table), not in the installed package.")
    p.add_argument("name", nargs="?", metavar="NAME", help="the study (see --list)")
    p.add_argument("--list", action="store_true", help="list the studies with their question and commands")
    p.add_argument("--studies-dir", metavar="DIR", help="where the studies are (default: ./studies, else the checkout's)")
    p.add_argument("--build-table", nargs="+", metavar="RESULTS_ROOT",
                   help="build the study's results table from these results roots of run folders")
    p.add_argument("--table", metavar="DIR", help="the study's table folder (default: studies/<NAME>/results)")
    p.add_argument("--out", metavar="PATH", help="where the report goes (default: the study's own report file)")
    p.set_defaults(func=cmd_study)

    p = subparsers.add_parser("compare", help="two regenerations of the same runs: per-run differences, "
                                              "numerical noise floor, whether conclusions agree",
                              description="Per spec key done in both results roots: the metric in each and "
                                          "B - A; their summary (the numerical noise floor); per experiment and "
                                          "learner arm vs none, whether the sign of the paired gain and its "
                                          "95%% t-CI verdict agree. See docs/reproducibility.md.")
    p.add_argument("results_a", metavar="RESULTS_A", help="first results root")
    p.add_argument("results_b", metavar="RESULTS_B", help="second results root (same specs, other numerics)")
    p.add_argument("--sweep", metavar="NAME", help="only runs of this sweep (in both roots)")
    p.add_argument("--metric", default="test_acc", help="metric compared (default: test_acc)")
    p.add_argument("--out", metavar="DIR", help="where compare.md and the CSVs go (default: RESULTS_B/compare)")
    p.set_defaults(func=cmd_compare)

    p = subparsers.add_parser("wandb-report", help="build a wandb Report (saved online; JSON spec offline)")
    p.add_argument("--project", required=True, metavar="ENTITY/PROJECT", help="wandb project of the runs")
    _common(p, wandb_source=False)
    p.add_argument("--dry-run", action="store_true", help="do not save: write the report spec JSON only")
    p.set_defaults(func=cmd_wandb_report)

    p = subparsers.add_parser("wandb-push", help="stored results -> offline wandb runs (+ `wandb sync` with --sync)",
                              description="Write every done run of the results root (or of --sweep) as an offline "
                                          "wandb run, as the tracker logs a live one (id = run key), so a study "
                                          "without wandb data can be uploaded and reported on.")
    p.add_argument("--project", required=True, metavar="[ENTITY/]PROJECT", help="wandb project to upload to")
    p.add_argument("--results", metavar="R", help="results root (default: $SAFLEX_RESULTS or ./results)")
    p.add_argument("--sweep", metavar="NAME", help="only runs of this sweep")
    p.add_argument("--out", metavar="DIR", help="where the offline runs go (default: <results>/wandb_push)")
    p.add_argument("--sync", action="store_true", help="upload them now with `wandb sync` (needs the network)")
    p.set_defaults(func=cmd_wandb_push)
