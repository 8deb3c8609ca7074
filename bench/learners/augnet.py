"""`augnet`: AugNet (Rommel, Moreau, Gramfort, NeurIPS 2022, "Deep invariant networks with
differentiable augmentation layers") as a learner.

An augmentation module of `layers` stacked augmentation layers sits in front of the trunk model.
Each layer holds K differentiable transforms T_k, a learnable weight per transform (softmax-
normalised) and a learnable magnitude mu_k in [0, 1] per transform; its output is the weighted
mixture  sum_k w_k T_k(x; mu_k, u_k)  with a fresh random draw u_k ~ U[-1, 1] per sample, so the
weights and (through the reparameterised draw) the magnitudes get gradients. Everything is trained
with the network, by the main optimiser, from the training batches alone: no validation data, no
bilevel problem. The loss carries the paper's invariance regulariser, which rewards strong
augmentation where the data loss allows it:

    loss = task loss on the augmented batch  -  reg * sum_layers || w (.) mu ||^2

At test time the prediction averages the model's probabilities over `test_copies` augmented copies
(the paper's aggregation module).

Transforms here are image ones (the six affine generators as separate transforms, brightness,
contrast). The method itself is modality-free: a layer only needs transforms T(x; mu, u) that are
differentiable in mu, so for tabular data one would register e.g. additive Gaussian noise with
scale mu and a relaxed feature mask, for time series a time shift and a frequency shift, and keep
the rest of this learner unchanged. Until such transforms exist it refuses non-image tasks.

Composes with every image upstream (the layers transform what the upstream produced; labels kept).
Extra cost measured as learner_s: the augmentation layers' forward (their backward is part of the
trainer's step).
"""
from __future__ import annotations

import math

from pydantic import Field

from bench.config import Knobs
from bench.learners._affine import AFFINE_GENERATORS, ModelMatchedState, average_predictions, lie_affine, \
    require_image, uniform_pm1, warp
from bench.learners.base import Learner, StepBatch, register_learner

# transform name -> largest parameter at magnitude 1 (affine: Lie coordinate in affine_grid's [-1, 1]
# frame, e.g. translate 0.5 = a quarter of the image, rotate pi/2 = 90 degrees; colour: normalised units)
TRANSFORM_RANGES = {
    "translate_x": 0.5, "translate_y": 0.5, "rotate": math.pi / 2, "scale": 0.5, "stretch": 0.5, "shear": 0.5,
    "brightness": 1.0, "contrast": 1.0,
}
TRANSFORMS = tuple(TRANSFORM_RANGES)


class AugNetKnobs(Knobs):
    layers: int = Field(2, ge=1, le=8, description="stacked augmentation layers")
    reg: float = Field(0.01, ge=0, description="weight of the invariance regulariser (subtracted: rewards magnitude)")
    init_magnitude: float = Field(0.1, gt=0, lt=1, description="initial magnitude of every transform, in (0, 1)")
    test_copies: int = Field(4, ge=1, le=64, description="augmented copies averaged at test time")


def apply_transform(name: str, x, amount):
    """T(x) with per-sample signed amount [B] (already magnitude * range * u); differentiable in amount."""
    import torch

    if name in AFFINE_GENERATORS:
        eps = torch.zeros(len(x), len(AFFINE_GENERATORS), device=x.device, dtype=amount.dtype)
        eps = eps.index_put((torch.arange(len(x), device=x.device), torch.full((len(x),), AFFINE_GENERATORS.index(name),
                                                                              device=x.device)), amount)
        return warp(x, lie_affine(eps))
    a = amount.view(-1, 1, 1, 1).to(x.dtype)
    if name == "brightness":
        return x + a
    if name == "contrast":  # scale around each image's mean
        m = x.mean(dim=(1, 2, 3), keepdim=True)
        return m + (x - m) * torch.exp(a)
    raise ValueError(f"unknown transform {name!r}")


