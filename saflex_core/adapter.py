"""A drop-in adapter for any training loop whose model is ``features -> linear head``.

Typical use (see saflex_core/__init__.py)::

    sx = Saflex(cfg)
    for step, (x, y) in enumerate(loader):
        x_aug, y_aug = upstream(x, y)
        if sx.active(epoch):
            if sx.needs_refresh(step):
                idx = sample_val_indices(len(val_x), cfg.val_batch, gen)
                with torch.no_grad(), bn_mode_context(model, cfg.bn_mode):
                    hv = model.features(val_x[idx]); zv = model.head(hv)
                sx.refresh(hv, zv, val_y[idx])
            h = model.features(x_aug); z = model.head(h)
            loss, w, q, stats = sx.loss(z, y_aug, h)
        else:
            loss = weighted_soft_cross_entropy(model.head(model.features(x_aug)), y_aug)
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from .config import BN_MODES, ConfigError, SaflexConfig
from .core import (
    ValSummary,
    as_probs,
    reweight_stats,
    sample_scores,
    solve_weights_labels,
    validation_summary,
    weighted_soft_cross_entropy,
)

__all__ = ["Saflex", "bn_mode_context", "sample_val_indices"]


def sample_val_indices(m: int, val_batch: int, generator: torch.Generator | None = None) -> torch.Tensor | None:
    """Indices of the reference batch: None (use the whole split) if m <= val_batch, else a fresh
    random subset of val_batch indices drawn with ``generator`` (CPU LongTensor, sorted)."""
    if m <= val_batch:
        return None
    return torch.randperm(m, generator=generator)[:val_batch].sort().values


@contextlib.contextmanager
def bn_mode_context(model: nn.Module, mode: str) -> Iterator[nn.Module]:
    """BatchNorm behaviour for the reference (validation) forward pass.

    bn_mode_context(model, mode: "train" | "eval") -> context manager yielding ``model``.

    - "train": the model is put in train mode, so BatchNorm normalises with the reference batch's
      own statistics, but the running statistics (running_mean, running_var, num_batches_tracked)
      are restored on exit and are bit-identical to before.
    - "eval": ``model.eval()`` (running statistics; dropout off).
    On exit every module's original ``training`` flag is restored.
    """
    if mode not in BN_MODES:
        raise ConfigError(f"saflex.bn_mode must be one of {', '.join(BN_MODES)} (got {mode!r})")
    flags = [(mod, mod.training) for mod in model.modules()]
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        if mode == "eval":
            model.eval()
        else:
            for mod in model.modules():
                if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                    for name in ("running_mean", "running_var", "num_batches_tracked"):
                        buf = getattr(mod, name, None)
                        if buf is not None:
                            saved.append((buf, buf.detach().clone()))
            model.train()
        yield model
    finally:
        with torch.no_grad():
            for buf, copy in saved:
                buf.copy_(copy)
        for mod, flag in flags:
            mod.training = flag


class Saflex:
    """SAFLEX state for one training run: the reference summary (G, g) and the per-batch solve.

    Saflex(cfg: SaflexConfig | None = None, bias: bool = True)
      .cfg, .summary (ValSummary | None)
      .active(epoch: int) -> bool                    epoch >= cfg.warmup_epochs (epochs count from 0)
      .needs_refresh(step: int) -> bool              no summary yet, or step % period == 0; with
                                                     refresh="auto" and ref_ramp, the gap since the last
                                                     refresh doubles from 1 up to the period (a True
                                                     answer means the caller refreshes at this step)
      .period -> int                                 cfg.refresh_period(reference batch, training batch):
                                                     refresh="auto" reads both sizes from the first
                                                     refresh and the first reweight
      .refresh(h_ref [m,d], logits_ref [m,C], y_ref [m,C] | [m]) -> ValSummary
      .scores(h [n,d]) -> u [n,C]
      .reweight(h [n,d], logits [n,C], y [n,C] | [n]) -> (w [n], q [n,C], stats: dict[str, float])
      .loss(logits [n,C], y, h [n,d], clean_logits=None, clean_y=None) -> (loss, w, q, stats)
      .state_dict() -> dict ; .load_state_dict(d)

    ``bias=False`` for heads without a bias (g = 0). stats: w_mean, w_zero_frac, label_shift
    (mean |q - y|_1 / 2), argmax_change (fraction with argmax q != argmax y).
    """

    def __init__(self, cfg: SaflexConfig | None = None, bias: bool = True) -> None:
        self.cfg = cfg if cfg is not None else SaflexConfig()
        self.bias = bias
        self.summary: ValSummary | None = None
        self.sizes: dict[str, int] = {}  # reference and training batch sizes seen, for refresh="auto"
        self.last_refresh: int | None = None  # step of the last refresh (ref_ramp's schedule)

    def active(self, epoch: int) -> bool:
        return epoch >= self.cfg.warmup_epochs

    @property
    def period(self) -> int:
        if self.cfg.refresh != "auto":
            return int(self.cfg.refresh)
        if "ref" not in self.sizes or "train" not in self.sizes:
            return 1  # sizes not seen yet: refresh until they are
        return self.cfg.refresh_period(self.sizes["ref"], self.sizes["train"])

    def needs_refresh(self, step: int) -> bool:
        c = self.cfg
        if c.refresh == "auto" and c.ref_ramp:
            last = self.last_refresh
            due = self.summary is None or last is None or step - last >= min(self.period, max(1, last))
        else:
            due = self.summary is None or step % self.period == 0
        if due:
            self.last_refresh = step
        return due

    @torch.no_grad()
    def refresh(self, h_ref: torch.Tensor, logits_ref: torch.Tensor, y_ref: torch.Tensor) -> ValSummary:
        c = self.cfg
        self.sizes.setdefault("ref", len(h_ref))
        new = validation_summary(
            h_ref, logits_ref, y_ref, residual=c.residual, T=c.residual_T, margin=c.residual_margin, bias=self.bias
        )
        if c.ref_ema > 0 and self.summary is not None:  # both are means over their batch: averaging is exact
            a = c.ref_ema
            new = ValSummary(a * self.summary.G + (1 - a) * new.G, a * self.summary.g + (1 - a) * new.g)
        self.summary = new
        return self.summary

    @torch.no_grad()
    def scores(self, h: torch.Tensor) -> torch.Tensor:
        if self.summary is None:
            raise RuntimeError("Saflex.refresh(h_ref, logits_ref, y_ref) must be called before reweight/scores")
        return sample_scores(self.summary, h)

    @torch.no_grad()
    def reweight(self, h: torch.Tensor, logits: torch.Tensor, y: torch.Tensor):
        self.sizes.setdefault("train", len(h))
        u = self.scores(h)
        p = torch.softmax(logits.detach().to(u.dtype), dim=1)
        w, q = solve_weights_labels(p, y, u, self.cfg)
        stats = reweight_stats(w, q, as_probs(y, q.shape[1], q.dtype))
        return w, q, stats

    def loss(
        self,
        logits: torch.Tensor,
        y: torch.Tensor,
        h: torch.Tensor,
        clean_logits: torch.Tensor | None = None,
        clean_y: torch.Tensor | None = None,
    ):
        """SAFLEX loss (1/n) sum_i w_i CE_soft(z_i, q_i) [+ clean_weight * mean CE_soft(clean_logits, clean_y)].

        The clean term is added only when cfg.clean_weight > 0 and clean_logits/clean_y are given.
        """
        w, q, stats = self.reweight(h, logits, y)
        loss = weighted_soft_cross_entropy(logits, q, w)
        if self.cfg.clean_weight > 0 and clean_logits is not None and clean_y is not None:
            loss = loss + self.cfg.clean_weight * weighted_soft_cross_entropy(clean_logits, clean_y)
        return loss, w, q, stats

    def state_dict(self) -> dict:
        return {
            "cfg": self.cfg.to_dict(),
            "bias": self.bias,
            "sizes": dict(self.sizes),
            "last_refresh": self.last_refresh,
            "G": None if self.summary is None else self.summary.G.detach().cpu(),
            "g": None if self.summary is None else self.summary.g.detach().cpu(),
        }

    def load_state_dict(self, d: dict, device: torch.device | str | None = None) -> None:
        self.cfg = SaflexConfig.from_dict(d["cfg"])
        self.bias = bool(d.get("bias", True))
        self.sizes = dict(d.get("sizes") or {})
        self.last_refresh = d.get("last_refresh")
        if d.get("G") is None:
            self.summary = None
        else:
            self.summary = ValSummary(d["G"].to(device) if device else d["G"], d["g"].to(device) if device else d["g"])
