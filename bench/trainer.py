"""The training loop: upstream augmentation, optional SAFLEX, optimiser + schedule, per-epoch
validation, checkpoint every epoch, best-epoch model selection, test metrics, cost accounting."""
from __future__ import annotations

import copy
import io
import math
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from bench import store as store_mod
from bench.data import AugmentedTrainSet, normalize, train_loader
from bench.models import Classifier, create_model
from bench.seeding import generator, seeded_global
from bench.spec import RunSpec
from bench.tasks import Splits, Task


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_optimizer(spec: RunSpec, params) -> torch.optim.Optimizer:
    if spec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay, nesterov=spec.momentum > 0)
    cls = torch.optim.AdamW if spec.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=spec.lr, weight_decay=spec.weight_decay)


def build_scheduler(spec: RunSpec, opt: torch.optim.Optimizer):
    if spec.schedule == "multistep":
        milestones = sorted({max(1, round(m * spec.epochs)) for m in spec.milestones})
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=spec.gamma)
    if spec.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=spec.epochs)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step: int = 0
    best_score: float = -math.inf
    best_epoch: int = 0
    best_state: dict | None = None
    history: list = field(default_factory=list)
    cost: dict = field(default_factory=lambda: dict(train_s=0.0, samples=0, steps=0, saflex_s=0.0, wall_s=0.0))


