"""`saflex`: SAFLEX (Ding et al., ICLR 2024) as a learner, built on saflex_core.

Each step: refresh the reference summary (G, g) from a forward over the reference part when due
(no gradient, BatchNorm running statistics left untouched), then the closed form gives a weight w
and a soft label q for every augmented sample, and the loss is the w-weighted soft cross-entropy
against q. The reference forward runs before the training forward: in train-mode BatchNorm it would
otherwise rewrite statistics that the training graph saved for backward.
"""
from __future__ import annotations

from typing import Any, Mapping

from bench.errors import UsageError
from bench.learners.base import Learner, StepBatch, register_learner


@register_learner("saflex")
class SaflexLearner(Learner):
    uses_reference = True
    uses_task_adapter = True  # a task whose head is not linear-with-bias (CLIP prompts) supplies its own Saflex
    description = "SAFLEX: per-sample weights and soft labels from the reference gradient (saflex_core)"
    # 1: the first release up to the unramped refresh="auto" rule; 2 (2c29764): refresh="auto" ramps up
    # (ref_ramp, default on). Only the ramped auto runs changed, so only their keys carry the 2.
    semantics = 2

    @classmethod
    def semantics_for(cls, knobs: Mapping[str, Any] | None) -> int:
        k = knobs or {}
        return 2 if k.get("refresh") == "auto" and k.get("ref_ramp", True) else 1

    @classmethod
    def parse_knobs(cls, knobs: Mapping[str, Any] | None) -> dict[str, Any]:
        import saflex_core

        try:
            return saflex_core.SaflexConfig().replace(**dict(knobs or {})).to_dict()
        except saflex_core.ConfigError as e:
            raise UsageError(f"saflex knobs: {e}") from None

    @classmethod
    def check(cls, task, upstream) -> None:
        if task.multi_label:
            raise UsageError(f"SAFLEX needs single-label classification; task {task.name} is {task.task_type}")

    def __init__(self, ctx, knobs=None):
        import saflex_core

        super().__init__(ctx, None)
        self.core = saflex_core
        self.cfg = saflex_core.SaflexConfig.from_dict(dict(knobs or {}))  # validated at spec time
        adapter = getattr(ctx.task, "saflex_adapter", None)
        self.sfx = adapter(self.cfg) if adapter is not None else saflex_core.Saflex(self.cfg)
        ref = ctx.reference
        if ref is None and self.cfg.reference != "clean":
            raise ValueError("the saflex learner needs a reference split")
        self.ref_x = ctx.task.prepare(ref.x) if ref is not None else None
        self.ref_y = ctx.task.targets(ref.y) if ref is not None else None
        self.start_epoch(0)

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.n = 0
        self.sums = dict(w_mean=0.0, w_zero_frac=0.0, label_shift=0.0, argmax_change=0.0)
        self.w, self.shift, self.corrupted = [], [], []
        self.label_moves = dict(recovered=0, flipped=0, clean_moved=0, clean=0)
        self.seconds_at_start = self.ctx.seconds["learner_s"]

    def active(self, epoch: int) -> bool:
        return epoch >= self.cfg.warmup_epochs

    # ---- the reference summary ---------------------------------------------------------------
    def reference_batch(self, batch: StepBatch):
        task = self.ctx.task
        if self.cfg.reference == "clean":
            return batch.clean, task.targets(batch.y)
        n = len(self.ref_x)
        if n <= self.cfg.val_batch:  # the whole part at every refresh: copied to the device once, not per refresh
            if getattr(self, "_ref_on_device", None) is None:
                self._ref_on_device = (self.ref_x.to(self.ctx.device), self.ref_y.to(self.ctx.device))
            return self._ref_on_device
        import torch

        idx = torch.randperm(n, generator=self.ctx.generator("saflex", batch.epoch, batch.index))[: self.cfg.val_batch]
        return self.ref_x[idx], self.ref_y[idx]

    def refresh_if_due(self, batch: StepBatch) -> None:
        import torch

        ctx = self.ctx
        if not self.sfx.needs_refresh(batch.step):
            return
        xr, yr = self.reference_batch(batch)
        with torch.no_grad(), self.core.bn_mode_context(ctx.model, self.cfg.bn_mode), ctx.autocast():
            hr = ctx.model.features(xr.to(ctx.device))
            lr = ctx.model.head(hr)
        self.sfx.refresh(hr.float(), lr.float(), yr.to(ctx.device))

    # ---- the step ------------------------------------------------------------------------------
    def loss(self, batch: StepBatch):
        import torch

        if not self.active(batch.epoch):
            return super().loss(batch)
        ctx, task = self.ctx, self.ctx.task
        with ctx.timed():
            self.refresh_if_due(batch)
        x, n = batch.x, len(batch.x)
        if self.cfg.clean_weight > 0:  # one forward for both, for the BatchNorm reason above
            x = torch.cat([x, batch.clean.to(ctx.device)])
        with ctx.autocast():
            h = ctx.model.features(x)
            logits = ctx.model.head(h)
        clean_logits = clean_y = None
        if self.cfg.clean_weight > 0:
            clean_logits, clean_y = logits[n:].float(), task.targets(batch.y).to(ctx.device)
        with ctx.timed():  # the closed form and the loss; the backward is the trainer's
            loss, w, q, stats = self.sfx.loss(logits[:n].float(), batch.y_soft, h[:n].detach().float(),
                                              clean_logits, clean_y)
        for k in self.sums:
            self.sums[k] += stats[k] * n
        self.n += n
        self.w.append(w.detach().cpu())
        self.shift.append(((q - batch.y_soft).abs().sum(1) / 2).detach().cpu())
        self.corrupted.append(batch.corrupted.cpu() if batch.corrupted is not None else torch.zeros(n, dtype=torch.bool))
        if batch.corrupted is not None and batch.y.ndim == 1:
            self.count_label_moves(q, batch)
        self.last_w, self.last_q = w.detach(), q.detach()
        return loss, logits[:n].detach().float()

    def count_label_moves(self, q, batch: StepBatch) -> None:
        """Label recovery on noisy upstreams: flipped samples whose argmax(q) is their true class
        again, against clean samples whose argmax(q) left their label."""
        flipped = batch.corrupted.to(q.device)
        top = q.argmax(1)
        true = batch.y.to(q.device)
        given = batch.y_soft.argmax(1)
        m = self.label_moves
        m["recovered"] += int((top[flipped] == true[flipped]).sum())
        m["flipped"] += int(flipped.sum())
        m["clean_moved"] += int((top[~flipped] != given[~flipped]).sum())
        m["clean"] += int((~flipped).sum())

    def end_epoch(self, epoch: int, last: bool) -> dict[str, float]:
        import numpy as np
        import torch

        row: dict[str, float] = {"saflex_s": self.ctx.seconds["learner_s"] - self.seconds_at_start,
                                 "saflex_refresh": float(self.sfx.period)}  # steps between refreshes, as resolved
        if not self.n:
            return row
        row.update({f"saflex_{k}": v / self.n for k, v in self.sums.items()})
        m = self.label_moves
        if m["flipped"] and m["clean"]:
            row["saflex_recovered_frac"] = m["recovered"] / m["flipped"]
            row["saflex_clean_moved_frac"] = m["clean_moved"] / m["clean"]
        w = torch.cat(self.w).numpy()
        corrupted = torch.cat(self.corrupted).numpy()
        if corrupted.any() and not corrupted.all():
            from sklearn.metrics import roc_auc_score

            row["saflex_w_auc"] = float(roc_auc_score(corrupted, -w))
        if last:
            from bench.store import SAFLEX_DIAG, write_npz_atomic

            shift = torch.cat(self.shift).numpy()
            write_npz_atomic(self.ctx.run_dir / SAFLEX_DIAG, w=w.astype(np.float32),
                             label_shift=shift.astype(np.float32), corrupted=corrupted)
        return row

    def state_dict(self) -> dict:
        return self.sfx.state_dict()  # a stale (G, g) is part of the state: resume replays it

    def load_state_dict(self, state) -> None:
        if state:
            self.sfx.load_state_dict(dict(state), device=self.ctx.device)
