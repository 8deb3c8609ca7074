"""SaflexConfig: every KNOB of design/SAFLEX.md as a validated, frozen dataclass field.

Values may be given as strings (from a CLI ``--set saflex.eps=0.05``); they are coerced to the
field's type on construction, so ``SaflexConfig(eps="0.05")``, ``cfg.replace(eps="0.05")`` and
``SaflexConfig.from_dict({"eps": "0.05"})`` all give ``eps == 0.05``.
A bad knob name or value raises :class:`ConfigError` with one line naming the knob and the valid
choices or range.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping


class ConfigError(ValueError):
    """A bad SAFLEX knob name or value (a user error; the CLI prints its one-line message)."""


# ---- coercion helpers ----------------------------------------------------------------------------
_NONE_STRINGS = {"none", "null", "~", ""}
_TRUE_STRINGS = {"true", "1", "yes", "y", "on"}
_FALSE_STRINGS = {"false", "0", "no", "n", "off"}


def _fmt(v: Any) -> str:
    return repr(v)


def _num(name: str, v: Any, what: str) -> float:
    if isinstance(v, bool):
        raise ConfigError(f"saflex.{name} must be {what} (got {_fmt(v)})")
    if isinstance(v, str):
        try:
            v = float(v.strip())
        except ValueError:
            raise ConfigError(f"saflex.{name} must be {what} (got {_fmt(v)})") from None
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ConfigError(f"saflex.{name} must be {what} (got {_fmt(v)})") from None
    if not math.isfinite(f):
        raise ConfigError(f"saflex.{name} must be {what} (got {_fmt(v)})")
    return f


def _float(name: str, v: Any, lo: float, hi: float | None, lo_open: bool, hi_open: bool = False) -> float:
    lb = "(" if lo_open else "["
    rb = ")" if hi_open else "]"
    what = f"a number in {lb}{lo:g}, {'inf)' if hi is None else f'{hi:g}{rb}'}"
    f = _num(name, v, what)
    if (f < lo) or (lo_open and f == lo) or (hi is not None and (f > hi or (hi_open and f == hi))):
        raise ConfigError(f"saflex.{name} must be {what} (got {_fmt(v)})")
    return f


def _int(name: str, v: Any, lo: int) -> int:
    what = f"an integer >= {lo}"
    f = _num(name, v, what)
    if f != int(f) or f < lo:
        raise ConfigError(f"saflex.{name} must be {what} (got {_fmt(v)})")
    return int(f)


def _refresh(v: Any) -> int | str:
    if isinstance(v, str) and v.strip().lower() == "auto":
        return "auto"
    try:
        return _int("refresh", v, 1)
    except ConfigError:
        raise ConfigError(f"saflex.refresh must be an integer >= 1 or 'auto' (got {_fmt(v)})") from None


def _bool(name: str, v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)) and v in (0, 1):
        return bool(v)
    if isinstance(v, str):
        s = v.strip().lower()
        if s in _TRUE_STRINGS:
            return True
        if s in _FALSE_STRINGS:
            return False
    raise ConfigError(f"saflex.{name} must be true or false (got {_fmt(v)})")


def _choice(name: str, v: Any, choices: tuple[str, ...]) -> str:
    s = v.strip().lower() if isinstance(v, str) else v
    if s not in choices:
        raise ConfigError(f"saflex.{name} must be one of {', '.join(choices)} (got {_fmt(v)})")
    return s


WEIGHTS = ("hard", "sigmoid")
LABELS = ("lp", "kl")
BN_MODES = ("train", "eval")
REFERENCES = ("val", "clean")
RESIDUALS = ("ce", "tempered", "margin")


@dataclass(frozen=True)
class SaflexConfig:
    """Every SAFLEX knob (design/SAFLEX.md), with its default.

    Fields
    ------
    eps : float in [0, 1], default 0.0 (chosen on validation accuracy, see the study)
        Label trust region: q_i >= (1 - eps) * y_i (lp labels); smoothing of y for kl labels.
        eps = 0 keeps the upstream labels (q = y) and only reweights.
    rho : float in (0, 1] or None, default None
        Budget sum_i w_i <= rho * n (hard weights only; None = no budget).
    weights : "hard" | "sigmoid", default "sigmoid"
        hard: LP optimum, w_i = 1[a_i > 0] (w in [0, 1]).
        The default was chosen on validation accuracy only (studies/saflex_medmnist/report.md):
        sigmoid weights lost less validation accuracy against the upstream alone than hard 0/1 weights.
        sigmoid: w_i = sigmoid(a_i / (tau * mean|a|)), then mean-1 normalised if ``normalize``.
    tau : float > 0, default 1.0
        Temperature of the sigmoid weights.
    normalize : bool, default True
        sigmoid weights only: rescale to mean 1 over the batch (then w lies in (0, n], not [0, 1]).
        Hard weights are never rescaled.
    labels : "lp" | "kl", default "lp"
        lp: q = (1-eps) y + eps onehot(argmin_c u_c)   (closed-form LP optimum).
        kl: q ∝ ((1-eps) y + eps/C) * exp(-u / label_T)   (entropic regulariser).
    label_T : float > 0, default 1.0
        Temperature of the kl soft-label rule.
    val_batch : int >= 1, default 512
        Reference batch for (G, g): the whole validation split if it has <= val_batch samples,
        otherwise a fresh random val_batch-sample subset at every refresh.
    refresh : int >= 1 or "auto", default "auto"
        Steps between refreshes of (G, g). "auto": as often as ``ref_budget`` allows, i.e.
        every ceil(m / (ref_budget * n)) steps for a reference batch of m = min(val_batch, reference size)
        and a training batch of n (:meth:`refresh_period`).
        Why whole-reference refreshes, spaced out, rather than small frequent ones: a random subset
        moves the weights far more than a few steps of staleness do (benchmarks/bench_saflex_staleness.py:
        32-image subsets correlate 0.2-0.5 with the exact weights on Breast/Retina, the whole 39- or
        60-image reference refreshed every 3-4 steps 0.9). docs/saflex_cost.md has the figures.
    ref_budget : float > 0, default 0.125
        refresh="auto" only: reference images forwarded per training image, on average (0.125: a
        forward-only pass over 16 reference images per 128-image step, ~4 % of the step's work).
    ref_ramp : bool, default True
        refresh="auto" only: after the first refresh, refresh at steps 1, 2, 4, 8, ... until the gap
        reaches the budget's period, then every period. A young model moves fast, and without the
        ramp the summary of the randomly initialised model would weight the first period's steps
        (45 steps, most of a 3-epoch digits run); the ramp costs about log2(period) extra refreshes.
    bn_mode : "train" | "eval", default "train"
        BatchNorm during the reference forward: train = batch statistics without updating the
        running statistics; eval = running statistics (model.eval()).
    warmup_epochs : int >= 0, default 0
        Epochs of plain upstream training before SAFLEX switches on.
    reference : "val" | "clean", default "val"
        Reference set for (G, g): the validation split, or the clean unaugmented originals of the
        current training batch.
    residual : "ce" | "tempered" | "margin", default "ce"
        Residual r_v used in (G, g); see :func:`saflex_core.validation_summary`.
    residual_T : float > 0, default 2.0
        Temperature of the tempered residual.
    residual_margin : float >= 0, default 1.0
        Logit margin of the class-balanced margin residual. (Not named in SAFLEX.md, which leaves
        the margin residual undefined; added so the margin is a knob rather than a constant.)
    clean_weight : float >= 0, default 0.0
        Weight of an extra clean-sample CE term added to the SAFLEX loss.
    ref_ema : float in [0, 1), default 0.0
        Running average of (G, g) across refreshes: summary <- ref_ema * summary + (1 - ref_ema) * new.
        Keeps a summary from small subsampled reference batches less noisy, at the price of staleness;
        0 = replace. The first release had neither this knob nor ``ref_budget`` / ``ref_ramp``; the
        defaults val_batch=512, refresh=auto, ref_ema=0 replace its 512 / 1 (and an interim 32 / 4 / 0.5).
    """

    eps: float = 0.0
    rho: float | None = None
    weights: str = "sigmoid"
    tau: float = 1.0
    normalize: bool = True
    labels: str = "lp"
    label_T: float = 1.0
    val_batch: int = 512
    refresh: int | str = "auto"
    bn_mode: str = "train"
    warmup_epochs: int = 0
    reference: str = "val"
    residual: str = "ce"
    residual_T: float = 2.0
    residual_margin: float = 1.0
    clean_weight: float = 0.0
    ref_ema: float = 0.0
    ref_budget: float = 0.125
    ref_ramp: bool = True

    def __post_init__(self) -> None:
        coerced = {
            "eps": _float("eps", self.eps, 0.0, 1.0, lo_open=False),
            "rho": None if self.rho is None or (isinstance(self.rho, str) and self.rho.strip().lower() in _NONE_STRINGS)
            else _float("rho", self.rho, 0.0, 1.0, lo_open=True),
            "weights": _choice("weights", self.weights, WEIGHTS),
            "tau": _float("tau", self.tau, 0.0, None, lo_open=True),
            "normalize": _bool("normalize", self.normalize),
            "labels": _choice("labels", self.labels, LABELS),
            "label_T": _float("label_T", self.label_T, 0.0, None, lo_open=True),
            "val_batch": _int("val_batch", self.val_batch, 1),
            "refresh": _refresh(self.refresh),
            "bn_mode": _choice("bn_mode", self.bn_mode, BN_MODES),
            "warmup_epochs": _int("warmup_epochs", self.warmup_epochs, 0),
            "reference": _choice("reference", self.reference, REFERENCES),
            "residual": _choice("residual", self.residual, RESIDUALS),
            "residual_T": _float("residual_T", self.residual_T, 0.0, None, lo_open=True),
            "residual_margin": _float("residual_margin", self.residual_margin, 0.0, None, lo_open=False),
            "clean_weight": _float("clean_weight", self.clean_weight, 0.0, None, lo_open=False),
            "ref_ema": _float("ref_ema", self.ref_ema, 0.0, 1.0, lo_open=False),
            "ref_budget": _float("ref_budget", self.ref_budget, 0.0, None, lo_open=True),
            "ref_ramp": _bool("ref_ramp", self.ref_ramp),
        }
        if coerced["ref_ema"] >= 1.0:
            raise ConfigError(f"saflex.ref_ema must be in [0, 1) (got {coerced['ref_ema']:g}; 1 would never update)")
        if coerced["rho"] is not None and coerced["weights"] != "hard":
            raise ConfigError(
                f"saflex.rho (a weight budget) only applies to saflex.weights=hard "
                f"(got rho={coerced['rho']:g} with weights={coerced['weights']!r}; set rho=none)"
            )
        for k, v in coerced.items():
            object.__setattr__(self, k, v)

    # ---- API ---------------------------------------------------------------------------------
    def refresh_period(self, ref_size: int, train_batch: int) -> int:
        """Steps between refreshes of (G, g), for a reference part of ref_size samples and training
        batches of train_batch samples (the period is the ``refresh`` knob itself unless it is "auto")."""
        if self.refresh != "auto":
            return int(self.refresh)
        m = min(self.val_batch, max(int(ref_size), 1))
        return max(1, math.ceil(m / (self.ref_budget * max(int(train_batch), 1))))

    @classmethod
    def knob_names(cls) -> tuple[str, ...]:
        """All knob names, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def _check_names(cls, names) -> dict[str, str]:
        valid = cls.knob_names()
        out = {}
        for raw in names:
            name = raw[len("saflex."):] if isinstance(raw, str) and raw.startswith("saflex.") else raw
            if name not in valid:
                raise ConfigError(f"unknown SAFLEX knob {raw!r} (valid: {', '.join(valid)})")
            out[raw] = name
        return out

    def replace(self, **kw: Any) -> "SaflexConfig":
        """A copy with the given knobs changed (validated and coerced; a ``saflex.`` prefix is accepted)."""
        names = self._check_names(kw)
        d = self.to_dict()
        for raw, name in names.items():
            d[name] = kw[raw]
        return type(self)(**d)

    def to_dict(self) -> dict[str, Any]:
        """Plain-python dict of every knob (JSON-serialisable; rho None -> null)."""
        return {name: getattr(self, name) for name in self.knob_names()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "SaflexConfig":
        """Build from a (possibly partial) mapping; missing knobs take their defaults."""
        d = dict(d or {})
        names = cls._check_names(d)
        return cls(**{names[k]: v for k, v in d.items()})
