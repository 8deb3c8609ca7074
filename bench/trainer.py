"""The training loop: upstream augmentation, the run's learner, optimiser + schedule, per-epoch
evaluation on the selection split, checkpoint every epoch, best-epoch model selection, test metrics
at the end, cost accounting. It names no learner and no modality: the task prepares inputs, builds
the model and scores it; the learner turns an augmented batch into a loss."""
from __future__ import annotations

import copy
import functools
import io
import math
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from bench import store as store_mod
from bench.data import AugmentedTrainSet, train_loader, use_batched_path, use_device_resident
from bench.learners.base import LearnerContext, StepBatch, get_learner_class
from bench.seeding import generator, seeded_global
from bench.spec import RunSpec
from bench.tasks.base import Split, Task, TaskData


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
    cost: dict = field(default_factory=lambda: dict(train_s=0.0, samples=0, steps=0, learner_s=0.0, wall_s=0.0,
                                                    **{k: 0.0 for k in PHASES}))


# where an epoch's wall time goes (seconds, per epoch in metrics.jsonl, totals in result.json `cost`):
# waiting for augmented batches, the model's forward/backward/optimiser step (the learner's own extra
# work excluded: that is learner_s), validation, checkpoint + metrics writing
PHASES = ("data_s", "compute_s", "val_s", "ckpt_s")
# the per-epoch fields that are wall-clock measurements: a resumed or repeated run reproduces every
# other field of metrics.jsonl exactly, never these
TIMING_KEYS = frozenset({"epoch_s", "samples_per_s", "learner_s", "saflex_s", *PHASES})


