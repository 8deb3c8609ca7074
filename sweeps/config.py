"""Sweep files: parse and validate a `sweeps/*.yaml` into a SweepConfig (no bench imports: cheap).

Every problem is a UsageError of one line naming the file, the key and what was expected, e.g.
`sweeps/x.yaml: launcher.mem_gb: expected a number > 0, got 'lots'`.
The schema is documented in sweeps/README.md.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Union

from pydantic import ConfigDict, Field, ValidationError, field_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from bench.errors import UsageError

SWEEPS_DIR = Path(__file__).resolve().parent
TOP_KEYS = ("name", "description", "fixed", "grid", "skip", "launcher", "generate")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
# fields a skip rule may test besides the run fields: derived views of the spec
DERIVED_FIELDS = ("upstream", "learner", "uses_saflex", "family", "dataset")


def run_fields() -> tuple[str, ...]:
    """Run-spec field names a sweep may set (plus `<learner>.<knob>` and `task.<option>`)."""
    from bench.spec import RunSpec

    return tuple(f.name for f in dataclasses.fields(RunSpec) if f.name not in ("knobs", "options"))


def knob_fields() -> dict[str, tuple[str, ...]]:
    """learner -> the knob names a sweep may set as `<learner>.<knob>`."""
    from bench.learners import get_learner_class, list_learners

    return {n: tuple(get_learner_class(n).default_knobs() or ()) for n in list_learners()}


def _launcher_setting(default: Any, expected: str, **constraints: Any) -> Any:
    """A launcher field; `expected` is what its error message says it takes."""
    if callable(default):
        return Field(default_factory=default, description=expected, **constraints)
    return Field(default, description=expected, **constraints)


# strict: YAML gives typed values, and `mem_gb: true` or `cpus_per_task: 2.5` are mistakes, not numbers
@pydantic_dataclass(frozen=True, config=ConfigDict(strict=True))
class Launcher:
    """Where and how the job array runs. Field names follow submitit's (slurm_ prefix dropped). A
    pydantic dataclass: the sweep file's values and `dataclasses.replace(...)` are validated alike."""

    partition: Optional[str] = _launcher_setting(None, "a partition name (string)")
    gpus_per_node: int = _launcher_setting(0, "an integer >= 0", ge=0)
    cpus_per_task: int = _launcher_setting(1, "an integer >= 1", ge=1)
    mem_gb: float = _launcher_setting(4.0, "a number > 0 (GB)", gt=0, allow_inf_nan=False)
    timeout_min: int = _launcher_setting(60, "an integer >= 1", ge=1)
    array_parallelism: int = _launcher_setting(2, "an integer >= 1", ge=1)
    max_num_timeout: int = _launcher_setting(3, "an integer >= 0", ge=0)
    signal_delay_s: int = _launcher_setting(90, "an integer >= 1", ge=1)
    account: Optional[str] = _launcher_setting(None, "a string")
    qos: Optional[str] = _launcher_setting(None, "a string")
    constraint: Optional[str] = _launcher_setting(None, "a string")
    setup: tuple[str, ...] = _launcher_setting((), "a list of shell lines")
    slurm_additional_parameters: dict[str, Union[str, int, float, bool, None]] = _launcher_setting(
        dict, "a mapping of sbatch option -> scalar")
    # every run of the sweep trains in bench.numerics' deterministic mode (threads = cpus_per_task)
    deterministic: bool = _launcher_setting(False, "true or false")
    # runs per array task, trained concurrently (sweeps/pack.py); cpus_per_task and mem_gb are per run
    runs_per_job: int = _launcher_setting(1, "an integer >= 1", ge=1)
    # how a pack trains its runs: `processes` (concurrently, one child each) or `serial` (one after
    # another in the job's own interpreter: imports and wandb paid once; cpus/mem are one run's)
    pack_mode: Literal["processes", "serial"] = _launcher_setting("processes", "processes or serial")

    @field_validator("partition", "account", "qos", "constraint", mode="before")
    @classmethod
    def _nonblank(cls, v: Any) -> Any:
        if isinstance(v, str):
            if not v.strip():
                raise ValueError("blank")
            return v.strip()
        return v

    @field_validator("setup", mode="before")
    @classmethod
    def _lines(cls, v: Any) -> Any:
        return (v,) if isinstance(v, str) else tuple(v) if isinstance(v, list) else v

    @field_validator("slurm_additional_parameters", mode="before")
    @classmethod
    def _no_params(cls, v: Any) -> Any:
        return {} if v is None else v

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["setup"] = list(self.setup)
        d["slurm_additional_parameters"] = dict(self.slurm_additional_parameters)
        return d


