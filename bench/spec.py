"""RunSpec: the identity of one run, its canonical JSON form and its short key.

A run is task x upstream x learner x seed (+ the protocol fields). Everything that changes what a
run computes is in the spec (and so in the key); where the data lives, which device runs it, the
thread count and how it is tracked are not.

Key stability: the canonical dict always has the fields of the first release (task ... as_rgb, and
`saflex` = SAFLEX's knobs or null); fields added later enter it only when set (`ref_frac`, task
`options`, other learners' knobs under the learner's name). So every key stored before the learner
redesign is still the key of the same computation.

Semantics versions: a learner, upstream or task declares `semantics` (an int, 1 until a change alters
what it computes). `RunSpec.semantics` lists the components whose version is not 1 (e.g.
{"learner:saflex": 2}) and enters the key only when non-empty, so a bump changes the keys of the runs
it touches and no other; records store it, and a record of another semantics is never served as done.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import typing
from dataclasses import dataclass
from typing import Any, Mapping

from bench import models, tasks
from bench.errors import UsageError
from bench.learners.base import NONE, REGISTRY as LEARNERS, get_learner_class, join_method, split_method
from bench.tasks import check_pair
from bench.upstreams import parse_upstream

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("multistep", "cosine", "constant")
SELECT_EXTRA = ("loss", "last")  # besides the task's metric names
REF_SOURCES = ("val", "train")
# the first release's canonical fields, always in the key (in this order in the dataclass)
LEGACY_FIELDS = ("task", "method", "model", "seed", "epochs", "optimizer", "lr", "weight_decay", "momentum",
                 "schedule", "milestones", "gamma", "batch_size", "select_metric", "as_rgb")
# later fields: in the key only when they differ from the value that reproduces the old behaviour
LATER_DEFAULTS = {"ref_frac": None, "ref_from": "val", "options": None}
# SAFLEX knobs added after the first release: in the key only when they differ from these values,
# which reproduce the behaviour before the knob existed; a stored spec without one ran at that value
LATER_SAFLEX_KNOBS = {"ref_ema": 0.0, "ref_budget": 0.125, "ref_ramp": True}  # the ramp acts on refresh=auto only;
# refresh=auto records made before the ramp (unramped) are told apart by SAFLEX's semantics version 2 (see
# SaflexLearner.semantics_for), not by this knob: absent means on, for the records made since


def stored_knobs(learner: str, knobs: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A stored spec's knobs as they ran: knobs added after the record was written take the value
    that reproduces the old behaviour (not today's default, which may have moved since)."""
    if knobs is None:
        return None
    return {**LATER_SAFLEX_KNOBS, **dict(knobs)} if learner == "saflex" else dict(knobs)


