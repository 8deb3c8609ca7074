"""Shared parts of the learned-augmentation learners (augerino, augnet): differentiable affine warps,
test-time averaging, and keeping learner-held augmentation parameters with the model weights they
were trained with (best-epoch selection restores only the model).

Torch is imported inside functions: `bench.learners` is imported by `saflex-bench list`.
"""
from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# The six generators of the 2-D affine group's Lie algebra (Augerino's parameterisation), as 3x3
# matrices acting on homogeneous coordinates in affine_grid's [-1, 1] frame.
AFFINE_GENERATORS = ("translate_x", "translate_y", "rotate", "scale", "stretch", "shear")


def affine_generators(device=None, dtype=None) -> "torch.Tensor":
    import torch

    g = torch.zeros(6, 3, 3, device=device, dtype=dtype)
    g[0, 0, 2] = 1.0                      # translate x
    g[1, 1, 2] = 1.0                      # translate y
    g[2, 0, 1], g[2, 1, 0] = -1.0, 1.0    # rotate
    g[3, 0, 0], g[3, 1, 1] = 1.0, 1.0     # scale (uniform)
    g[4, 0, 0], g[4, 1, 1] = 1.0, -1.0    # stretch (x up, y down)
    g[5, 0, 1], g[5, 1, 0] = 1.0, 1.0     # shear
    return g


def lie_affine(eps: "torch.Tensor") -> "torch.Tensor":
    """[B, 6] coefficients -> [B, 2, 3] affine matrices exp(sum_i eps_i G_i); differentiable in eps."""
    import torch

    gens = affine_generators(eps.device, eps.dtype)
    return torch.linalg.matrix_exp(torch.einsum("bi,ijk->bjk", eps, gens))[:, :2, :]


def warp(x: "torch.Tensor", theta: "torch.Tensor", align_corners: bool = False) -> "torch.Tensor":
    """Resample images [B, C, H, W] through affine matrices [B, 2, 3] (bilinear, zero fill, which is
    the mean pixel in the task's normalised input); differentiable in theta."""
    import torch.nn.functional as F

    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=align_corners)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=align_corners)


def uniform_pm1(shape, generator: "torch.Generator", device) -> "torch.Tensor":
    """U[-1, 1] draws from a CPU generator (run-seeded streams are CPU generators), moved to device."""
    import torch

    return (torch.rand(shape, generator=generator) * 2 - 1).to(device)


def average_predictions(logits: list["torch.Tensor"], multi_label: bool) -> "torch.Tensor":
    """Average predicted probabilities over copies; returned as logits the task's scores() inverts
    (log of the mean softmax; logit of the mean sigmoid)."""
    import torch

    if multi_label:
        p = torch.stack([torch.sigmoid(z.float()) for z in logits]).mean(0).clamp(1e-7, 1 - 1e-7)
        return torch.log(p) - torch.log1p(-p)
    return torch.stack([torch.log_softmax(z.float(), dim=1) for z in logits]).logsumexp(0) - torch.log(
        torch.tensor(float(len(logits))))


def average_log_probs(logits: list["torch.Tensor"], multi_label: bool) -> "torch.Tensor":
    """Augerino's and AugNet's aggregation: the mean over copies of the log-softmax (a geometric mean
    of the copies' probabilities, which softmax renormalises). Multi-label (not in the originals):
    the mean of the copies' sigmoid probabilities, as logits."""
    import torch

    if multi_label:
        return average_predictions(logits, multi_label)
    return torch.stack([torch.log_softmax(z.float(), dim=1) for z in logits]).mean(0)


class ModelMatchedState:
    """Learner parameters that belong with a given set of model weights.

    The trainer keeps the best epoch's *model* weights and reloads them before the test evaluation,
    but a learner's own parameters (Augerino's widths, AugNet's magnitudes) stay at their last-epoch
    values. Recording them at each epoch's end under a fingerprint of the model's weights lets
    predict() find the ones that were trained together with whatever weights the model holds now.
    """

    def __init__(self):
        self.by_fingerprint: dict[str, dict] = {}

    @staticmethod
    def fingerprint(model) -> str:
        h = hashlib.blake2b(digest_size=12)
        for p in model.head.parameters():  # the head changes every step: enough to tell epochs apart
            h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def record(self, model, tensors: dict) -> None:
        self.by_fingerprint[self.fingerprint(model)] = {k: v.detach().cpu().clone() for k, v in tensors.items()}

    def lookup(self, model) -> dict | None:
        return self.by_fingerprint.get(self.fingerprint(model))

    def state_dict(self) -> dict:
        return {k: dict(v) for k, v in self.by_fingerprint.items()}

    def load_state_dict(self, state: dict) -> None:
        self.by_fingerprint = {k: dict(v) for k, v in (state or {}).items()}


# ---- applicability (spec-time checks) ------------------------------------------------------------
def require_image(method: str, need: str, task) -> None:
    """UsageError `<method> needs <need>; task X is <modality>` unless the task holds images."""
    from bench.errors import UsageError

    if task.modality != "image":
        raise UsageError(f"{method} needs {need}; task {task.name} is {task.modality}")


def mixer_inside(upstream):
    """The batch mixer (CutMix, MixUp) the upstream applies, looking through wrappers such as
    noisy(P, ...); None when it mixes nothing."""
    from baselines.mixers import Mixer

    seen = upstream
    while seen is not None:
        if isinstance(seen, Mixer):
            return seen
        seen = getattr(seen, "inner", None)
    return None