PACK_MODES = ("processes", "serial")
LAUNCHER_SETTINGS = tuple(f.name for f in dataclasses.fields(Launcher))


def launcher_settings(raw: Mapping[str, Any], where: str, key: str) -> dict[str, Any]:
    """The validated values of the settings `raw` gives (only those), or a one-line UsageError
    naming the file, the setting and what it takes (`<where>: <key>.mem_gb: expected a number > 0`)."""
    for k in raw:
        if k not in LAUNCHER_SETTINGS:
            raise UsageError(f"{where}: {key}.{k}: unknown launcher setting (valid: {', '.join(LAUNCHER_SETTINGS)})")
    try:
        launcher = Launcher(**raw)
    except ValidationError as e:
        name = str(e.errors()[0]["loc"][0])
        expected = Launcher.__pydantic_fields__[name].description
        raise UsageError(f"{where}: {key}.{name}: expected {expected}, got {_type_name(raw[name])}") from None
    return {k: getattr(launcher, k) for k in raw}


# key -> (expected, checker) ; checker returns the coerced value or raises ValueError (the generate stage's)
def _int(lo: int):
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError
        return v

    return check, f"an integer >= {lo}"


@dataclass(frozen=True)
class SkipRule:
    when: Mapping[str, tuple[Any, ...]]  # field -> accepted patterns (any of them)
    reason: str

    def matches(self, view: Mapping[str, Any]) -> bool:
        for name, patterns in self.when.items():
            if name not in view:
                return False
            value = view[name]
            if not any(_match(value, p) for p in patterns):
                return False
        return True


def _match(value: Any, pattern: Any) -> bool:
    """Glob on strings; equality otherwise (numbers compare as numbers, 1 == 1.0)."""
    if isinstance(pattern, str) and isinstance(value, str):
        return fnmatch.fnmatchcase(value, pattern)
    if isinstance(pattern, bool) or isinstance(value, bool):
        return pattern is value or (str(pattern).lower() == str(value).lower())
    if isinstance(pattern, (int, float)) and isinstance(value, (int, float)):
        return float(pattern) == float(value)
    return str(pattern) == str(value)


@dataclass(frozen=True)
class SweepConfig:
    name: str
    path: Path
    fixed: Mapping[str, Any]
    grids: tuple[Mapping[str, tuple[Any, ...]], ...]  # a union of grids (one mapping per grid)
    skip: tuple[SkipRule, ...]
    launcher: Launcher
    description: str = ""
    generate: "GenerateStage | None" = None  # diffusion caches made before the runs (sweeps/generate_stage.py)

    @property
    def grid_points(self) -> int:
        n = 0
        for g in self.grids:
            m = 1
            for values in g.values():
                m *= len(values)
            n += m
        return n


# Planning normalises every grid point (~1 ms each) and holds them all: a typo such as a 10^7-point
# grid would compute for minutes without a word. Above this many points `sweep`/`status` refuse unless
# --allow-large-grid is given.
MAX_GRID_POINTS = 10_000


def check_grid_size(cfg: SweepConfig, allow_large: bool = False, limit: int = MAX_GRID_POINTS) -> None:
    n = cfg.grid_points
    if n > limit and not allow_large:
        sizes = " + ".join(" x ".join(str(len(v)) for v in g.values()) for g in cfg.grids)
        raise UsageError(f"{cfg.path}: the grid has {n:,} points ({sizes}), over the limit of {limit:,}; "
                         f"check the grid, or pass --allow-large-grid to plan it anyway")