class Trainer:
    def __init__(self, spec: RunSpec, task: Task, data: TaskData, store: store_mod.ResultsStore, *,
                 device: str | None = None, workers: int = 0, aug_path: str = "auto", progress: bool = True, tracker=None,
                 on_epoch_end: Callable[[int, dict], None] | None = None, echo: bool | None = None,
                 data_on_device: str = "off"):
        import baselines

        self.spec, self.task, self.data, self.store = spec, task, data, store
        self.key = spec.key
        self.run_dir = store.run_dir(self.key)
        self.workers, self.progress = workers, progress  # progress: bars (only on a terminal)
        self.echo = progress if echo is None else echo  # echo: per-epoch lines on stdout
        self.saved_epoch = 0  # epochs in the checkpoint on disk (what a re-run resumes from)
        self.warnings: list[str] = []  # flags for the result record (reports can show them)
        self.tracker, self.on_epoch_end = tracker, on_epoch_end
        self.device = pick_device(device)
        self.amp = self.device.type == "cuda"
        self.upstream = baselines.create_method(spec.upstream)
        with seeded_global(spec.seed, "init"):
            self.model = task.build_model(spec)
        self.model.to(self.device)
        learner_cls = get_learner_class(spec.learner)
        self.ctx = LearnerContext(spec=spec, task=task, model=self.model, device=self.device,
                                  reference=self.reference_for(learner_cls, data), run_dir=self.run_dir,
                                  autocast=self.autocast, generator=functools.partial(generator, spec.seed))
        with seeded_global(spec.seed, "learner-init"):
            self.learner = learner_cls(self.ctx, spec.knobs)
        self.opt = build_optimizer(spec, [*self.model.parameters(), *self.learner.extra_parameters()])
        self.sched = build_scheduler(spec, self.opt)
        train = self.learner.train_split(data)
        self.upstream = self.upstream.bind(train.x, train.y)
        # data_on_device: an execution setting like aug_path (same batches either way, never in the key)
        on_device, self.data_path_fallback = use_device_resident(self.upstream, train.x, train.y, self.device,
                                                                 data_on_device, aug_path)
        self.trainset = AugmentedTrainSet(train.x, train.y, self.upstream, spec.seed,
                                          batched=use_batched_path(self.upstream, aug_path),
                                          device=self.device if on_device else None)
        self.data_path = "device" if on_device else "loader"  # what ran: recorded in result.json's cost
        self.state = TrainState()
        self._last_ckpt_at: float | None = None  # perf_counter when the last checkpoint was written
        self._last_ckpt_cost = 0.0

    @staticmethod
    def reference_for(learner_cls, data: TaskData) -> Split | None:
        """The labelled data a learner may train on: the carved reference part; without one (ref_frac
        unset) the selection split, as the first study did. Never a test split."""
        if not learner_cls.uses_reference:
            return None
        return data.reference if data.reference is not None else data.select

    @property
    def aug_path_ran(self) -> str:
        """How the per-sample stage was applied: batched, per-image, or none (no per-sample stage)."""
        ts = self.trainset
        return "none" if not ts.per_sample else ("batched" if ts.batched else "per-image")

    # ---- helpers ---------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        with open(self.run_dir / store_mod.LOG, "a") as f:
            f.write(time.strftime("%Y-%m-%dT%H:%M:%S ") + msg + "\n")
        if self.echo:
            tqdm.write(msg)

    def warn(self, code: str | None, msg: str) -> None:
        """A one-line warning: run.log and stderr, always; `code` also goes into the result record."""
        with open(self.run_dir / store_mod.LOG, "a") as f:
            f.write(time.strftime("%Y-%m-%dT%H:%M:%S ") + "warning: " + msg + "\n")
        tqdm.write(f"saflex-bench: warning: {msg}", file=sys.stderr)
        if code and code not in self.warnings:
            self.warnings.append(code)

    def check_batchnorm_steps(self, min_steps: int = 100) -> None:
        """BatchNorm's running statistics (used at evaluation) need steps to settle: with few optimiser
        steps a model can score near chance on validation though it learned. Say so and flag the run."""
        if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in self.model.modules()):
            return
        steps = self.spec.epochs * math.ceil(len(self.trainset) / self.spec.batch_size)
        if steps < min_steps:
            self.warn("batchnorm_few_steps",
                      f"run {self.key}: the model has BatchNorm and the run makes only {steps} optimiser steps "
                      f"(< {min_steps}); its running statistics may be unsettled and val/test scores misleadingly low")

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp)

    # ---- checkpoint ------------------------------------------------------------------------
    @property
    def ckpt_path(self) -> Path:
        return self.run_dir / store_mod.CHECKPOINT

    @property
    def prev_ckpt_path(self) -> Path:  # the last good checkpoint until the new one is complete
        return self.run_dir / "checkpoint.prev.pt"

    # Checkpoint cadence: at an epoch's end once the time since the last checkpoint is at least
    # CKPT_COST_FACTOR times what the last one cost (so checkpoints take <= 1/CKPT_COST_FACTOR of the
    # run: every epoch on a CPU, where an epoch takes seconds to minutes, every few epochs on a GPU
    # where a ResNet-18 epoch takes seconds and its checkpoint ~0.5 s), at least every CKPT_EVERY_S, and
    # always after the last epoch. A preempted run loses at most that much work; resume stays exact
    # (a checkpoint is always an epoch boundary).
    CKPT_COST_FACTOR = 20.0
    CKPT_EVERY_S = 600.0

    def checkpoint_due(self, last: bool = False) -> bool:
        if last or self._last_ckpt_at is None or self.saved_epoch == 0:
            return True
        since = time.perf_counter() - self._last_ckpt_at
        return since >= min(self.CKPT_EVERY_S, self.CKPT_COST_FACTOR * self._last_ckpt_cost)

    def save_checkpoint(self) -> None:
        t0 = time.perf_counter()
        self._save_checkpoint()
        self._last_ckpt_at = time.perf_counter()
        self._last_ckpt_cost = self._last_ckpt_at - t0

    def _save_checkpoint(self) -> None:
        s = self.state
        payload = dict(model=self.model.state_dict(), opt=self.opt.state_dict(), sched=self.sched.state_dict(),
                       epoch=s.epoch, step=s.step, best_score=s.best_score, best_epoch=s.best_epoch,
                       best_state=s.best_state, history=s.history, cost=s.cost, learner=self.learner.state_dict(),
                       identity=self.identity())
        buf = io.BytesIO()
        torch.save(payload, buf)
        # fsync only where the file system is shared (NFS, Lustre...): on a local disk a crash before the
        # page cache is written leaves a torn file that load_checkpoint sets aside for the previous one
        store_mod.write_bytes_atomic(self.ckpt_path, buf.getvalue(), keep_previous=self.prev_ckpt_path,
                                     durable=store_mod.is_shared_fs(self.run_dir))
        self.saved_epoch = s.epoch

    def prune_checkpoints(self, keep: str) -> None:
        """After result.json: `full` keeps the resumable checkpoint; `best` keeps only the selected
        epoch's weights (best.pt, a fraction of a checkpoint with optimiser state); `none` keeps nothing."""
        if keep == "full":
            return
        if keep == "best" and self.state.best_state is not None:
            buf = io.BytesIO()
            torch.save(self.state.best_state, buf)
            store_mod.write_bytes_atomic(self.run_dir / store_mod.BEST, buf.getvalue())
        for path in (self.ckpt_path, self.prev_ckpt_path):
            path.unlink(missing_ok=True)

    def identity(self) -> dict[str, Any]:
        """What a checkpoint belongs to: the run key, the learner's semantics version(s) and the code
        version (recorded; a version change alone does not make a checkpoint foreign)."""
        from bench import __version__

        return {"key": self.key, "semantics": dict(getattr(self.spec, "semantics", None) or {}),
                "method": self.spec.method, "code_version": __version__}

    def foreign(self, ck: dict) -> str | None:
        """Why a readable checkpoint is not this run's (another model's state under this folder, another
        learner semantics), or None. Checkpoints written before identities existed are judged by their
        model tensors' names and shapes alone."""
        ident = ck.get("identity")
        if isinstance(ident, dict):
            mine = self.identity()
            for field_ in ("key", "semantics"):
                if ident.get(field_, {} if field_ == "semantics" else None) != mine[field_]:
                    return f"it is for {field_} {ident.get(field_)!r}, this run has {mine[field_]!r}"
        want = self.model.state_dict()
        got = ck["model"]
        if not isinstance(got, dict) or set(got) != set(want):
            return "its model has other layers than this run's model"
        for name, tensor in want.items():
            if tuple(getattr(got[name], "shape", ())) != tuple(tensor.shape):
                return f"its {name} has shape {tuple(got[name].shape)}, this run's model {tuple(tensor.shape)}"
        return None

    def _set_aside(self, path: Path, tag: str, code: str, why: str, then: str) -> None:
        aside = path.with_name(f"{path.name}.{tag}-{time.strftime('%Y%m%dT%H%M%S')}")
        os.replace(path, aside)
        self.warn(code, f"run {self.key}: {path.name} {why}; moved to {aside.name}; {then}")

    def load_checkpoint(self) -> dict | None:
        """The newest usable checkpoint (checkpoint.pt, else checkpoint.prev.pt), or None. An unreadable
        file (truncated copy, full disk) is moved aside as `<name>.corrupt-<time>`, another run's or
        model's as `<name>.foreign-<time>`, each with a one-line warning."""
        then = "falling back to the previous checkpoint, else starting over"
        for path in (self.ckpt_path, self.prev_ckpt_path):
            if not path.exists():
                continue
            try:
                ck = torch.load(path, map_location=self.device, weights_only=False)
                ck["epoch"], ck["model"]  # noqa: B018 - a dict without them is not a checkpoint either
            except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, EOFError, UnpicklingError...
                why = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
                self._set_aside(path, "corrupt", "corrupt_checkpoint", f"is unreadable ({why})", then)
                continue
            why = self.foreign(ck)
            if why is not None:
                self._set_aside(path, "foreign", "foreign_checkpoint", f"does not belong to this run ({why})", then)
                continue
            return ck
        return None

    def maybe_resume(self) -> int:
        ck = self.load_checkpoint()
        if ck is None:
            return 0
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["opt"])
        self.sched.load_state_dict(ck["sched"])
        cost = dict(ck["cost"])
        cost.setdefault("learner_s", cost.pop("saflex_s", 0.0))  # checkpoints of the first release
        for k in PHASES:
            cost.setdefault(k, 0.0)
        self.state = TrainState(epoch=ck["epoch"], step=ck["step"], best_score=ck["best_score"], best_epoch=ck["best_epoch"],
                                best_state=ck["best_state"], history=ck["history"], cost=cost)
        self.learner.load_state_dict(ck.get("learner", ck.get("saflex")) or {})
        self.saved_epoch = self.state.epoch
        return self.state.epoch

    # ---- evaluation ------------------------------------------------------------------------
    @torch.no_grad()
    def logits(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        self.model.eval()
        outs = []
        for i in range(0, len(x), batch_size):
            outs.append(self.learner.predict(self.task.prepare(x[i : i + batch_size]).to(self.device)).float().cpu())
        return torch.cat(outs)

    def evaluate(self, split: Split) -> dict[str, float]:
        logits = self.logits(split.x)
        out = self.task.metrics(logits, split.y)
        out["loss"] = float(self.task.loss(logits, self.task.targets(split.y)))
        return out

    def selection_score(self, val: dict[str, float]) -> float:
        m = self.spec.select_metric
        return math.inf if m == "last" else (-val["loss"] if m == "loss" else val[m])

    # ---- training --------------------------------------------------------------------------
    def step(self, batch: StepBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step on an augmented batch; returns (detached loss, detached logits)."""
        self.model.train()
        loss, logits = self.learner.loss(batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.learner.after_step(batch)
        return loss.detach(), logits.detach()

    def batches(self, epoch: int):
        """The epoch's augmented batches as StepBatch (the upstream's batch stage applied)."""
        spec, task = self.spec, self.task
        loader = train_loader(self.trainset, spec.batch_size, epoch, self.workers, pin_memory=self.device.type == "cuda")
        for b, (aug, clean, y) in enumerate(loader):
            out = self.upstream.batch_transform(task.prepare(aug), task.targets(y), generator(spec.seed, "batch", epoch, b))
            yield StepBatch(x=out.x.to(self.device, non_blocking=True), y_soft=out.y.to(self.device, non_blocking=True),
                            clean=task.prepare(clean), y=y, corrupted=out.corrupted, epoch=epoch, index=b,
                            step=self.state.step)

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        self.model.train()
        s, spec = self.state, self.spec
        tot_loss = tot_correct = n_seen = n_steps = 0
        t0 = time.perf_counter()
        learner_s0 = self.ctx.seconds["learner_s"]
        self.learner.start_epoch(epoch)
        n_batches = math.ceil(len(self.trainset) / spec.batch_size)
        bar = tqdm(self.batches(epoch), total=n_batches, desc=f"epoch {epoch + 1}/{spec.epochs}", leave=False,
                   disable=(not self.progress) or None)  # None: off when stderr is not a terminal
        data_s = step_s = 0.0
        t_fetch = time.perf_counter()
        for batch in bar:
            t_step = time.perf_counter()
            data_s += t_step - t_fetch
            store_mod.fault_point("step")
            loss, logits = self.step(batch)
            s.step += 1
            n_steps += 1
            n = len(batch.y_soft)
            tot_loss += float(loss) * n  # float(): syncs a GPU, so step_s holds the step's real time
            if not self.task.multi_label:
                tot_correct += int((logits.argmax(1) == batch.y_soft.argmax(1)).sum())
            n_seen += n
            t_fetch = time.perf_counter()
            step_s += t_fetch - t_step
        bar.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        train_s = time.perf_counter() - t0
        s.cost["train_s"] += train_s
        s.cost["samples"] += n_seen
        s.cost["steps"] += n_steps
        row = dict(epoch=epoch + 1, train_loss=tot_loss / max(n_seen, 1), lr=self.opt.param_groups[0]["lr"],
                   epoch_s=train_s, samples_per_s=n_seen / max(train_s, 1e-9))
        if not self.task.multi_label:
            row["train_acc"] = tot_correct / max(n_seen, 1)
        row.update(self.learner.end_epoch(epoch, last=epoch + 1 == spec.epochs))
        row["learner_s"] = self.ctx.seconds["learner_s"] - learner_s0
        row["data_s"], row["compute_s"] = data_s, max(step_s - row["learner_s"], 0.0)
        s.cost["learner_s"] += row["learner_s"]
        return row

    def fit(self) -> dict[str, Any]:
        start = self.maybe_resume()
        spec, s = self.spec, self.state
        self.check_batchnorm_steps()
        self.ctx.seconds["learner_s"] = s.cost["learner_s"]
        if self.data_path_fallback:
            self.log(f"data_on_device auto: loader path ({self.data_path_fallback})")
        if start:
            self.log(f"resumed from checkpoint after epoch {start}/{spec.epochs}")
            self.store.write_metrics(self.key, s.history)
        wall0 = time.perf_counter()
        bar = tqdm(range(start, spec.epochs), initial=start, total=spec.epochs, desc=f"{spec.task} {spec.method} s{spec.seed}",
                   disable=(not self.progress) or None, leave=False)
        for epoch in bar:
            row = self.train_epoch(epoch)
            t_val = time.perf_counter()
            val = self.evaluate(self.data.select)
            row["val_s"] = time.perf_counter() - t_val
            row.update({f"val_{k}": v for k, v in val.items()})
            score = self.selection_score(val)
            if score >= s.best_score or s.best_state is None:
                s.best_score, s.best_epoch = score, epoch + 1
                s.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in self.model.state_dict().items()})
            self.sched.step()
            s.epoch = epoch + 1
            t_ckpt = time.perf_counter()
            row["ckpt_s"] = 0.0
            for k in PHASES:
                s.cost[k] += row[k]  # ckpt_s of this epoch is added once measured, below
            s.history.append(row)
            s.cost["wall_s"] += time.perf_counter() - wall0
            wall0 = time.perf_counter()
            if self.checkpoint_due(last=epoch + 1 == spec.epochs):
                self.save_checkpoint()  # checkpoint before the metrics row: a resumed run rewrites metrics from it
                store_mod.fault_point("after-checkpoint")
            row["ckpt_s"] = time.perf_counter() - t_ckpt
            s.cost["ckpt_s"] += row["ckpt_s"]
            self.store.write_metrics(self.key, s.history)
            if self.tracker is not None:
                self.tracker.log_epoch(row, step=epoch + 1)
            shown = " ".join(f"val_{k} {v:.4f}" for k, v in val.items() if k in self.task.metric_names)
            postfix = {"loss": f"{row['train_loss']:.3f}"}  # the selection metric under its own name (it may be loss)
            if spec.select_metric in val:
                postfix[f"val_{spec.select_metric}"] = f"{val[spec.select_metric]:.3f}"
            bar.set_postfix(**postfix)
            self.log(f"epoch {epoch + 1}/{spec.epochs} loss {row['train_loss']:.4f} {shown} ({row['epoch_s']:.1f}s)")
            if self.on_epoch_end is not None:
                self.on_epoch_end(epoch + 1, row)
        bar.close()
        return self.finish()

    def finish(self) -> dict[str, Any]:
        """Best-epoch weights -> metrics on the selection split and, only now, on every test set."""
        s = self.state
        self.model.load_state_dict(s.best_state)
        metrics: dict[str, Any] = {f"val_{k}": v for k, v in self.evaluate(self.data.select).items()}
        for name, split in self.data.tests.items():
            metrics.update({f"{name}_{k}": v for k, v in self.evaluate(split).items()})
        epochs_run = len(s.history)
        metrics.update(best_epoch=s.best_epoch, epochs_run=epochs_run)
        if s.history and "val_acc" in s.history[-1]:
            metrics["last_val_acc"] = s.history[-1]["val_acc"]
        c = s.cost
        cost = dict(wall_s=c["wall_s"], epoch_s=c["train_s"] / max(epochs_run, 1), samples_per_s=c["samples"] / max(c["train_s"], 1e-9),
                    step_s=c["train_s"] / max(c["steps"], 1), learner_s=c["learner_s"], peak_mem_mb=peak_memory_mb(self.device),
                    **{k: c.get(k, 0.0) for k in PHASES}, data_path=self.data_path, aug_path=self.aug_path_ran)
        return dict(metrics=metrics, cost=cost, warnings=list(self.warnings))


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
