"""`augerino`: Augerino (Benton, Finzi, Izmailov, Wilson, NeurIPS 2020, "Learning Invariances in
Neural Networks") as a learner.

A learned distribution over affine transforms: for each of the six Lie-algebra generators of the
2-D affine group (translate x/y, rotate, scale, stretch, shear) a coefficient eps_i ~ U[-w_i, w_i],
drawn reparameterised (eps = w * u, u ~ U[-1, 1]) so the widths w get gradients, and the transform
exp(sum_i eps_i G_i) warps the (upstream-augmented) batch before the model sees it. The widths are
trained jointly with the network by the main optimiser (`extra_parameters`) on

    loss = task loss on the warped batch  -  reg * ||w||_2

(the paper's sign: the regulariser *rewards* wide distributions, so the widths grow until the data
loss pushes back). At test time the prediction is the average of the model's predicted probabilities
over `test_copies` sampled transforms.

Composes with every image upstream (it warps whatever the upstream produced, the labels are kept);
refuses non-image tasks (an affine warp needs an image grid). Extra cost measured as learner_s: the
draw and the warp (the extra backward through the warp is part of the trainer's step).
"""
from __future__ import annotations

from pydantic import Field

from bench.config import Knobs
from bench.learners._affine import AFFINE_GENERATORS, ModelMatchedState, average_predictions, lie_affine, \
    require_image, uniform_pm1, warp
from bench.learners.base import Learner, StepBatch, register_learner


class AugerinoKnobs(Knobs):
    reg: float = Field(0.01, ge=0, description="weight of the width regulariser (subtracted: rewards wide distributions)")
    init_width: float = Field(0.1, ge=0, description="initial width of every generator's uniform distribution")
    test_copies: int = Field(4, ge=1, le=64, description="sampled transforms averaged at test time")


@register_learner("augerino")
class Augerino(Learner):
    Knobs = AugerinoKnobs
    description = "Augerino: learned uniform widths over affine transforms, width regulariser, test-time averaging"

    @classmethod
    def check(cls, task, upstream) -> None:
        require_image("Augerino", "an image grid to warp", task)

    def __init__(self, ctx, knobs=None):
        import torch

        super().__init__(ctx, knobs)
        self.width = torch.nn.Parameter(torch.full((len(AFFINE_GENERATORS),), float(self.knobs.init_width), device=ctx.device))
        self.matched = ModelMatchedState()
        self.start_epoch(0)

    def extra_parameters(self) -> list:
        return [self.width]

    def start_epoch(self, epoch: int) -> None:
        self.n, self.data_loss_sum = 0, 0.0

    def sample(self, x, width, generator):
        """One reparameterised draw per sample: warp x with exp(sum (w * u)_i G_i), u ~ U[-1, 1]."""
        u = uniform_pm1((len(x), len(AFFINE_GENERATORS)), generator, x.device)
        return warp(x, lie_affine(u * width))

    def regulariser(self):
        import torch

        return self.knobs.reg * torch.linalg.vector_norm(self.width)

    def loss(self, batch: StepBatch):
        ctx = self.ctx
        with ctx.timed():
            x = self.sample(batch.x, self.width, ctx.generator("augerino", batch.epoch, batch.index))
        logits = self.forward(x).float()
        data_loss = ctx.task.loss(logits, batch.y_soft)
        self.n += len(x)
        self.data_loss_sum += float(data_loss.detach()) * len(x)
        return data_loss - self.regulariser(), logits.detach()

    def predict(self, x):
        """Average over `test_copies` draws; the same draws on every call (a fixed stream), so an
        evaluation does not depend on how many evaluations came before it (resume is exact). Not in
        learner_s, which counts training cost only."""

        ctx = self.ctx
        saved = self.matched.lookup(ctx.model)  # the widths trained with the weights the model holds now
        width = saved["width"].to(x.device) if saved is not None else self.width.detach()
        gen = ctx.generator("augerino", "predict")
        logits = [self.forward(self.sample(x, width, gen)).float() for _ in range(self.knobs.test_copies)]
        return average_predictions(logits, ctx.task.multi_label)

    def end_epoch(self, epoch: int, last: bool) -> dict[str, float]:
        self.matched.record(self.ctx.model, {"width": self.width})
        row = {f"augerino_width_{g}": abs(float(w)) for g, w in zip(AFFINE_GENERATORS, self.width.detach().cpu())}
        if self.n:
            row["augerino_data_loss"] = self.data_loss_sum / self.n
        return row

    def state_dict(self) -> dict:
        return {"width": self.width.detach().cpu().clone(), "matched": self.matched.state_dict()}

    def load_state_dict(self, state) -> None:
        import torch

        if not state:
            return
        with torch.no_grad():
            self.width.copy_(state["width"].to(self.width.device))
        self.matched.load_state_dict(state.get("matched", {}))