class Trainer:
    def __init__(self, spec: RunSpec, task: Task, splits: Splits, store: store_mod.ResultsStore, *, data_root: Path | None = None,
                 device: str | None = None, workers: int = 0, progress: bool = True, tracker=None,
                 on_epoch_end: Callable[[int, dict], None] | None = None):
        import baselines

        self.spec, self.task, self.splits, self.store = spec, task, splits, store
        self.key = spec.key
        self.run_dir = store.run_dir(self.key)
        self.data_root, self.workers, self.progress = data_root, workers, progress
        self.tracker, self.on_epoch_end = tracker, on_epoch_end
        self.device = pick_device(device)
        self.amp = self.device.type == "cuda"
        self.upstream = baselines.create_method(spec.upstream)
        self.num_classes = task.num_classes
        with seeded_global(spec.seed, "init"):
            self.model: Classifier = create_model(spec.model, task.channels(spec.as_rgb), task.num_classes)
        self.model.to(self.device)
        self.opt = build_optimizer(spec, self.model.parameters())
        self.sched = build_scheduler(spec, self.opt)
        self.trainset = AugmentedTrainSet(splits.train_x, splits.train_y, self.upstream, spec.seed)
        self.state = TrainState()
        self.saflex = SaflexPlugin(self) if spec.uses_saflex else None

    # ---- helpers ---------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        with open(self.run_dir / store_mod.LOG, "a") as f:
            f.write(time.strftime("%Y-%m-%dT%H:%M:%S ") + msg + "\n")
        if self.progress:
            tqdm.write(msg)

    def prepare(self, x_uint8: torch.Tensor) -> torch.Tensor:
        return normalize(x_uint8, self.task.mean, self.task.std)

    def targets(self, y: torch.Tensor) -> torch.Tensor:
        return y.float() if self.task.multi_label else F.one_hot(y, self.num_classes).float()

    def loss_fn(self, logits: torch.Tensor, y_soft: torch.Tensor) -> torch.Tensor:
        if self.task.multi_label:
            return F.binary_cross_entropy_with_logits(logits, y_soft)
        return F.cross_entropy(logits, y_soft)

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp)

    # ---- checkpoint ------------------------------------------------------------------------
    @property
    def ckpt_path(self) -> Path:
        return self.run_dir / store_mod.CHECKPOINT

    def save_checkpoint(self) -> None:
        s = self.state
        payload = dict(model=self.model.state_dict(), opt=self.opt.state_dict(), sched=self.sched.state_dict(),
                       epoch=s.epoch, step=s.step, best_score=s.best_score, best_epoch=s.best_epoch,
                       best_state=s.best_state, history=s.history, cost=s.cost,
                       saflex=self.saflex.sfx.state_dict() if self.saflex else None)
        buf = io.BytesIO()
        torch.save(payload, buf)
        store_mod.write_bytes_atomic(self.ckpt_path, buf.getvalue())

    def maybe_resume(self) -> int:
        if not self.ckpt_path.exists():
            return 0
        ck = torch.load(self.ckpt_path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["opt"])
        self.sched.load_state_dict(ck["sched"])
        self.state = TrainState(epoch=ck["epoch"], step=ck["step"], best_score=ck["best_score"], best_epoch=ck["best_epoch"],
                                best_state=ck["best_state"], history=ck["history"], cost=ck["cost"])
        if self.saflex and ck.get("saflex"):
            self.saflex.sfx.load_state_dict(ck["saflex"], device=self.device)  # a stale (G, g) is part of the state
        return self.state.epoch

    # ---- evaluation ------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, x_uint8: torch.Tensor, batch_size: int = 512) -> tuple[np.ndarray, torch.Tensor]:
        self.model.eval()
        outs = []
        for i in range(0, len(x_uint8), batch_size):
            with self.autocast():
                outs.append(self.model(self.prepare(x_uint8[i : i + batch_size]).to(self.device)).float().cpu())
        logits = torch.cat(outs)
        scores = torch.sigmoid(logits) if self.task.multi_label else torch.softmax(logits, dim=1)
        return scores.numpy(), logits

    def evaluate(self, split: str) -> dict[str, float]:
        x, y = self.splits.split(split)
        scores, logits = self.predict(x)
        out = self.task.evaluate(split, scores, self.data_root)
        out["loss"] = float(self.loss_fn(logits, self.targets(y)))
        return out

    def selection_score(self, val: dict[str, float]) -> float:
        m = self.spec.select_metric
        return math.inf if m == "last" else (-val["loss"] if m == "loss" else val[m])

    # ---- training --------------------------------------------------------------------------
    def step(self, x: torch.Tensor, y_soft: torch.Tensor, clean: torch.Tensor, y: torch.Tensor,
             corrupted: torch.Tensor | None, epoch: int, b: int, saflex: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step on an augmented batch; returns (detached loss, detached logits)."""
        x = x.to(self.device, non_blocking=True)
        n = len(x)
        sfx = self.saflex if saflex else None
        if sfx:
            # the reference forward runs before the training forward: in train-mode BN it would
            # otherwise rewrite running stats that the training graph saved for backward
            sfx.refresh_if_due(clean, y, epoch, b)
            x_clean = sfx.clean_inputs(clean)
            if x_clean is not None:  # one forward for both, for the same reason
                x = torch.cat([x, x_clean.to(self.device)])
        with self.autocast():
            h = self.model.features(x)
            logits = self.model.head(h)
        if sfx:
            loss = sfx.loss(h[:n], logits[:n], y_soft, logits[n:], y, corrupted)
        else:
            loss = self.loss_fn(logits.float(), y_soft)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach(), logits[:n].detach()

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        self.model.train()
        s, spec = self.state, self.spec
        tot_loss = tot_correct = n_seen = 0
        t0 = time.perf_counter()
        if self.saflex:
            self.saflex.start_epoch(epoch)
        for b, (aug, clean, y) in enumerate(train_loader(self.trainset, spec.batch_size, epoch, self.workers)):
            out = self.upstream.batch_transform(self.prepare(aug), self.targets(y), generator(spec.seed, "batch", epoch, b))
            y_soft = out.y.to(self.device, non_blocking=True)
            loss, logits = self.step(out.x, y_soft, clean, y, out.corrupted, epoch, b,
                                     saflex=bool(self.saflex and self.saflex.active(epoch)))
            s.step += 1
            n = len(y_soft)
            tot_loss += float(loss) * n
            if not self.task.multi_label:
                tot_correct += int((logits.argmax(1) == y_soft.argmax(1)).sum())
            n_seen += n
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        train_s = time.perf_counter() - t0
        s.cost["train_s"] += train_s
        s.cost["samples"] += n_seen
        s.cost["steps"] += b + 1
        row = dict(epoch=epoch + 1, train_loss=tot_loss / max(n_seen, 1), lr=self.opt.param_groups[0]["lr"],
                   epoch_s=train_s, samples_per_s=n_seen / max(train_s, 1e-9))
        if not self.task.multi_label:
            row["train_acc"] = tot_correct / max(n_seen, 1)
        if self.saflex:
            row.update(self.saflex.end_epoch(epoch, last=epoch + 1 == spec.epochs))
        return row

    def fit(self) -> dict[str, Any]:
        start = self.maybe_resume()
        spec, s = self.spec, self.state
        if start:
            self.log(f"resumed from checkpoint after epoch {start}/{spec.epochs}")
            self.store.write_metrics(self.key, s.history)
        wall0 = time.perf_counter()
        bar = tqdm(range(start, spec.epochs), initial=start, total=spec.epochs, desc=f"{spec.task} {spec.method} s{spec.seed}",
                   disable=not self.progress, leave=False)
        for epoch in bar:
            row = self.train_epoch(epoch)
            val = self.evaluate("val")
            row.update(val_acc=val["acc"], val_auc=val["auc"], val_loss=val["loss"])
            score = self.selection_score(val)
            if score >= s.best_score or s.best_state is None:
                s.best_score, s.best_epoch = score, epoch + 1
                s.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in self.model.state_dict().items()})
            self.sched.step()
            s.epoch = epoch + 1
            s.history.append(row)
            s.cost["wall_s"] += time.perf_counter() - wall0
            wall0 = time.perf_counter()
            self.save_checkpoint()  # checkpoint before the metrics row: a resumed run rewrites metrics from it
            self.store.write_metrics(self.key, s.history)
            if self.tracker is not None:
                self.tracker.log_epoch(row, step=epoch + 1)
            bar.set_postfix(loss=f"{row['train_loss']:.3f}", val_acc=f"{val['acc']:.3f}")
            self.log(f"epoch {epoch + 1}/{spec.epochs} loss {row['train_loss']:.4f} val_acc {val['acc']:.4f} "
                     f"val_auc {val['auc']:.4f} ({row['epoch_s']:.1f}s)")
            if self.on_epoch_end is not None:
                self.on_epoch_end(epoch + 1, row)
        bar.close()
        return self.finish()

    def finish(self) -> dict[str, Any]:
        s = self.state
        self.model.load_state_dict(s.best_state)
        val, test = self.evaluate("val"), self.evaluate("test")
        c = s.cost
        epochs_run = len(s.history)
        metrics = dict(test_acc=test["acc"], test_auc=test["auc"], test_loss=test["loss"], val_acc=val["acc"],
                       val_auc=val["auc"], best_epoch=s.best_epoch, epochs_run=epochs_run,
                       last_val_acc=s.history[-1]["val_acc"] if s.history else float("nan"))
        cost = dict(wall_s=c["wall_s"], epoch_s=c["train_s"] / max(epochs_run, 1), samples_per_s=c["samples"] / max(c["train_s"], 1e-9),
                    step_s=c["train_s"] / max(c["steps"], 1), saflex_s=c["saflex_s"], peak_mem_mb=peak_memory_mb(self.device))
        return dict(metrics=metrics, cost=cost)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


from bench.saflex_plugin import SaflexPlugin  # noqa: E402