def resolve_sweep_path(ref: str | os.PathLike) -> Path:
    """A sweep file path, or the name of a shipped sweep (`demo` -> sweeps/demo.yaml)."""
    p = Path(ref).expanduser()
    if p.is_file():
        return p
    for cand in (SWEEPS_DIR / str(ref), SWEEPS_DIR / f"{ref}.yaml"):
        if cand.is_file() and cand.suffix in (".yaml", ".yml"):
            return cand
    shipped = ", ".join(sorted(q.stem for q in SWEEPS_DIR.glob("*.yaml")))
    raise UsageError(f"sweep file '{ref}' not found (a path to a .yaml, or a shipped sweep: {shipped})")


def _type_name(v: Any) -> str:
    if v is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: f"'{v}'", bool: f"{v}"}.get(type(v), repr(v))


class DuplicateKey(ValueError):
    pass


def _unique_key_loader():
    """yaml's SafeLoader, except that a key given twice in one mapping is an error (plain YAML keeps the
    last value without a word: `seed: [0]` then `seed: [1]` would silently plan seed 1 only)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen: dict = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if isinstance(key, (str, int, float, bool)) and key in seen:
                    raise DuplicateKey(f"line {key_node.start_mark.line + 1}: duplicate key '{key}' "
                                       f"(first given on line {seen[key] + 1}); keep one")
                if isinstance(key, (str, int, float, bool)):
                    seen[key] = key_node.start_mark.line
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def load_sweep(ref: str | os.PathLike) -> SweepConfig:
    import yaml

    path = resolve_sweep_path(ref)
    where = str(path)

    def bad(key: str, expected: str, got: Any = dataclasses.MISSING) -> UsageError:
        tail = "" if got is dataclasses.MISSING else f", got {_type_name(got)}"
        return UsageError(f"{where}: {key}: expected {expected}{tail}")

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"{where}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"{where}: not a text file (byte {e.start} is not UTF-8); a sweep file is YAML text") from None
    try:
        doc = yaml.load(text, Loader=_unique_key_loader())  # noqa: S506 - a SafeLoader subclass
    except DuplicateKey as e:
        raise UsageError(f"{where}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UsageError(f"{where}: {line}invalid YAML ({problem})") from None
    if not isinstance(doc, dict):
        raise bad("top level", "a mapping with keys " + ", ".join(TOP_KEYS), doc)
    unknown = [k for k in doc if k not in TOP_KEYS]
    if unknown:
        raise UsageError(f"{where}: unknown key '{unknown[0]}' (valid: {', '.join(TOP_KEYS)})")

    # ---- name ----
    name = doc.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise bad("name", "a sweep name of letters, digits, '_', '.', '-'", name)
    description = doc.get("description") or ""
    if not isinstance(description, str):
        raise bad("description", "a string", description)

    fields = run_fields()
    knobs = knob_fields()
    valid_fields = ", ".join(fields) + ", <learner>.<knob>, task.<option>"

    def check_field(key: str, name: str) -> None:
        prefix, dot, rest = name.partition(".")
        if name in fields or (dot and prefix == "task" and rest):
            return
        if dot and prefix in knobs:
            if rest in knobs[prefix]:
                return
            raise UsageError(f"{where}: {key}: unknown {prefix} knob '{rest}' "
                             f"(valid: {', '.join(knobs[prefix]) or 'none: that learner has no knobs'})")
        raise UsageError(f"{where}: {key}: unknown run field '{name}' (valid: {valid_fields})")

    def check_value(key: str, v: Any) -> None:
        if isinstance(v, (dict, list)) and not (isinstance(v, list) and all(isinstance(x, (int, float)) for x in v)):
            raise bad(key, "a scalar value (string, number or boolean)", v)

    # ---- generate (before fixed/grid: their method strings may name its caches as @name) ----
    generate = _generate_stage(doc.get("generate"), where) if doc.get("generate") is not None else None
    if generate is not None:
        doc = _with_cache_ids(doc, generate, where)
    elif _CACHE_REF.search(str(doc.get("fixed")) + str(doc.get("grid"))):
        raise UsageError(f"{where}: a method names a cache as @name but the file has no generate section")

    # ---- fixed ----
    fixed = doc.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise bad("fixed", "a mapping of run field -> value", fixed)
    for k, v in fixed.items():
        check_field(f"fixed.{k}", str(k))
        check_value(f"fixed.{k}", v)

    # ---- grid (a mapping, or a list of mappings = union of grids) ----
    raw_grid = doc.get("grid")
    if raw_grid is None:
        raise bad("grid", "a mapping of run field -> list of values (at least task and method)")
    grid_list = raw_grid if isinstance(raw_grid, list) else [raw_grid]
    grids = []
    for i, g in enumerate(grid_list):
        gkey = "grid" if not isinstance(raw_grid, list) else f"grid[{i}]"
        if not isinstance(g, dict) or not g:
            raise bad(gkey, "a mapping of run field -> list of values", g)
        axes: dict[str, tuple[Any, ...]] = {}
        for k, values in g.items():
            check_field(f"{gkey}.{k}", str(k))
            if str(k) in fixed:
                raise UsageError(f"{where}: {gkey}.{k}: '{k}' is also in fixed (a field is either fixed or an axis)")
            if not isinstance(values, list):
                values = [values]
            if not values:
                raise bad(f"{gkey}.{k}", "a non-empty list of values", values)
            for v in values:
                if isinstance(v, (dict, list)) or v is None:
                    raise bad(f"{gkey}.{k}", "a list of scalar values (string, number or boolean)", v)
            axes[str(k)] = tuple(values)
        for required in ("task", "method"):
            if required not in axes and required not in fixed:
                raise UsageError(f"{where}: {gkey}: expected a '{required}' axis (or fixed.{required})")
        grids.append(axes)

    # ---- skip rules ----
    raw_skip = doc.get("skip") or []
    if not isinstance(raw_skip, list):
        raise bad("skip", "a list of {when: {field: pattern}, reason: text}", raw_skip)
    rules = []
    for i, r in enumerate(raw_skip):
        key = f"skip[{i}]"
        if not isinstance(r, dict) or set(r) - {"when", "reason"}:
            raise bad(key, "a mapping with keys when, reason", r)
        when, reason = r.get("when"), r.get("reason")
        if not isinstance(when, dict) or not when:
            raise bad(f"{key}.when", "a mapping of field -> glob pattern (or list of patterns)", when)
        if not isinstance(reason, str) or not reason.strip():
            raise bad(f"{key}.reason", "a non-empty string saying why these runs are skipped", reason)
        conds = {}
        for f, pat in when.items():
            if str(f) not in DERIVED_FIELDS:
                check_field(f"{key}.when.{f}", str(f))
            pats = pat if isinstance(pat, list) else [pat]
            if not pats or any(isinstance(p, (dict, list)) or p is None for p in pats):
                raise bad(f"{key}.when.{f}", "a glob pattern or a list of patterns", pat)
            conds[str(f)] = tuple(pats)
        rules.append(SkipRule(conds, reason.strip()))

    # ---- launcher ----
    raw_l = doc.get("launcher") or {}
    if not isinstance(raw_l, dict):
        raise bad("launcher", "a mapping (partition, gpus_per_node, cpus_per_task, mem_gb, timeout_min, ...)", raw_l)
    launcher = Launcher(**launcher_settings(raw_l, where, "launcher"))

    return SweepConfig(name=name, path=path, fixed=dict(fixed), grids=tuple(grids), skip=tuple(rules),
                       launcher=launcher, description=description.strip(), generate=generate)


# ---- the generate stage ----------------------------------------------------------------------------
_CACHE_REF = re.compile(r"@([A-Za-z_][A-Za-z0-9_-]*)")
_STAGE_CHECKS: dict[str, tuple[Any, str]] = {
    "shards": _int(1), "chunk": _int(1), "batch_size": _int(1),
    "attention_slicing": (lambda v: _bool(v), "true or false"),
}


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError
    return v


@dataclass(frozen=True)
class GenerateStage:
    caches: Mapping[str, Any]  # name -> bench.generate.GenerationSpec
    shards: int = 1
    chunk: int = 64
    batch_size: int = 8
    attention_slicing: bool = False
    launcher: Mapping[str, Any] = field(default_factory=dict)  # overrides of the sweep launcher


def _generate_stage(raw: Any, where: str) -> GenerateStage:
    from bench.generate import GenerationSpec

    keys = ("caches", "launcher", *_STAGE_CHECKS)
    if not isinstance(raw, dict):
        raise UsageError(f"{where}: generate: expected a mapping with keys {', '.join(keys)}, got {_type_name(raw)}")
    for k in raw:
        if k not in keys:
            raise UsageError(f"{where}: generate.{k}: unknown key (valid: {', '.join(keys)})")
    values: dict[str, Any] = {}
    for k, (check, expected) in _STAGE_CHECKS.items():
        if k in raw:
            try:
                values[k] = check(raw[k])
            except ValueError:
                raise UsageError(f"{where}: generate.{k}: expected {expected}, got {_type_name(raw[k])}") from None
    overrides = raw.get("launcher") or {}
    if not isinstance(overrides, dict):
        raise UsageError(f"{where}: generate.launcher: expected a mapping of launcher settings, got {_type_name(overrides)}")
    overrides = launcher_settings(overrides, where, "generate.launcher")
    caches = raw.get("caches")
    if not isinstance(caches, dict) or not caches:
        raise UsageError(f"{where}: generate.caches: expected a mapping of name -> generation parameters, got {_type_name(caches)}")
    specs = {}
    for name, params in caches.items():
        if not isinstance(name, str) or not _CACHE_REF.fullmatch("@" + name):
            raise UsageError(f"{where}: generate.caches: name {name!r} must be letters, digits, '_' or '-'")
        if not isinstance(params, dict):
            raise UsageError(f"{where}: generate.caches.{name}: expected a mapping of generation parameters, got {_type_name(params)}")
        try:
            specs[name] = GenerationSpec.from_dict(params)
        except (UsageError, TypeError) as e:
            raise UsageError(f"{where}: generate.caches.{name}: {e}") from None
    return GenerateStage(caches=specs, launcher=dict(overrides), **values)


def _with_cache_ids(doc: dict, stage: GenerateStage, where: str) -> dict:
    """`@name` in method / upstream strings -> the cache id of generate.caches.name."""

    def sub(v: Any, key: str) -> Any:
        if isinstance(v, list):
            return [sub(x, key) for x in v]
        if not isinstance(v, str):
            return v

        def repl(m: re.Match) -> str:
            if m.group(1) not in stage.caches:
                raise UsageError(f"{where}: {key}: unknown cache @{m.group(1)} (generate.caches: {', '.join(stage.caches)})")
            return stage.caches[m.group(1)].cache_id

        return _CACHE_REF.sub(repl, v)

    def section(d: Any, key: str) -> Any:
        if not isinstance(d, dict):
            return d
        return {k: (sub(v, f"{key}.{k}") if k in ("method", "upstream") else v) for k, v in d.items()}

    out = dict(doc)
    out["fixed"] = section(doc.get("fixed"), "fixed")
    grid = doc.get("grid")
    out["grid"] = [section(g, f"grid[{i}]") for i, g in enumerate(grid)] if isinstance(grid, list) else section(grid, "grid")
    skip = doc.get("skip")
    if isinstance(skip, list):
        out["skip"] = [{**r, "when": section(r.get("when"), f"skip[{i}].when")} if isinstance(r, dict) else r
                       for i, r in enumerate(skip)]
    return out
