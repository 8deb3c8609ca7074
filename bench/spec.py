"""RunSpec: the identity of one run, its canonical JSON form and its short key.

Everything that changes what a run computes is in the spec (and so in the key); where the data
lives, which device runs it and how it is tracked are not.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping

from bench.errors import UsageError

SAFLEX_SUFFIX = "+saflex"
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("multistep", "cosine", "constant")
SELECT_METRICS = ("auc", "acc", "loss", "last")


@dataclass(frozen=True)
class RunSpec:
    task: str
    method: str
    model: str
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
    select_metric: str = "auc"  # validation metric that picks the best epoch
    as_rgb: bool = False
    saflex: Mapping[str, Any] | None = field(default=None, compare=True)

    # ---- derived views -------------------------------------------------------------------
    @property
    def upstream(self) -> str:
        return split_method(self.method)[0]

    @property
    def uses_saflex(self) -> bool:
        return split_method(self.method)[1]

    @property
    def family(self) -> str:
        return self.task.split("/", 1)[0]

    @property
    def dataset(self) -> str:
        return self.task.split("/", 1)[-1]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        d["saflex"] = dict(self.saflex) if self.saflex is not None else None
        return d

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def key(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RunSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UsageError(f"unknown run field(s) {', '.join(unknown)} (valid: {', '.join(sorted(names))})")
        return normalize(cls(**{k: v for k, v in d.items()}))

    def with_overrides(self, overrides: Mapping[str, Any]) -> "RunSpec":
        return apply_overrides(self, overrides)


# ---- method strings --------------------------------------------------------------------------
def split_method(method: str) -> tuple[str, bool]:
    if method.endswith(SAFLEX_SUFFIX):
        return method[: -len(SAFLEX_SUFFIX)], True
    return method, False


def canonical_method(method: str) -> str:
    """Parse `UPSTREAM[+saflex]` with the baselines registry and print it back canonically."""
    import baselines

    upstream, saflex = split_method(str(method).strip())
    try:
        up = baselines.create_method(upstream)
    except baselines.PolicyError as e:
        raise UsageError(str(e)) from None
    return str(up) + (SAFLEX_SUFFIX if saflex else "")


# ---- field coercion (for --set key=value and YAML) -------------------------------------------
_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(RunSpec)}


def _coerce(name: str, value: Any) -> Any:
    hint = _FIELD_TYPES[name]
    try:
        if hint in ("int",):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if hint in ("float",):
            return float(value)
        if hint in ("bool",):
            if isinstance(value, str):
                low = value.lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            return bool(value)
        if hint.startswith("tuple"):
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(float(v) for v in items if str(v).strip() != "")
        if hint == "str":
            return str(value)
    except (TypeError, ValueError):
        raise UsageError(f"run field '{name}' expects {hint} (got {value!r})") from None
    return value


def _check_choice(name: str, value: str, choices: typing.Iterable[str]) -> None:
    if value not in choices:
        raise UsageError(f"unknown {name} '{value}' (valid: {', '.join(choices)})")


def normalize(spec: RunSpec) -> RunSpec:
    """Coerce types, validate names and values, canonicalise method and SAFLEX knobs."""
    from bench import models, tasks

    values = {f.name: getattr(spec, f.name) for f in dataclasses.fields(RunSpec)}
    for name in values:
        if name != "saflex":
            values[name] = _coerce(name, values[name])
    task = tasks.get_task(values["task"])  # raises UsageError with valid names
    values["method"] = canonical_method(values["method"])
    if values["model"] not in models.list_models():
        _check_choice("model", values["model"], models.list_models())
    _check_choice("optimizer", values["optimizer"], OPTIMIZERS)
    _check_choice("schedule", values["schedule"], SCHEDULES)
    _check_choice("select_metric", values["select_metric"], SELECT_METRICS)
    for name in ("epochs", "batch_size"):
        if values[name] < 1:
            raise UsageError(f"run field '{name}' must be >= 1 (got {values[name]})")
    if values["lr"] <= 0:
        raise UsageError(f"run field 'lr' must be > 0 (got {values['lr']})")
    if any(not 0 < m < 1 for m in values["milestones"]):
        raise UsageError(f"run field 'milestones' are fractions of epochs in (0, 1) (got {values['milestones']})")
    upstream, saflex = split_method(values["method"])
    task.check_method(upstream)
    if saflex:
        values["saflex"] = _saflex_knobs(values["saflex"] or {})
        task.check_saflex()
    else:
        values["saflex"] = None  # knobs of an unused plug-in are not identity: baseline runs dedupe
    return RunSpec(**values)


def _saflex_knobs(knobs: Mapping[str, Any]) -> dict[str, Any]:
    import saflex_core

    try:
        return saflex_core.SaflexConfig().replace(**dict(knobs)).to_dict()
    except saflex_core.ConfigError as e:
        raise UsageError(str(e)) from None


def apply_overrides(spec: RunSpec, overrides: Mapping[str, Any]) -> RunSpec:
    """Apply `field=value` / `saflex.knob=value` overrides (values may be strings from the CLI)."""
    values = spec.to_dict()
    knobs = dict(values.get("saflex") or {})
    for name, value in overrides.items():
        if name.startswith("saflex."):
            knobs[name.split(".", 1)[1]] = value
        elif name in _FIELD_TYPES and name != "saflex":
            values[name] = value
        else:
            valid = sorted(n for n in _FIELD_TYPES if n != "saflex") + ["saflex.<knob>"]
            raise UsageError(f"unknown run field '{name}' (valid: {', '.join(valid)})")
    values["saflex"] = knobs or None
    if knobs and not split_method(str(values["method"]))[1]:
        values["saflex"] = None
    return normalize(RunSpec(**values))


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
    from bench import tasks

    base = {**tasks.get_task(task).defaults(), "task": task, "method": method, "seed": seed}
    return apply_overrides(RunSpec(**base), overrides or {})
