"""How far a cheap reference summary (G, g) moves SAFLEX's weights from the exact one, per task.

    python benchmarks/bench_saflex_staleness.py --data-root DIR
        [--tasks medmnist/breastmnist ...] [--upstreams rand-m9-n2 mixup-a0.2] [--seed 0]
        [--settings 32/4/0.5 32/1/0 all/4/0 32/epoch/8/0 all/b0.125/0]

One X+saflex run per task and upstream trains with the exact summary: every step, the whole
reference part (refresh 1, no running average). Next to it, each cheap setting keeps its own
shadow summary on its own schedule (`val_batch/refresh/ref_ema`; `all` = the whole reference part;
a refresh `epoch/K` refreshes K times an epoch; `bB` refreshes as often as a budget of B reference
images per training image allows, after saflex_core's ramp unless the setting ends in `/noramp`), computed from the same model at the same steps,
and solves for the same batch. The shadows never touch training, so every setting is judged on one
trajectory. Printed per setting: the Pearson correlation of its weights with the exact weights and
their mean absolute difference relative to the exact mean weight (mean over steps, and over the
first fifth of training where the model moves fastest), the exact weights' own spread (coefficient
of variation within a batch: a relative difference means little when it is near the spread), and
the reference images it forwarded per training image over the run (its cost; the step's own
forward+backward is about 3 forward-equivalents). A budget setting resolves its period through saflex_core itself
(refresh="auto"), as a run would.

No test data is read: this is how a default is chosen without looking at test accuracy.
"""
from __future__ import annotations

import argparse
import math
import tempfile
from dataclasses import dataclass, field

import numpy as np
import torch

from bench.runner import resolve_data_root

STUDY_EPOCHS = {"medmnist/pneumoniamnist": 5}  # the MedMNIST study's schedule (studies/saflex_medmnist/sweeps/saflex_fair.yaml); 20 elsewhere
EXACT = {"saflex.val_batch": 1 << 30, "saflex.refresh": 1, "saflex.ref_ema": 0.0}


@dataclass
class Shadow:
    label: str
    val_batch: int | None  # None: the whole reference part
    refresh: int | None  # None: per_epoch refreshes an epoch, or a budget
    per_epoch: int | None
    ema: float
    budget: float | None = None  # reference images forwarded per training image
    ramp: bool = True  # budget settings: saflex_core's ref_ramp
    sfx: object = None
    gen: torch.Generator = field(default_factory=torch.Generator)
    corr: list = field(default_factory=list)
    rel_l1: list = field(default_factory=list)
    forwarded: int = 0  # reference images forwarded

    @classmethod
    def parse(cls, text: str) -> "Shadow":
        parts = text.split("/")
        vb = None if parts[0] == "all" else int(parts[0])
        if parts[1] == "epoch":  # val_batch/epoch/K/ref_ema
            return cls(text, vb, None, int(parts[2]), float(parts[3]))
        if parts[1].startswith("b"):  # val_batch/bBUDGET/ref_ema[/noramp]
            return cls(text, vb, None, None, float(parts[2]), float(parts[1][1:]), parts[3:] != ["noramp"])
        return cls(text, vb, int(parts[1]), None, float(parts[2]))

    def knobs(self, steps_per_epoch: int) -> dict:
        if self.budget:
            return {"refresh": "auto", "ref_budget": self.budget, "ref_ramp": self.ramp}
        return {"refresh": self.refresh or max(1, math.floor(steps_per_epoch / self.per_epoch))}


