"""A wandb Report of the benchmark, built with wandb-workspaces (reports.v2).

Blocks: an intro; per dataset (task) a panel grid whose runset holds that task's runs, grouped by
the arm's full identity (`arm_groupby`: config.method plus every spec field and learner knob that
differs within the task's runs, so three SAFLEX settings of one method are three groups), with a bar
plot of the test metric and a line plot of the validation curve (the panels follow the runset's
grouping); the gain table of every arm against X and X+ref (computed here, the exact paired t-CIs
wandb cannot do) with the average per arm; a cost grid (epoch time per arm group; no overhead ratio:
separately timed runs cannot give one, see docs/saflex_cost.md for the side-by-side benchmark).

Runs: with `--sweep`, the runs of wandb group = that sweep when every loaded run was logged under it,
else (a run shared with another sweep keeps that sweep's group) the loaded runs by id (wandb id = run
key); without `--sweep`, the loaded runs by id: the report shows exactly the runs the tables count.

Offline (WANDB_MODE offline/disabled, no API key, or --dry-run) the report is not saved; its
specification is written to JSON instead. Building never touches the network: wandb-workspaces
only looks the project up when the report is saved.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pandas as pd

from reports.load import arm_order, method_label
from reports.tables import average_gain, comparison_table, display_average, display_table, headline, legend

# Keys as bench/tracking.py logs them to wandb: config = the RunSpec fields, group = sweep, history
# = the metrics.jsonl rows with `epoch`, summary = result metrics (bare names) + `cost/<name>` +
# `status`. Kept here in one place so a change in the tracker is a one-line change in the report.
GROUP_BY = "config.method"  # the first key of every arm grouping (see arm_groupby)
EPOCH_KEY = "epoch"
COST_KEY = "cost/epoch_s"


def _usage_error(msg: str) -> Exception:
    from bench.errors import UsageError

    return UsageError(msg)


def import_wr():
    """wandb_workspaces.reports.v2, imported only when a report is built (optional dependency)."""
    try:
        import wandb_workspaces.reports.v2 as wr
    except ImportError:
        raise _usage_error("wandb-report needs wandb-workspaces: pip install 'saflex-bench[wandb-report]'") from None
    return wr


def split_project(project: str) -> tuple[str, str]:
    entity, sep, name = project.partition("/")
    if not sep or not entity or not name or "/" in name:
        raise _usage_error(f"--project must be ENTITY/PROJECT (got '{project}')")
    return entity, name


def _q(v: str) -> str:
    return "'" + str(v).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _filters(task: str | None, sweep: str | None, keys: list[str] | None = None) -> str:
    # bench/tracking.py: config = the spec, group = the sweep, id = the run key; only finished runs,
    # like the tables. `keys`: the explicit run set (used instead of the sweep's group)
    parts = [f"Config('task') = {_q(task)}"] if task else []
    if keys is not None:
        parts.append(f"Metric('ID') in [{', '.join(_q(k) for k in sorted(keys))}]")
    elif sweep:
        parts.append(f"Group = {_q(sweep)}")
    parts.append("State = 'finished'")
    return " and ".join(parts)


def arm_groupby(df: pd.DataFrame) -> list[str]:
    """wandb config keys that tell the arms of `df` apart: config.method, then every other spec field
    that varies within it (model, epochs, ref_frac, ...; not the seed) and every learner knob that does
    (`config.saflex.eps`: wandb flattens the nested knob dicts the tracker logs under the learner's
    name). Knob variants of one method are then separate groups, never one bar."""
    from reports.load import identity_columns, knob_columns

    fields = [c for c in identity_columns(df) if c not in ("method", "seed", "task")
              and c in df and df[c].nunique(dropna=False) > 1]
    knobs = [c for lr, g in df.groupby("learner", sort=True) for c in knob_columns(df, lr)
             if g[c].nunique(dropna=False) > 1]  # within the learner's runs: other learners lack its knobs
    return [GROUP_BY, *(f"config.{c}" for c in fields + knobs)]


def group_runs(configs: list[dict[str, Any]], groupby: list[str]) -> dict[tuple, list[int]]:
    """How a runset grouped by `groupby` splits runs with these wandb configs (nested dicts flattened
    with dots, as the wandb UI does): group key -> run indices. Mirrors the server for tests and for
    the report's own table of groups; a missing key groups as None, like wandb's '-' group."""
    from reports.load import _flatten

    groups: dict[tuple, list[int]] = {}
    for i, cfg in enumerate(configs):
        flat = _flatten(cfg)
        key = tuple(_scalar_key(flat.get(g.split(".", 1)[1])) for g in groupby)
        groups.setdefault(key, []).append(i)
    return groups


def _scalar_key(v: Any) -> Any:
    return json.dumps(v, sort_keys=True) if isinstance(v, (list, dict)) else v


def _run_filter_keys(df: pd.DataFrame, sweep: str | None) -> list[str] | None:
    """None: the sweep's wandb group holds exactly the loaded runs; else the explicit run set."""
    if sweep and "sweep" in df and (df["sweep"] == sweep).all():
        return None
    return [str(k) for k in df["key"]]


