"""Sanity experiments, one per learned-augmentation competitor, each after its own paper, small enough
for one CPU core (sklearn digits, upsampled to 16 px, small_cnn). Prints each figure as a table.

- augerino (Benton et al. 2020, rotated-MNIST): on digits rotated by U[-90, 90] degrees the learned
  rotation width grows towards the data's range (pi); on the unrotated digits it stays smaller.
- augnet (Rommel et al. 2022, Mario-Iggy): one layer over the six affine transforms; on rotated digits
  the weights concentrate on `rotate`, the transformation matching the data's invariance.
- adautomix (Qin et al. 2024, loss curves): the EMA teacher's loss on the generator's mixes is higher
  after adversarial steps than after cooperative ones, and the cosine term falls while the
  generator learns.
- softaug (Liu et al. 2023, the confidence curve): the targets of the cropped samples follow
  p = 1 - (1 - 1/K)(1 - v)^2, and a model trained on them predicts a lower confidence for less visible
  crops.

    OMP_NUM_THREADS=1 python benchmarks/bench_learner_sanity.py [--steps N] [--only augerino augnet ...]

tests/e2e/test_learned_sanity.py runs the same functions (fewer steps) and checks the figures.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.learners._affine import lie_affine, warp  # noqa: E402
from bench.learners.base import LearnerContext, StepBatch, get_learner_class  # noqa: E402
from bench.seeding import generator  # noqa: E402
from bench.spec import make_spec  # noqa: E402
from bench.tasks import get_task  # noqa: E402

TASK = "digits/sklearn"
SIZE = 16
ROTATION = math.pi / 2  # the data's rotations: U[-ROTATION, ROTATION], a range (Augerino's width) of pi


@functools.lru_cache(maxsize=4)
def digits(rotate: bool, seed: int = 0, split: str = "train"):
    """(model inputs [N, 1, 16, 16], labels [N]); rotate: each image turned once by U[-90, 90] degrees."""
    task = get_task(TASK)
    data = task.load(None, None)
    s = data.train if split == "train" else data.tests["test"]
    x = torch.nn.functional.interpolate(task.prepare(s.x), size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    if rotate:
        g = torch.Generator().manual_seed(1000 + seed + (split != "train"))
        angle = (torch.rand(len(x), generator=g) * 2 - 1) * ROTATION
        eps = torch.zeros(len(x), 6)
        eps[:, 2] = angle
        x = warp(x, lie_affine(eps), align_corners=True)
    return x, s.y


def make(name: str, knobs: dict, seed: int = 0):
    task = get_task(TASK)
    spec = make_spec(TASK, f"none+{name}", seed, {"epochs": 1, **{f"{name}.{k}": v for k, v in knobs.items()}})
    torch.manual_seed(seed)
    model = task.build_model(spec)
    ctx = LearnerContext(spec=spec, task=task, model=model, device=torch.device("cpu"), reference=None, run_dir=None,
                         autocast=contextlib.nullcontext, generator=functools.partial(generator, seed))
    return get_learner_class(name)(ctx, spec.knobs), ctx


def train(learner, ctx, x, y, steps: int, lr: float, batch: int = 64, seed: int = 0, every: int = 0, log=None):
    """Adam on the model and the learner's parameters, as the trainer does; `log(step)` every `every` steps."""
    task = ctx.task
    opt = torch.optim.Adam([*ctx.model.parameters(), *learner.extra_parameters()], lr=lr)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=g)
    ctx.model.train()
    per_epoch = len(x) // batch
    for step in range(steps):
        if step and step % per_epoch == 0:
            order = torch.randperm(len(x), generator=g)
        idx = order[(step % per_epoch) * batch:(step % per_epoch + 1) * batch]
        b = StepBatch(x=x[idx], y_soft=task.targets(y[idx]), clean=x[idx], y=y[idx], corrupted=None,
                      epoch=step // per_epoch, index=step % per_epoch, step=step)
        loss, _ = learner.loss(b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        learner.after_step(b)
        if log is not None and every and (step + 1) % every == 0:
            log(step + 1)


def moved(before: torch.Tensor, after: torch.Tensor) -> float:
    """Relative change ||after - before|| / ||before||."""
    return float((after - before).norm() / before.norm().clamp_min(1e-12))


# ---- Augerino ---------------------------------------------------------------------------------------------
def augerino_widths(steps: int = 1500, seed: int = 0) -> dict:
    """Learned widths (softplus) on rotated and on unrotated digits, same init and schedule (the
    original's rotated-MNIST runner: raw widths -5 except rotation 1, reg 0.1; Adam lr 0.01)."""
    from bench.learners._affine import AFFINE_GENERATORS

    out = {}
    for rotate in (True, False):
        learner, ctx = make("augerino", {"reg": 0.1}, seed)
        with torch.no_grad():
            learner.width_param.fill_(-5.0)
            learner.width_param[2] = 1.0
        w0 = learner.widths().detach().clone()
        x, y = digits(rotate, seed)
        train(learner, ctx, x, y, steps, lr=0.01, seed=seed)
        w = learner.widths().detach()
        out["rotated" if rotate else "upright"] = dict(zip(AFFINE_GENERATORS, w.tolist()), moved=moved(w0, w),
                                                       init=float(w0[2]))
    return out


# ---- AugNet -----------------------------------------------------------------------------------------------
AFFINE_OPS = ("translate_x", "translate_y", "rotate")  # the Mario-Iggy layer's moves that change a digit's class or not


def augnet_weights(steps: int = 1500, seed: int = 0) -> dict:
    """One layer over translations and rotation (the Mario-Iggy setup: geometric ops only; on 16 px
    digits that fill their frame a translation of up to 0.45 of the image changes what the image
    shows, a rotation of up to 30 degrees does not once the data are rotated), on rotated and on
    unrotated digits: its weights and magnitudes after training."""
    out = {}
    for rotate in (True, False):
        learner, ctx = make("augnet", {"layers": 1, "ops": list(AFFINE_OPS)}, seed)
        layer = learner.module[0]
        p0 = torch.cat([layer.weights().detach(), layer.magnitudes().detach()]).clone()
        x, y = digits(rotate, seed)
        train(learner, ctx, x, y, steps, lr=5e-3, seed=seed)
        w, mu = layer.weights().detach(), layer.magnitudes().detach()
        out["rotated" if rotate else "upright"] = dict(weights=dict(zip(AFFINE_OPS, w.tolist())),
                                                       magnitudes=dict(zip(AFFINE_OPS, mu.tolist())),
                                                       moved=moved(p0, torch.cat([w, mu])))
    return out


# ---- AdAutoMix --------------------------------------------------------------------------------------------
def adautomix_curves(steps: int = 600, seed: int = 0, every: int = 100, ema: float = 0.999) -> dict:
    """Training curves of the generator's objective terms, averaged over each window of `every` steps:
    the EMA teacher's loss on the generator's mixes after adversarial and after cooperative steps, the
    cosine term, and how far the generator's parameters moved from their init."""
    learner, ctx = make("adautomix", {"ema": ema}, seed)
    g0 = torch.cat([p.detach().flatten() for p in learner.generator.parameters()]).clone()
    x, y = digits(False, seed)
    rows, acc = [], {"adv": [], "coop": [], "cos": []}
    real_loss = learner.loss

    def recording_loss(batch):
        out = real_loss(batch)
        last = learner.last
        acc["adv" if last["adv_steps"] else "coop"].append(last["gen_loss"])
        acc["cos"].append(last["gen_cos"])
        return out

    learner.loss = recording_loss

    def log(step):
        g = torch.cat([p.detach().flatten() for p in learner.generator.parameters()])
        rows.append(dict(step=step, adv_loss=sum(acc["adv"]) / len(acc["adv"]), coop_loss=sum(acc["coop"]) / len(acc["coop"]),
                         cos=sum(acc["cos"]) / len(acc["cos"]), moved=moved(g0, g)))
        for v in acc.values():
            v.clear()

    train(learner, ctx, x, y, steps, lr=3e-3, seed=seed, every=every, log=log)
    return {"rows": rows}


# ---- Soft Augmentation ----------------------------------------------------------------------------------
def softaug_confidence(steps: int = 600, seed: int = 0, bins=(0.0, 0.4, 0.6, 0.8, 0.95, 1.01)) -> dict:
    """Per visibility bin: the formula's confidence, the learner's targets on its crops, and the trained
    model's predicted probability of the label on fresh crops of held-out digits."""
    from bench.learners.softaug import target_confidence

    learner, ctx = make("softaug", {}, seed)
    head0 = ctx.model.head.weight.detach().clone()
    x, y = digits(False, seed)
    train(learner, ctx, x, y, steps, lr=3e-3, seed=seed)
    xt, yt = digits(False, seed, split="test")
    t = ctx.task.targets(yt)
    xs, ys, vis, p = learner.crop_and_soften(xt, t, torch.Generator().manual_seed(seed + 7))
    ctx.model.eval()
    with torch.no_grad():
        prob = torch.softmax(ctx.model(xs), 1)[torch.arange(len(yt)), yt]
    rows = []
    for lo, hi in zip(bins[:-1], bins[1:]):
        m = (vis >= lo) & (vis < hi)
        if m.any():
            rows.append(dict(v_lo=lo, v_hi=min(hi, 1.0), n=int(m.sum()), v=float(vis[m].mean()),
                             formula=float(target_confidence(vis[m], learner.p_min, learner.knobs.k).mean()),
                             target=float(ys[m][torch.arange(int(m.sum())), yt[m]].mean()), model=float(prob[m].mean())))
    return {"rows": rows, "moved": moved(head0, ctx.model.head.weight.detach())}


# ---- printing ---------------------------------------------------------------------------------------------
def print_table(title, header, rows):
    print(f"\n{title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|")
    for r in rows:
        print("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r) + " |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=None, help="training steps of every experiment (default: each one's own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="*", default=["augerino", "augnet", "adautomix", "softaug"])
    p.add_argument("--ema", type=float, default=0.999, help="AdAutoMix's EMA momentum (its default: 0.999)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    kw = dict(seed=a.seed, **({"steps": a.steps} if a.steps else {}))
    if "augerino" in a.only:
        r = augerino_widths(**kw)
        from bench.learners._affine import AFFINE_GENERATORS

        print_table(f"Augerino widths after training (init: rotate {r['rotated']['init']:.3f}, others 0.007; data rotated by U[-pi/2, pi/2]: range pi = 3.142)",
                    ["data", *AFFINE_GENERATORS, "moved"],
                    [[k, *[v[g] for g in AFFINE_GENERATORS], v["moved"]] for k, v in r.items()])
    if "augnet" in a.only:
        r = augnet_weights(**kw)
        print_table("AugNet layer weights (init 1/3 each) after training",
                    ["data", *AFFINE_OPS, "moved"], [[k, *[v["weights"][o] for o in AFFINE_OPS], v["moved"]] for k, v in r.items()])
        print_table("AugNet magnitudes (init 0.5)", ["data", *AFFINE_OPS],
                    [[k, *[v["magnitudes"][o] for o in AFFINE_OPS]] for k, v in r.items()])
    if "adautomix" in a.only:
        r = adautomix_curves(ema=a.ema, **kw)
        print_table(f"AdAutoMix (ema {a.ema}): EMA teacher's loss on the generator's mixes and the cosine term, per window",
                    ["steps to", "loss after adversarial steps", "loss after cooperative steps", "cos", "generator moved"],
                    [[x["step"], x["adv_loss"], x["coop_loss"], x["cos"], x["moved"]] for x in r["rows"]])
    if "softaug" in a.only:
        r = softaug_confidence(**kw)
        print_table(f"Soft Augmentation: label confidence by visibility (held-out digits; head moved {r['moved']:.2f})",
                    ["visibility bin", "n", "mean v", "formula p", "target p", "model p"],
                    [[f"[{x['v_lo']:.2f}, {x['v_hi']:.2f})", x["n"], x["v"], x["formula"], x["target"], x["model"]]
                     for x in r["rows"]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