def run_one(task_name: str, upstream: str, seed: int, shadows: list[Shadow], args, tmp: str) -> list[dict]:
    """Train one exact X+saflex run with the shadows alongside; one row of figures per shadow."""
    import saflex_core
    from bench.data import with_reference
    from bench.spec import make_spec
    from bench.store import ResultsStore
    from bench.tasks import get_task
    from bench.trainer import Trainer

    epochs = args.epochs or STUDY_EPOCHS.get(task_name, 20)
    ref_frac = getattr(args, "ref_frac", 0.5)
    spec = make_spec(task_name, f"{upstream}+saflex", seed,
                     {"epochs": epochs, "model": args.model, **EXACT, **({"ref_frac": ref_frac} if ref_frac else {})})
    task = get_task(task_name)
    data = with_reference(task.load(args.data_root, spec), spec.ref_frac, spec.ref_from, spec.seed)
    store = ResultsStore(tmp)
    store.run_dir(spec.key).mkdir(parents=True, exist_ok=True)
    tr = Trainer(spec, task, data, store, device=torch.device("cpu"), progress=False)
    learner = tr.learner
    n_ref = len(learner.ref_x)
    steps_per_epoch = math.ceil(len(tr.trainset) / spec.batch_size)
    total = steps_per_epoch * epochs
    for i, sh in enumerate(shadows):
        m = min(sh.val_batch or n_ref, n_ref)
        cfg = learner.cfg.replace(val_batch=m, ref_ema=sh.ema, **sh.knobs(steps_per_epoch))
        sh.sfx, sh.corr, sh.rel_l1, sh.forwarded = saflex_core.Saflex(cfg), [], [], 0
        sh.gen.manual_seed(1000 + i)
    exact_refresh, exact_reweight = learner.refresh_if_due, learner.sfx.reweight
    step_of, spread = {}, []

    def refresh_if_due(batch):  # the shadows' forwards also run before the training forward (BatchNorm)
        exact_refresh(batch)
        step_of["now"] = batch.step
        for sh in shadows:
            if not sh.sfx.needs_refresh(batch.step):
                continue
            m = sh.sfx.cfg.val_batch
            idx = torch.randperm(n_ref, generator=sh.gen)[:m] if m < n_ref else torch.arange(n_ref)
            with torch.no_grad(), saflex_core.bn_mode_context(tr.model, learner.cfg.bn_mode):
                h = tr.model.features(learner.ref_x[idx])
                z = tr.model.head(h)
            sh.sfx.refresh(h.float(), z.float(), learner.ref_y[idx])
            sh.forwarded += len(idx)

    def reweight(h, logits, y):
        w, q, stats = exact_reweight(h, logits, y)
        spread.append(float(w.std() / w.mean().clamp_min(1e-12)))
        for sh in shadows:
            ws = sh.sfx.reweight(h, logits, y)[0]
            a, b = w.double() - w.double().mean(), ws.double() - ws.double().mean()
            den = float(a.norm() * b.norm())
            sh.corr.append((step_of["now"], float(a @ b) / den if den > 0 else float("nan")))
            sh.rel_l1.append((step_of["now"], float((ws - w).abs().mean() / w.mean().clamp_min(1e-12))))
        return w, q, stats

    learner.refresh_if_due, learner.sfx.reweight = refresh_if_due, reweight
    for epoch in range(epochs):
        tr.train_epoch(epoch)
        tr.sched.step()
    rows = []
    early = total // 5
    n_trained = epochs * len(tr.trainset)
    for sh in shadows:
        c = np.array([v for _, v in sh.corr])
        c_early = np.array([v for s, v in sh.corr if s < early])
        rows.append(dict(task=task_name, upstream=upstream, setting=sh.label, period=sh.sfx.period,
                         ref_images=sh.sfx.cfg.val_batch, batch=spec.batch_size,
                         corr=float(np.nanmean(c)), corr_early=float(np.nanmean(c_early)),
                         rel_l1=float(np.mean([v for _, v in sh.rel_l1])), w_cv=float(np.mean(spread)),
                         ref_per_img=sh.forwarded / n_trained))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="*",
                   default=["medmnist/breastmnist", "medmnist/retinamnist", "medmnist/pneumoniamnist"])
    p.add_argument("--upstreams", nargs="*", default=["rand-m9-n2", "mixup-a0.2"])
    p.add_argument("--settings", nargs="*",
                   default=["32/4/0.5", "32/4/0", "32/2/0", "32/1/0", "all/4/0", "all/2/0", "32/epoch/4/0",
                            "32/epoch/8/0"],
                   help="val_batch/refresh/ref_ema, val_batch/epoch/K/ref_ema (K refreshes an epoch) or "
                        "val_batch/bB/ref_ema[/noramp] (refresh as often as B reference images per training image "
                        "allow)")
    p.add_argument("--seed", type=int, default=0, help="0: the tuning seed, used by no study run")
    p.add_argument("--model", default="small_cnn")
    p.add_argument("--epochs", type=int, help="default: the study's schedule")
    p.add_argument("--ref-frac", type=float, default=0.5,
                   help="reference part of the validation split (default 0.5, the study's; 0: the whole split, "
                        "as a run without ref_frac)")
    p.add_argument("--data-root")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.data_root = resolve_data_root(args.data_root)
    print(f"seed {args.seed}  model {args.model}  threads {args.threads}; exact = whole reference part every step")
    print(f"{'task':26s}{'upstream':13s}{'setting':14s}{'k':>4s}{'corr':>8s}{'corr1/5':>8s}{'relL1':>8s}{'w CV':>8s}"
          f"{'ref/img':>9s}")
    with tempfile.TemporaryDirectory() as tmp:
        for task_name in args.tasks:
            for upstream in args.upstreams:
                shadows = [Shadow.parse(s) for s in args.settings]
                for r in run_one(task_name, upstream, args.seed, shadows, args, tmp):
                    print(f"{r['task']:26s}{r['upstream']:13s}{r['setting']:14s}{r['period']:>4d}{r['corr']:>8.3f}"
                          f"{r['corr_early']:>8.3f}{r['rel_l1']:>8.3f}{r['w_cv']:>8.3f}{r['ref_per_img']:>9.3f}", flush=True)


if __name__ == "__main__":
    main()
