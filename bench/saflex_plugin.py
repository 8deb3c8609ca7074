"""SAFLEX inside the trainer: the reference forward (refreshed every k steps), the closed-form
(w, q) for each augmented batch, the weighted soft loss, and per-epoch diagnostics."""
from __future__ import annotations

import time

import numpy as np
import torch

from bench import store as store_mod
from bench.seeding import generator


class SaflexPlugin:
    def __init__(self, trainer):
        import saflex_core

        self.core = saflex_core
        self.t = trainer
        self.cfg = saflex_core.SaflexConfig.from_dict(trainer.spec.saflex or {})
        self.sfx = saflex_core.Saflex(self.cfg)
        # the validation split SAFLEX uses is the one model selection uses (tasks have no third split)
        self.val_x = trainer.prepare(trainer.splits.val_x)
        self.val_y = trainer.targets(trainer.splits.val_y)
        self.start_epoch(0)

    def active(self, epoch: int) -> bool:
        return epoch >= self.cfg.warmup_epochs

    def start_epoch(self, epoch: int) -> None:
        self.seconds = 0.0
        self.n = 0
        self.sums = dict(w_mean=0.0, w_zero_frac=0.0, label_shift=0.0, argmax_change=0.0)
        self.w, self.shift, self.corrupted = [], [], []

    def reference(self, clean: torch.Tensor, y: torch.Tensor, epoch: int, b: int):
        if self.cfg.reference == "clean":
            return self.t.prepare(clean), self.t.targets(y)
        n = len(self.val_x)
        if n <= self.cfg.val_batch:
            return self.val_x, self.val_y
        idx = torch.randperm(n, generator=generator(self.t.spec.seed, "saflex", epoch, b))[: self.cfg.val_batch]
        return self.val_x[idx], self.val_y[idx]

    def refresh_if_due(self, clean: torch.Tensor, y: torch.Tensor, epoch: int, b: int) -> None:
        t, dev = self.t, self.t.device
        t0 = time.perf_counter()
        if self.sfx.needs_refresh(t.state.step):
            xr, yr = self.reference(clean, y, epoch, b)
            with torch.no_grad(), self.core.bn_mode_context(t.model, self.cfg.bn_mode), t.autocast():
                hr = t.model.features(xr.to(dev))
                lr = t.model.head(hr)
            self.sfx.refresh(hr.float(), lr.float(), yr.to(dev))
        self.seconds += time.perf_counter() - t0

    def clean_inputs(self, clean: torch.Tensor) -> torch.Tensor | None:
        return self.t.prepare(clean) if self.cfg.clean_weight > 0 else None

    def loss(self, h, logits, y_soft, clean_logits, y, corrupted) -> torch.Tensor:
        t = self.t
        t0 = time.perf_counter()
        w, q, stats = self.sfx.reweight(h.detach().float(), logits.detach().float(), y_soft)
        if t.device.type == "cuda":
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - t0
        loss = self.core.weighted_soft_cross_entropy(logits.float(), q, w)
        if self.cfg.clean_weight > 0:
            loss = loss + self.cfg.clean_weight * t.loss_fn(clean_logits.float(), t.targets(y).to(t.device))
        n = len(w)
        for k in self.sums:
            self.sums[k] += stats[k] * n
        self.n += n
        self.w.append(w.detach().cpu())
        self.shift.append(((q - y_soft).abs().sum(1) / 2).detach().cpu())
        self.corrupted.append(corrupted.cpu() if corrupted is not None else torch.zeros(n, dtype=torch.bool))
        return loss

    def end_epoch(self, epoch: int, last: bool) -> dict:
        self.t.state.cost["saflex_s"] += self.seconds
        if not self.n:
            return {"saflex_s": self.seconds}
        row = {f"saflex_{k}": v / self.n for k, v in self.sums.items()}
        row["saflex_s"] = self.seconds
        w = torch.cat(self.w).numpy()
        corrupted = torch.cat(self.corrupted).numpy()
        if corrupted.any() and not corrupted.all():
            from sklearn.metrics import roc_auc_score

            row["saflex_w_auc"] = float(roc_auc_score(corrupted, -w))
        if last:
            shift = torch.cat(self.shift).numpy()
            buf_path = self.t.run_dir / store_mod.SAFLEX_DIAG
            tmp = buf_path.with_suffix(".tmp.npz")
            np.savez(tmp, w=w.astype(np.float32), label_shift=shift.astype(np.float32), corrupted=corrupted)
            tmp.replace(buf_path)
        return row
