"""`augnet`: AugNet (Rommel, Moreau, Gramfort, NeurIPS 2022, "Deep invariant networks with
differentiable augmentation layers") as a learner, following the authors' code (cedricrommel/augnet:
`AugmentationLayer`, `aug_layer_loss`, `AugAveragedModel`, the vision `_Operation`s).

An augmentation module of `layers` stacked augmentation layers sits in front of the trunk model.
Each layer holds K differentiable transforms T_k, raw weights a (init 1, so uniform) turned into
w = softmax(a / temperature) (temperature 0.01 as in the original: the weights can move fast), and a
magnitude mu_k per transform, a raw parameter clamped to [0, 1] (init 0.5 as in the CIFAR-10 script).
A transform's amount per sample is s * U[0, 1] * mu_k * range_k with a random sign s, so the
magnitudes get gradients through the reparameterised draw. Training: a layer outputs the weighted
sum  sum_k w_k T_k(x)  of all its transforms (gradients reach the weights); everything is trained with
the network by the main optimiser, from the training batches alone (no validation data, no bilevel
problem). The loss carries the original's invariance regulariser, which rewards strong augmentation
where the data loss allows it:

    loss = task loss on the augmented batch  -  reg * || concat_layers( w (.) clamp(mu, 0, 1) ) ||_2

(reg 0.5, the norm not squared). Inference (the original's eval mode): each layer applies ONE
transform drawn from Categorical(w) per forward pass, with per-sample random amounts; the prediction
is the mean over `test_copies` copies of the model's log-softmax, the copies sent through the
layers as one batch (as the original's AugAveragedModel does, so they share the drawn transforms).

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

from pydantic import Field, field_validator

from bench.config import Knobs
from bench.learners._affine import AFFINE_GENERATORS, ModelMatchedState, average_log_probs, lie_affine, \
    require_image, warp
from bench.learners.base import Learner, StepBatch, register_learner

# transform name -> its largest amount (magnitude 1), in the original's units where it has the
# transform: translations 0.45 of the image (0.9 in affine_grid's [-1, 1] frame), rotation 30
# degrees, shear 0.3; scale and stretch (not in the original's set) 0.3 in Lie coordinates;
# brightness and contrast (the original works in [0, 1] pixels, here normalised units) 0.5.
TRANSFORM_RANGES = {
    "translate_x": 0.9, "translate_y": 0.9, "rotate": math.pi / 6, "scale": 0.3, "stretch": 0.3, "shear": 0.3,
    "brightness": 0.5, "contrast": 0.5,
}
TRANSFORMS = tuple(TRANSFORM_RANGES)


class AugNetKnobs(Knobs):
    layers: int = Field(2, ge=1, le=8, description="stacked augmentation layers")
    reg: float = Field(0.5, ge=0, description="weight of the invariance regulariser (subtracted: rewards magnitude)")
    init_magnitude: float = Field(0.5, ge=0, le=1, description="initial magnitude of every transform, in [0, 1]")
    temperature: float = Field(0.01, gt=0, description="temperature of the softmax over a layer's transform weights")
    ops: tuple[str, ...] = Field(TRANSFORMS, min_length=1, description=f"a layer's transforms, from {', '.join(TRANSFORMS)}")
    test_copies: int = Field(4, ge=1, le=64, description="augmented copies averaged (log-softmax) at test time")

    @field_validator("ops")
    @classmethod
    def known_ops(cls, v):
        bad = [o for o in v if o not in TRANSFORM_RANGES]
        if bad or len(set(v)) != len(v):
            raise ValueError(f"ops must be distinct names from {', '.join(TRANSFORMS)} (got {', '.join(v)})")
        return tuple(v)


def apply_transform(name: str, x, amount):
    """T(x) with per-sample signed amount [B] (already sign * U[0, 1] * magnitude * range); differentiable in amount."""
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


def build_module(n_layers: int, init_magnitude: float, temperature: float, device, ops=TRANSFORMS):
    """The augmentation module: `n_layers` layers, each (raw weights, raw magnitudes) over `ops`."""
    import torch
    from torch import nn

    class AugmentationLayer(nn.Module):
        def __init__(self):
            super().__init__()
            self.ops = tuple(ops)
            self.weight_logits = nn.Parameter(torch.ones(len(ops), device=device))
            self.magnitude_raw = nn.Parameter(torch.full((len(ops),), float(init_magnitude), device=device))

        def weights(self, raw=None):
            return torch.softmax((self.weight_logits if raw is None else raw) / temperature, 0)

        def magnitudes(self, raw=None):
            return (self.magnitude_raw if raw is None else raw).clamp(0, 1)

        def amounts(self, n, mu, generator, device):
            """[n, K] signed amounts: random sign * U[0, 1] * mu_k * range_k."""
            sign = torch.randint(0, 2, (n, len(self.ops)), generator=generator).float() * 2 - 1
            u = torch.rand((n, len(self.ops)), generator=generator)
            ranges = torch.tensor([TRANSFORM_RANGES[t] for t in self.ops])
            return (sign * u).to(device) * mu * ranges.to(device)

        def forward(self, x, generator):
            """Training: the weighted sum of every transform."""
            w, amounts = self.weights(), self.amounts(len(x), self.magnitudes(), generator, x.device)
            out = 0
            for k, name in enumerate(self.ops):
                out = out + w[k] * apply_transform(name, x, amounts[:, k])
            return out

        def sample_forward(self, x, generator, raw_w=None, raw_mu=None):
            """Inference: one transform drawn from Categorical(w) for the whole batch."""
            w = self.weights(raw_w)
            k = int(torch.multinomial(w.detach().float().cpu(), 1, generator=generator))
            amounts = self.amounts(len(x), self.magnitudes(raw_mu), generator, x.device)
            return apply_transform(self.ops[k], x, amounts[:, k])

    return nn.ModuleList([AugmentationLayer() for _ in range(n_layers)])


@register_learner("augnet")
class AugNet(Learner):
    Knobs = AugNetKnobs
    semantics = 2  # the original's regulariser, weights, magnitudes, sampled inference and log-softmax averaging
    description = "AugNet: stacked differentiable augmentation layers (learned weights + magnitudes), invariance regulariser"

    @classmethod
    def check(cls, task, upstream) -> None:
        require_image("AugNet (as built: image transforms)", "image inputs", task)

    def __init__(self, ctx, knobs=None):
        super().__init__(ctx, knobs)
        k = self.knobs
        self.module = build_module(k.layers, k.init_magnitude, k.temperature, ctx.device, k.ops)
        self.matched = ModelMatchedState()
        self.start_epoch(0)

    def extra_parameters(self) -> list:
        return list(self.module.parameters())

    def start_epoch(self, epoch: int) -> None:
        self.n, self.data_loss_sum = 0, 0.0

    def augment(self, x, generator):
        for layer in self.module:
            x = layer(x, generator)
        return x

    def regulariser(self):
        import torch

        wm = torch.cat([layer.weights() * layer.magnitudes() for layer in self.module])
        return self.knobs.reg * torch.linalg.vector_norm(wm)

    def loss(self, batch: StepBatch):
        ctx = self.ctx
        with ctx.timed():
            x = self.augment(batch.x, ctx.generator("augnet", batch.epoch, batch.index))
        logits = self.forward(x).float()
        data_loss = ctx.task.loss(logits, batch.y_soft)
        self.n += len(x)
        self.data_loss_sum += float(data_loss.detach()) * len(x)
        return data_loss - self.regulariser(), logits.detach()

    def predict(self, x):
        """The copies as one batch through layers that each apply one drawn transform, then the mean
        log-softmax over copies. Draws come from a fixed stream (evaluations do not depend on one
        another, so resume is exact); uses the layer parameters trained with the model's weights."""
        import torch

        ctx = self.ctx
        saved = self.matched.lookup(ctx.model) or {}
        gen = ctx.generator("augnet", "predict")
        c = self.knobs.test_copies
        with torch.no_grad():
            z = torch.cat([x] * c)
            for i, layer in enumerate(self.module):
                z = layer.sample_forward(z, gen, *(saved[f"{i}.{p}"].to(x.device) if f"{i}.{p}" in saved else None
                                                   for p in ("weight_logits", "magnitude_raw")))
            logits = self.forward(z).float()
        return average_log_probs(list(logits.split(len(x))), ctx.task.multi_label)

    def end_epoch(self, epoch: int, last: bool) -> dict[str, float]:
        self.matched.record(self.ctx.model, {f"{i}.{p}": getattr(layer, p) for i, layer in enumerate(self.module)
                                             for p in ("weight_logits", "magnitude_raw")})
        row = {}
        for i, layer in enumerate(self.module):
            w, mu = layer.weights().detach().cpu(), layer.magnitudes().detach().cpu()
            for k, name in enumerate(layer.ops):
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