def build_module(n_layers: int, init_magnitude: float, device):
    """The augmentation module: `n_layers` layers, each (logit weights, logit magnitudes) over TRANSFORMS."""
    import torch
    from torch import nn

    class AugmentationLayer(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight_logits = nn.Parameter(torch.zeros(len(TRANSFORMS), device=device))
            m = math.log(init_magnitude / (1 - init_magnitude))
            self.magnitude_logits = nn.Parameter(torch.full((len(TRANSFORMS),), m, device=device))

        def weights(self):
            return torch.softmax(self.weight_logits, 0)

        def magnitudes(self):
            return torch.sigmoid(self.magnitude_logits)

        def forward(self, x, u, weights=None, magnitudes=None):
            """u: [B, K] in [-1, 1]. weights/magnitudes override the layer's own (best-epoch copies)."""
            w = self.weights() if weights is None else weights
            mu = self.magnitudes() if magnitudes is None else magnitudes
            ranges = torch.tensor([TRANSFORM_RANGES[t] for t in TRANSFORMS], device=x.device)
            amounts = u * mu * ranges  # [B, K]
            out = 0
            for k, name in enumerate(TRANSFORMS):
                out = out + w[k] * apply_transform(name, x, amounts[:, k])
            return out

    return nn.ModuleList([AugmentationLayer() for _ in range(n_layers)])


@register_learner("augnet")
class AugNet(Learner):
    Knobs = AugNetKnobs
    description = "AugNet: stacked differentiable augmentation layers (learned weights + magnitudes), invariance regulariser"

    @classmethod
    def check(cls, task, upstream) -> None:
        require_image("AugNet (as built: image transforms)", "image inputs", task)

    def __init__(self, ctx, knobs=None):
        super().__init__(ctx, knobs)
        self.module = build_module(self.knobs.layers, self.knobs.init_magnitude, ctx.device)
        self.matched = ModelMatchedState()
        self.start_epoch(0)

    def extra_parameters(self) -> list:
        return list(self.module.parameters())

    def start_epoch(self, epoch: int) -> None:
        self.n, self.data_loss_sum = 0, 0.0

    def augment(self, x, generator, params=None):
        """One pass through the stack; params: per-layer (weights, magnitudes) to use instead."""
        for i, layer in enumerate(self.module):
            u = uniform_pm1((len(x), len(TRANSFORMS)), generator, x.device)
            x = layer(x, u, *(params[i] if params is not None else (None, None)))
        return x

    def regulariser(self):
        total = 0
        for layer in self.module:
            total = total + (layer.weights() * layer.magnitudes()).pow(2).sum()
        return self.knobs.reg * total

    def loss(self, batch: StepBatch):
        ctx = self.ctx
        with ctx.timed():
            x = self.augment(batch.x, ctx.generator("augnet", batch.epoch, batch.index))
        logits = self.forward(x).float()
        data_loss = ctx.task.loss(logits, batch.y_soft)
        self.n += len(x)
        self.data_loss_sum += float(data_loss.detach()) * len(x)
        return data_loss - self.regulariser(), logits.detach()

    def layer_values(self):
        return {f"{i}.{kind}": t for i, layer in enumerate(self.module)
                for kind, t in (("w", layer.weights()), ("mu", layer.magnitudes()))}

    def predict(self, x):
        """Average over `test_copies` augmented copies, drawn from a fixed stream (evaluations do not
        depend on one another, so resume is exact); uses the layers trained with the model's weights."""
        import torch

        ctx = self.ctx
        saved = self.matched.lookup(ctx.model)
        params = None
        if saved is not None:
            params = [(saved[f"{i}.w"].to(x.device), saved[f"{i}.mu"].to(x.device)) for i in range(len(self.module))]
        gen = ctx.generator("augnet", "predict")
        with torch.no_grad():
            logits = [self.forward(self.augment(x, gen, params)).float() for _ in range(self.knobs.test_copies)]
        return average_predictions(logits, ctx.task.multi_label)

    def end_epoch(self, epoch: int, last: bool) -> dict[str, float]:
        values = self.layer_values()
        self.matched.record(self.ctx.model, values)
        row = {}
        for i, layer in enumerate(self.module):
            w, mu = layer.weights().detach().cpu(), layer.magnitudes().detach().cpu()
            for k, name in enumerate(TRANSFORMS):
                row[f"augnet_l{i}_{name}_w"] = float(w[k])
                row[f"augnet_l{i}_{name}_mu"] = float(mu[k])
        if self.n:
            row["augnet_data_loss"] = self.data_loss_sum / self.n
        return row

    def state_dict(self) -> dict:
        return {"module": {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()},
                "matched": self.matched.state_dict()}

    def load_state_dict(self, state) -> None:
        if not state:
            return
        self.module.load_state_dict({k: v.to(self.ctx.device) for k, v in state["module"].items()})
        self.matched.load_state_dict(state.get("matched", {}))
