"""One way to declare and validate settings: pydantic models, one line per error.

Learner knobs and task options go through `validate`, so a bad value reads the same everywhere
(`<what>: <field>: <problem> (valid: ...)`) and booleans accept the same words (true/false, yes/no,
on/off, 1/0) wherever they appear. Sweep launcher settings are a strict pydantic dataclass
(`sweeps.config.Launcher`: YAML gives typed values, so `mem_gb: true` is an error, not 1 GB).
"""
from __future__ import annotations

from typing import Any, Mapping, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from bench.errors import UsageError

M = TypeVar("M", bound=BaseModel)


class Knobs(BaseModel):
    """Base of every learner's knob schema: unknown names are errors, values are coerced from strings."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # nan/inf knobs crash mid-run

    @classmethod
    def knob_names(cls) -> tuple[str, ...]:
        return tuple(cls.model_fields)


def _describe(err: Mapping[str, Any], model: type[BaseModel]) -> str:
    loc = ".".join(str(p) for p in err.get("loc", ())) or "value"
    if err.get("type") == "extra_forbidden":
        return f"unknown {loc!s} (valid: {', '.join(model.model_fields)})"
    msg = err.get("msg", "invalid")
    ctx = err.get("ctx") or {}
    if "expected" in ctx:
        msg = f"expected {ctx['expected']}"
    return f"{loc}: {msg} (got {err.get('input')!r})"


def validate(model: type[M], values: Mapping[str, Any], what: str) -> M:
    """`model(**values)`, or a UsageError of one line naming `what`, the field and the valid choices."""
    try:
        return model.model_validate(dict(values))
    except ValidationError as e:
        raise UsageError(f"{what}: {_describe(e.errors()[0], model)}") from None
