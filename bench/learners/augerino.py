"""`augerino`: Augerino (Benton, Finzi, Izmailov, Wilson, NeurIPS 2020, "Learning Invariances in
Neural Networks") as a learner, following the authors' code (g-benton/learning-invariances:
`UniformAug`, `safe_unif_aug_loss`, `AugAveragedModel`).

A learned distribution over affine transforms: six raw parameters theta, widths w = softplus(theta)
(always positive), one per Lie-algebra generator of the 2-D affine group (translate x/y, rotate,
scale, stretch, shear; the translation generators scaled by `trans_scale`, 0.1 in the original).
Per sample eps ~ U[-w/2, w/2], drawn reparameterised (eps = (u - 1/2) w, u ~ U[0, 1]) so the widths
get gradients, and exp(sum_i eps_i G_i) warps the (upstream-augmented) batch before the model sees
it. The widths are trained jointly with the network by the main optimiser (`extra_parameters`) on

    loss = task loss on the warped batch  -  reg * ||w||_2     (switched off once any w >= 10)

(the paper's sign: the regulariser *rewards* wide distributions, so the widths grow until the data
loss pushes back; the switch-off is the original's "safe" loss). At test time the prediction is the
mean over `test_copies` sampled transforms of the model's log-softmax.

Composes with every image upstream (it warps whatever the upstream produced, the labels are kept);
refuses non-image tasks (an affine warp needs an image grid). Extra cost measured as learner_s: the
draw and the warp (the extra backward through the warp is part of the trainer's step).
"""
from __future__ import annotations

import math

from pydantic import Field

from bench.config import Knobs
from bench.learners._affine import AFFINE_GENERATORS, ModelMatchedState, average_log_probs, lie_affine, \
    require_image, warp
from bench.learners.base import Learner, StepBatch, register_learner

SAFE_WIDTH = 10.0  # the original's safe loss drops the regulariser once a width reaches this


class AugerinoKnobs(Knobs):
    reg: float = Field(0.01, ge=0, description="weight of the width regulariser (subtracted: rewards wide distributions)")
    init_width: float = Field(math.log(2.0), gt=0, description="initial width of every generator, softplus(0) = ln 2 as in the original")
    trans_scale: float = Field(0.1, gt=0, description="scale of the two translation generators (the original's trans_scale)")
    test_copies: int = Field(4, ge=1, le=64, description="sampled transforms averaged (log-softmax) at test time")


def softplus_inverse(w: float) -> float:
    return w + math.log(-math.expm1(-w))  # log(exp(w) - 1), stable for large w


@register_learner("augerino")
class Augerino(Learner):
    Knobs = AugerinoKnobs
    semantics = 2  # softplus widths, U[-w/2, w/2], scaled translations, safe regulariser, log-softmax averaging
    description = "Augerino: learned uniform widths over affine transforms, width regulariser, test-time averaging"

    @classmethod
    def check(cls, task, upstream) -> None:
        require_image("Augerino", "an image grid to warp", task)

    def __init__(self, ctx, knobs=None):
        import torch

        super().__init__(ctx, knobs)
        raw = softplus_inverse(float(self.knobs.init_width))
        self.width_param = torch.nn.Parameter(torch.full((len(AFFINE_GENERATORS),), raw, device=ctx.device))
        self.matched = ModelMatchedState()
        self.start_epoch(0)

    def extra_parameters(self) -> list:
        return [self.width_param]

    def widths(self, raw=None):
        import torch.nn.functional as F

        return F.softplus(self.width_param if raw is None else raw)

    def start_epoch(self, epoch: int) -> None:
        self.n, self.data_loss_sum = 0, 0.0

    def sample(self, x, width, generator):
        """One reparameterised draw per sample: eps = (u - 1/2) * w, u ~ U[0, 1]; the translation
        coefficients scaled by trans_scale (the original scales the generators: the same transform)."""
        import torch

        u = torch.rand((len(x), len(AFFINE_GENERATORS)), generator=generator).to(x.device)
        eps = (u - 0.5) * width
        scale = torch.ones(len(AFFINE_GENERATORS), device=x.device)
        scale[:2] = self.knobs.trans_scale
        return warp(x, lie_affine(eps * scale), align_corners=True)

    def regulariser(self):
        import torch

        w = self.widths()
        on = bool((w < SAFE_WIDTH).all())
        return self.knobs.reg * torch.linalg.vector_norm(w) * on

    def loss(self, batch: StepBatch):
        ctx = self.ctx
        with ctx.timed():
            x = self.sample(batch.x, self.widths(), ctx.generator("augerino", batch.epoch, batch.index))
        logits = self.forward(x).float()
        data_loss = ctx.task.loss(logits, batch.y_soft)
        self.n += len(x)
        self.data_loss_sum += float(data_loss.detach()) * len(x)
        return data_loss - self.regulariser(), logits.detach()

    def predict(self, x):
        """Mean log-softmax over `test_copies` draws; the same draws on every call (a fixed stream), so
        an evaluation does not depend on how many evaluations came before it (resume is exact). Not in
        learner_s, which counts training cost only."""
        ctx = self.ctx
        saved = self.matched.lookup(ctx.model)  # the widths trained with the weights the model holds now
        raw = saved["width"].to(x.device) if saved is not None else self.width_param.detach()
        width = self.widths(raw)
        gen = ctx.generator("augerino", "predict")
        logits = [self.forward(self.sample(x, width, gen)).float() for _ in range(self.knobs.test_copies)]
        return average_log_probs(logits, ctx.task.multi_label)

    def end_epoch(self, epoch: int, last: bool) -> dict[str, float]:
        self.matched.record(self.ctx.model, {"width": self.width_param})
        w = self.widths().detach().cpu()
        row = {f"augerino_width_{g}": float(v) for g, v in zip(AFFINE_GENERATORS, w)}
        if self.n:
            row["augerino_data_loss"] = self.data_loss_sum / self.n
        return row

    def state_dict(self) -> dict:
        return {"width": self.width_param.detach().cpu().clone(), "matched": self.matched.state_dict()}

    def load_state_dict(self, state) -> None:
        import torch

        if not state:
            return
        with torch.no_grad():
            self.width_param.copy_(state["width"].to(self.width_param.device))
        self.matched.load_state_dict(state.get("matched", {}))