@dataclass(frozen=True)
class RunSpec:
    task: str
    method: str
    model: str = ""
    seed: int = 0
    epochs: int = 100
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: str = "multistep"
    milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of `epochs`
    gamma: float = 0.1
    batch_size: int = 128
    select_metric: str = "auc"  # selection-split metric that picks the best epoch
    as_rgb: bool = False        # image tasks: replicate grey channels to 3
    # fraction of the `ref_from` split set aside as the reference part (labelled data a learner may
    # train on: SAFLEX's reference set, the `ref` control's extra images); None = no separate part:
    # SAFLEX's reference is the selection split itself (the protocol of the first study)
    ref_frac: float | None = None
    ref_from: str = "val"
    options: Mapping[str, Any] | None = None  # task options (the task's Options schema)
    knobs: Mapping[str, Any] | None = None    # the learner's knobs (its Knobs schema)

    # ---- derived views -------------------------------------------------------------------------
    @property
    def upstream(self) -> str:
        return split_method(self.method)[0]

    @property
    def learner(self) -> str:
        return split_method(self.method)[1]

    @property
    def uses_saflex(self) -> bool:
        return self.learner == "saflex"

    @property
    def saflex(self) -> Mapping[str, Any] | None:  # the first release's name for SAFLEX's knobs
        return self.knobs if self.learner == "saflex" else None

    @property
    def family(self) -> str:
        return self.task.split("/", 1)[0]

    @property
    def dataset(self) -> str:
        return self.task.split("/", 1)[-1]

    def option(self, name: str, default: Any = None) -> Any:
        return (self.options or {}).get(name, default)

    # ---- canonical form ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {name: getattr(self, name) for name in LEGACY_FIELDS}
        d["milestones"] = list(self.milestones)
        learner = self.learner
        d["saflex"] = None
        if learner == "saflex" and self.knobs is not None:
            d["saflex"] = {k: v for k, v in self.knobs.items() if LATER_SAFLEX_KNOBS.get(k, object()) != v}
        if learner not in (NONE, "saflex") and self.knobs is not None:
            d[learner] = dict(self.knobs)
        for name, default in LATER_DEFAULTS.items():
            value = getattr(self, name)
            if value != default and not (name == "options" and not value):
                d[name] = dict(value) if isinstance(value, Mapping) else value
        semantics = self.semantics
        if semantics:  # only when some component is past version 1: the keys of the first semantics stay
            d["semantics"] = semantics
        return d

    @property
    def semantics(self) -> dict[str, int]:
        """{component: version} of the learner, upstream and task this run uses, versions other than 1
        only (e.g. {"learner:saflex": 2}); {} for a run whose components all compute as they first did."""
        return semantics_of(self)

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def key(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RunSpec":
        """From a canonical dict (spec.json, result.json, a sweep point); validated."""
        return normalize(cls(**_fields_from_dict(d)))

    @classmethod
    def from_canonical(cls, d: Mapping[str, Any]) -> "RunSpec":
        """From a dict that is already canonical (the planner's), without re-validating: cheap."""
        fields = _fields_from_dict(d)
        if isinstance(fields.get("milestones"), list):
            fields["milestones"] = tuple(fields["milestones"])
        return cls(**fields)

    def with_overrides(self, overrides: Mapping[str, Any]) -> "RunSpec":
        return apply_overrides(self, overrides)


def _fields_from_dict(d: Mapping[str, Any]) -> dict[str, Any]:
    d = dict(d)
    d.pop("key", None)
    d.pop("semantics", None)  # derived from the code (RunSpec.semantics); the record keeps what it ran under
    names = {f.name for f in dataclasses.fields(RunSpec)}
    learner = split_method(str(d.get("method", "")))[1]
    knobs = d.pop("saflex", None)
    if learner != "saflex":
        knobs = d.pop(learner, None) if learner != NONE else None
    if knobs is not None:
        d["knobs"] = stored_knobs(learner, knobs)
    unknown = sorted(set(d) - names)
    if unknown:
        raise UsageError(f"unknown run field(s) {', '.join(unknown)} (valid: {', '.join(sorted(names - {'knobs'}))})")
    return d


# ---- semantics versions ------------------------------------------------------------------------
def semantics_of(spec: RunSpec) -> dict[str, int]:
    out = {}
    learner = spec.learner
    version = get_learner_class(learner).semantics_for(spec.knobs)
    if version != 1:
        out[f"learner:{learner}"] = version
    out.update(_upstream_semantics(spec.upstream))
    out.update(_task_semantics(spec.task))
    return dict(sorted(out.items()))


@functools.lru_cache(maxsize=None)
def _upstream_semantics(upstream: str) -> tuple[tuple[str, int], ...]:
    try:
        up = parse_upstream(upstream)
    except UsageError:  # not a method of this code (an old record): no version to name
        return ()
    return tuple(up.semantics_versions().items())


def _task_semantics(name: str) -> dict[str, int]:
    try:
        version = getattr(tasks.get_task(name), "semantics", 1)
    except UsageError:
        return {}
    return {f"task:{name.split('/', 1)[0]}": version} if version != 1 else {}


# ---- method strings ----------------------------------------------------------------------------
def canonical_method(method: str) -> str:
    """Parse `UPSTREAM[+LEARNER]` with the registries and print it back canonically."""
    upstream, learner = split_method(str(method).strip())
    return join_method(str(parse_upstream(upstream)), learner)


# ---- field coercion (for --set key=value and YAML) -----------------------------------------------
_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(RunSpec)}
_ADAPTERS: dict[str, Any] = {}


def _coerce(name: str, value: Any) -> Any:
    from pydantic import TypeAdapter, ValidationError

    hint = _FIELD_TYPES[name]
    if name in ("options", "knobs"):
        return value
    if hint.startswith("tuple") and isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if hint == "float | None" and isinstance(value, str) and value.strip().lower() in ("none", "null", ""):
        return None
    if name not in _ADAPTERS:
        py = {"int": int, "float": float, "bool": bool, "str": str, "float | None": typing.Optional[float],
              "tuple[float, ...]": tuple[float, ...]}[hint]
        _ADAPTERS[name] = TypeAdapter(py)
    try:
        if hint == "int" and isinstance(value, float) and not value.is_integer():
            raise ValueError
        if hint != "bool" and isinstance(value, bool):  # YAML `seed: [true]` is not seed 1
            raise ValueError
        if hint == "str" and not isinstance(value, str):
            value = str(value)
        out = _ADAPTERS[name].validate_python(value)
    except (ValidationError, ValueError, TypeError):
        raise UsageError(f"run field '{name}' expects {hint} (got {value!r})") from None
    if any(isinstance(v, float) and not math.isfinite(v) for v in (out if isinstance(out, tuple) else (out,))):
        raise UsageError(f"run field '{name}' must be a finite number (got {value!r})")
    return out



def _check_choice(name: str, value: str, choices: typing.Iterable[str]) -> None:
    choices = list(choices)
    if value not in choices:
        raise UsageError(f"unknown {name} '{value}' (valid: {', '.join(choices)})")


