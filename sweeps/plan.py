"""Expand a sweep into runs: grid product -> skip rules -> RunSpec (validated) -> dedupe by key.

A grid point is skipped by rule when a `skip` rule matches it (on the values as written or on the
normalised spec) or when the task's modality does not support the method (bench.tasks.supports).
Any other invalid value is the user's error: one line naming the file and the grid point.
Two points that normalise to the same spec (e.g. saflex.* knobs on a method without SAFLEX, which the
spec drops from the identity) are planned once.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

from bench.errors import UsageError
from sweeps.config import SweepConfig


@dataclass
class PlannedRun:
    key: str
    spec: Any  # bench.spec.RunSpec
    point: dict[str, Any]  # the (first) grid point that produced it, as written


@dataclass
class SkippedPoint:
    point: dict[str, Any]
    reason: str


@dataclass
class Plan:
    sweep: SweepConfig
    runs: list[PlannedRun] = field(default_factory=list)
    skipped: list[SkippedPoint] = field(default_factory=list)
    duplicates: int = 0
    points: int = 0

    @property
    def keys(self) -> list[str]:
        return [r.key for r in self.runs]


def iter_points(cfg: SweepConfig) -> Iterator[dict[str, Any]]:
    for grid in cfg.grids:
        names = list(grid)
        for combo in itertools.product(*(grid[n] for n in names)):
            yield {**cfg.fixed, **dict(zip(names, combo))}


def describe_point(point: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in point.items())


def _raw_view(point: Mapping[str, Any]) -> dict[str, Any]:
    from bench.learners import split_method

    view = dict(point)
    method, task = str(point.get("method", "")), str(point.get("task", ""))
    view["upstream"], view["learner"] = split_method(method)
    view["uses_saflex"] = view["learner"] == "saflex"
    view["family"], view["dataset"] = task.split("/", 1)[0], task.split("/", 1)[-1]
    return view


def spec_view(spec: Any) -> dict[str, Any]:
    """The fields a skip rule can test, from a normalised spec (canonical method, task defaults)."""
    view = {k: v for k, v in spec.to_dict().items() if not isinstance(v, dict) and k != "saflex"}
    for knob, v in (spec.knobs or {}).items():
        view[f"{spec.learner}.{knob}"] = v
    for opt, v in (spec.options or {}).items():
        view[f"task.{opt}"] = v
    view.update(upstream=spec.upstream, learner=spec.learner, uses_saflex=spec.uses_saflex, family=spec.family,
                dataset=spec.dataset)
    return view


def plan_sweep(cfg: SweepConfig) -> Plan:
    from bench.spec import canonical_method, make_spec
    from bench.tasks import get_task, supports

    plan = Plan(cfg)
    index: dict[str, PlannedRun] = {}
    pair_reason: dict[tuple[str, str], str | None] = {}
    where = str(cfg.path)
    for point in iter_points(cfg):
        plan.points += 1
        rule = next((r for r in cfg.skip if r.matches(_raw_view(point))), None)
        if rule is not None:
            plan.skipped.append(SkippedPoint(point, rule.reason))
            continue
        task, method = str(point["task"]), str(point["method"])
        try:
            pair = (task, method)
            if pair not in pair_reason:
                get_task(task)  # unknown names are errors, not skips
                canonical_method(method)
                pair_reason[pair] = supports(task, method)
            if pair_reason[pair] is not None:
                plan.skipped.append(SkippedPoint(point, f"invalid pair: {pair_reason[pair]}"))
                continue
            overrides = {k: v for k, v in point.items() if k not in ("task", "method", "seed")}
            spec = make_spec(task, method, point.get("seed", 0), overrides)
        except UsageError as e:
            raise UsageError(f"{where}: grid point ({describe_point(point)}): {e}") from None
        if cfg.skip:
            view = spec_view(spec)
            rule = next((r for r in cfg.skip if r.matches(view)), None)
            if rule is not None:
                plan.skipped.append(SkippedPoint(point, rule.reason))
                continue
        key = spec.key
        if key in index:
            plan.duplicates += 1
            continue
        index[key] = run = PlannedRun(key, spec, point)
        plan.runs.append(run)
    return plan


def planned_keys_of(paths) -> list[str]:
    """The run keys the sweep files at `paths` plan, file by file, in plan order."""
    from sweeps.config import load_sweep

    return [k for path in paths for k in plan_sweep(load_sweep(path)).keys]


def done_keys(store: Any, keys: list[str], specs: dict[str, Any] | None = None) -> set[str]:
    """Which of `keys` are done (bench.results.record_problem; `specs`: {key: RunSpec} asked about)."""
    return {k for k, why in store.problems(keys, specs).items() if why is None}