def _md(disp: pd.DataFrame) -> str:
    head = "| " + " | ".join(disp.columns) + " |\n|" + "|".join("---" for _ in disp.columns) + "|\n"
    return head + "\n".join("| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |"
                            for row in disp.itertuples(index=False))


def build_report(df: pd.DataFrame, project: str, sweep: str | None = None, metric: str = "test_acc",
                 title: str | None = None):
    """The Report object (not saved). `df` is the results frame (from wandb or the local store): it
    decides which datasets get a section and fills the gain and cost tables."""
    wr = import_wr()
    entity, name = split_project(project)
    val_key = "val_" + metric.split("_", 1)[1] if metric.startswith("test_") else metric
    table = comparison_table(df, metric)
    avg = average_gain(table, metric)
    disp = display_table(table, metric)

    def runset(label: str, task: str | None) -> Any:
        sub = df[df["task"] == task] if task else df
        keys = _run_filter_keys(sub, sweep)
        return wr.Runset(entity=entity, project=name, name=label, filters=_filters(task, sweep, keys),
                         groupby=arm_groupby(sub))

    blocks: list[Any] = [wr.MarkdownBlock(text=(
        f"X vs {', '.join(method_label(a) for a in arm_order(df['arm'].unique()) if a != 'none') or 'no learner'} "
        f"on {df['task'].nunique()} datasets, {len(df)} runs"
        + (f" of sweep `{sweep}`" if sweep else "") + ". Panels group runs by the arm (method and every spec "
        "field or learner knob that differs among the dataset's runs, as the runsets list them): bars are the mean "
        "over seeds with standard-error whiskers; the exact 95 % Student-t CIs and paired gains are in "
        "the gain table (generated by `saflex-bench wandb-report`)."))]
    for task in sorted(df["task"].unique()):
        blocks += [wr.H2(text=task), wr.PanelGrid(
            runsets=[runset(task, task)],
            panels=[
                wr.BarPlot(title=f"{task}: {metric} by arm", metrics=[metric], orientation="v", aggregate=True,
                           groupby_aggfunc="mean", groupby_rangefunc="stderr",
                           title_y=metric, layout=wr.Layout(x=0, y=0, w=12, h=8)),
                wr.LinePlot(title=f"{task}: {val_key} vs epoch", x=EPOCH_KEY, y=[val_key], aggregate=True,
                            groupby_aggfunc="mean", groupby_rangefunc="stderr", title_x="epoch",
                            title_y=val_key, layout=wr.Layout(x=12, y=0, w=12, h=8)),
            ])]
    gain_lines = "\n\n".join(f"**{h}**" for h in headline(avg, metric))
    has_ref = bool(len(table)) and (table["learner"] == "ref").any()
    avg_md = f"{_md(display_average(avg, metric))}\n\n{legend(over='experiments')}\n\n" if len(avg) else ""
    blocks += [wr.H2(text="Learner gains"),
               wr.MarkdownBlock(text=f"{_md(disp)}\n\n{legend(ref=has_ref)}\n\n{avg_md}{gain_lines}\n\n"
                                     "Flags mark missing pairs, n<2 (no CI) and n<3 (CI very wide).")]
    cost_md = ("Seconds per epoch of each arm, as its runs recorded them. The runs were timed separately "
               "(other jobs, other nodes, other load), so their ratio is not the learner's overhead; "
               "that needs a side-by-side measurement (`benchmarks/bench_saflex_overhead.py`, "
               "docs/saflex_cost.md).")
    blocks += [wr.H2(text="Cost"), wr.PanelGrid(
        runsets=[runset("all runs", None)],
        panels=[wr.BarPlot(title="time per epoch by arm (s)", metrics=[COST_KEY], orientation="v",
                           aggregate=True, groupby_aggfunc="mean", groupby_rangefunc="stderr",
                           title_y="s / epoch", layout=wr.Layout(x=0, y=0, w=12, h=8)),
                wr.MarkdownPanel(markdown=cost_md, layout=wr.Layout(x=12, y=0, w=12, h=8))])]
    return wr.Report(entity=entity, project=name, title=title or f"SAFLEX benchmark{f' — {sweep}' if sweep else ''}",
                     description="X vs X+LEARNER: accuracy, paired gain and cost per dataset.", blocks=blocks)


def report_spec(obj: Any) -> Any:
    """JSON-able specification of a Report built from the public wr classes: every object becomes
    {"type": ClassName, field: value, ...} (private fields dropped). Unlike ``report._spec`` this
    needs no network (the internal model looks the project id up)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        d = {"type": type(obj).__name__}
        for f in dataclasses.fields(obj):
            if not f.name.startswith("_"):
                d[f.name] = report_spec(getattr(obj, f.name))
        return d
    if isinstance(obj, dict):
        return {str(k): report_spec(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [report_spec(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def write_spec(report: Any, out_dir: str | Path, meta: dict[str, Any] | None = None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "wandb_report_spec.json"
    path.write_text(json.dumps({"meta": meta or {}, "report": report_spec(report)}, indent=1))
    return path


def save_report(report: Any) -> str:
    """Save online; returns the URL. Errors become one-line UsageErrors (the spec is on disk)."""
    try:
        report.save()
        return report.url
    except Exception as e:  # network/permission problems are the user's to fix
        raise _usage_error(f"could not save the wandb report ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