def normalize(spec: RunSpec) -> RunSpec:
    """Coerce types, validate names and values, canonicalise method, options and knobs."""
    values = {f.name: _coerce(f.name, getattr(spec, f.name)) for f in dataclasses.fields(RunSpec)}
    task = tasks.get_task(values["task"])  # raises UsageError with valid names
    values["method"] = canonical_method(values["method"])
    valid_models = task.models() or models.list_models(task.modality)
    _check_choice("model", values["model"], valid_models)
    _check_choice("optimizer", values["optimizer"], OPTIMIZERS)
    _check_choice("schedule", values["schedule"], SCHEDULES)
    _check_choice("select_metric", values["select_metric"], [*task.metric_names, *SELECT_EXTRA])
    _check_choice("ref_from", values["ref_from"], REF_SOURCES)
    for name in ("epochs", "batch_size"):
        if values[name] < 1:
            raise UsageError(f"run field '{name}' must be >= 1 (got {values[name]})")
    if values["lr"] <= 0:
        raise UsageError(f"run field 'lr' must be > 0 (got {values['lr']})")
    for name, ok, what in (("weight_decay", values["weight_decay"] >= 0, ">= 0"), ("gamma", values["gamma"] > 0, "> 0"),
                           ("momentum", 0 <= values["momentum"] < 1, "in [0, 1)")):
        if not ok:  # the optimiser / scheduler would refuse it only once training starts
            raise UsageError(f"run field '{name}' must be {what} (got {values[name]})")
    if any(not 0 < m < 1 for m in values["milestones"]):
        raise UsageError(f"run field 'milestones' are fractions of epochs in (0, 1) (got {values['milestones']})")
    if values["ref_frac"] is None:
        values["ref_from"] = "val"  # no reference part: where it would come from is not identity
    elif not 0 < values["ref_frac"] < 1:
        raise UsageError(f"run field 'ref_frac' must be in (0, 1) or none (got {values['ref_frac']})")
    if values["as_rgb"] and task.modality != "image":
        raise UsageError(f"run field 'as_rgb' applies to image tasks only (task {task.name} is {task.modality})")
    values["options"] = task_options(task, values["options"])
    check_pair(task, values["method"])
    learner = split_method(values["method"])[1]
    cls = get_learner_class(learner)
    if cls.needs_reference_part and values["ref_frac"] is None:
        raise UsageError(f"learner '{learner}' trains on a reference part apart from the selection split: "
                         f"set ref_frac (e.g. --set ref_frac=0.5)")
    values["knobs"] = cls.parse_knobs(values["knobs"])
    return RunSpec(**values)


def task_options(task, options: Mapping[str, Any] | None) -> dict[str, Any] | None:
    schema = getattr(task, "Options", None)
    if schema is None:
        if options:
            raise UsageError(f"task {task.name} has no options (got {', '.join(sorted(options))})")
        return None
    from bench.config import validate

    full = validate(schema, options or {}, f"task {task.name} options").model_dump(mode="json")
    return full or None


def apply_overrides(spec: RunSpec, overrides: Mapping[str, Any]) -> RunSpec:
    """Apply `field=value`, `<learner>.<knob>=value` and `task.<option>=value` overrides (values may be
    strings from the CLI). Knobs of a learner the method does not use are dropped (they are not
    identity: runs without that learner dedupe); `ignored_knobs` says which."""
    values = {f.name: getattr(spec, f.name) for f in dataclasses.fields(RunSpec)}
    knobs: dict[str, Any] = {}
    options = dict(values.get("options") or {})
    learner_now = split_method(str(overrides.get("method", values["method"])))[1]
    if split_method(str(values["method"]))[1] == learner_now:
        knobs = dict(values.get("knobs") or {})
    for name, value in overrides.items():
        prefix, dot, rest = name.partition(".")
        if dot and prefix == "task" and rest:
            options[rest] = value
        elif dot and rest and prefix in _learner_names():
            if prefix == learner_now:
                knobs[rest] = value
        elif name in _FIELD_TYPES and name not in ("knobs", "options"):
            values[name] = value
        else:
            valid = sorted(n for n in _FIELD_TYPES if n not in ("knobs", "options")) + ["<learner>.<knob>", "task.<option>"]
            raise UsageError(f"unknown run field '{name}' (valid: {', '.join(valid)})")
    values["knobs"] = knobs or None
    values["options"] = options or None
    return normalize(RunSpec(**values))


def ignored_knobs(method: str, overrides: Mapping[str, Any]) -> list[str]:
    learner = split_method(method)[1]
    return [k for k in overrides if "." in k and k.split(".", 1)[0] in _learner_names() and k.split(".", 1)[0] != learner]


def _learner_names() -> list[str]:
    return LEARNERS.valid_choices()


def parse_assignments(items: typing.Iterable[str]) -> dict[str, str]:
    """Parse `--set key=value` items."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"malformed --set '{item}' (expected key=value, e.g. lr=0.01 or saflex.eps=0.05)")
        out[name.strip()] = value.strip()
    return out


def make_spec(task: str, method: str, seed: int = 0, overrides: Mapping[str, Any] | None = None) -> RunSpec:
    """A normalised spec with the task's defaults (model, epochs, optimiser, ...) filled in."""
    t = tasks.get_task(task)
    base = {**t.defaults(), "task": task, "method": method, "seed": seed}
    return apply_overrides(RunSpec(**base), overrides or {})
