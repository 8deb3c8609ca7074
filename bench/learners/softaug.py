"""`softaug`: Soft Augmentation (Liu, Yan, Leal-Taixe, Hays, Ramanan, CVPR 2023, "Soft Augmentation
for Image Classification"; arXiv 2211.04625, 2022) as a learner, following the authors' code
(youngleox/soft_augmentation: `SoftCrop`, `ComputeProb`, `soft_target`, the CIFAR recipe).

The learner applies its own aggressive random crop: the image is translated inside its frame by
integer offsets (dy, dx), each drawn from N(0, (sigma * size)^2) and redrawn until it lies within
the image size (rejection sampling, as the original; sigma 0.375 = the original's 12 px at 32 px),
and the uncovered part is filled with one random colour per image, bg_std * N(0, 1) per channel in
the normalised input (the original's background, bg 0.01). The target is softened as a function of
how much of the image stays visible, v = (W - |dx|)(H - |dy|) / (W H):

    p = 1 - (1 - p_min) (1 - v)^k                     (the original's ComputeProb with T = 1, max_p = 1)

the labelled class gets confidence p and the other K - 1 classes share 1 - p uniformly; each
sample's loss is weighted by its p (the original's default `reweight`). A soft upstream target y
(label noise) is softened the same way, y' = p y + (1 - p)(1 - y) / (K - 1), which is the formula
above for one-hot y. k = 2 and p_min = 1/K as in the original. Draws come from
ctx.generator("softaug", epoch, batch_index).

Composes with the per-sample image upstreams (RandAugment, TrivialAugment, AutoAugment, label
noise), applied before the crop as the original's RA + SA recipe; refuses batch mixers (their mixed
labels have no single object whose visibility the crop measures), multi-label tasks and non-image
tasks. Extra cost (learner_s): the crop and the targets.
"""
from __future__ import annotations

from typing import Optional

from pydantic import Field

from bench.config import Knobs
from bench.errors import UsageError
from bench.learners._affine import mixer_inside, require_image
from bench.learners.base import Learner, StepBatch, register_learner


class SoftAugKnobs(Knobs):
    sigma: float = Field(0.375, ge=0, description="std of the crop offset, as a fraction of the image size (the original's 12 px at 32 px)")
    k: float = Field(2.0, gt=0, description="power of the softening curve p = 1 - (1 - p_min)(1 - v)^k")
    p_min: Optional[float] = Field(None, ge=0, le=1, description="confidence at zero visibility (default: 1/K)")
    bg_std: float = Field(0.01, ge=0, description="std of the random per-channel fill colour, normalised units (the original's bg 0.01)")
    reweight: bool = Field(True, description="weight each sample's loss by its target confidence p (the original's default)")


def target_confidence(v, p_min: float, k: float):
    """The paper's curve: confidence of the labelled class at visibility v (tensor or float)."""
    return 1 - (1 - p_min) * (1 - v) ** k


def soften(y, p):
    """Targets [B, K] -> p on the labelled mass, 1 - p shared uniformly by the rest (rows stay on the simplex)."""
    k = y.shape[1]
    p = p.view(-1, 1).to(y.dtype)
    return p * y + (1 - p) * (1 - y) / (k - 1)


REDRAWS = 100  # the original gives up after 100 rejected draws and uses offset 0


def draw_offsets(n: int, height: int, width: int, sigma: float, generator):
    """Integer offsets [n, 2] (dy, dx): per axis a draw from N(0, (sigma * size)^2), redrawn while its
    magnitude exceeds the size (0 after REDRAWS failures), truncated toward zero, as the original."""
    import torch

    size = torch.tensor([height, width], dtype=torch.float32).view(1, 2, 1)
    z = torch.randn(n, 2, REDRAWS, generator=generator) * sigma * size
    ok = z.abs() <= size
    first = ok.float().argmax(dim=2, keepdim=True)  # index of the first accepted draw
    off = torch.where(ok.any(dim=2, keepdim=True), z.gather(2, first), torch.zeros_like(first, dtype=z.dtype))
    return off.squeeze(2).trunc().long()


def shift_crop(x, offsets, fill):
    """Translate each image [C, H, W] by its (dy, dx), filling the uncovered part with `fill` ([C, 1, 1]
    for all, or [B, C, 1, 1] one colour per image); returns the shifted batch and the visible fractions v [B]."""
    b, _, h, w = x.shape
    out = fill.to(x.device, x.dtype).expand_as(x).clone()
    for i, (dy, dx) in enumerate(offsets.tolist()):
        ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
        xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
        out[i, :, yd, xd] = x[i, :, ys, xs]
    vis = (h - offsets[:, 0].abs()).float() * (w - offsets[:, 1].abs()).float() / (h * w)
    return out, vis.to(x.device)


@register_learner("softaug")
class SoftAugmentation(Learner):
    Knobs = SoftAugKnobs
    semantics = 2  # the original's offsets (rejection-sampled), random fill, sigma 12/32 and confidence-weighted loss
    description = "Soft Augmentation: aggressive random crop, target confidence softened by visibility"

    @classmethod
    def check(cls, task, upstream) -> None:
        require_image("Soft Augmentation", "images to crop", task)
        if task.multi_label:
            raise UsageError(f"Soft Augmentation softens a single-label target; task {task.name} is {task.task_type}")
        if mixer_inside(upstream) is not None:
            raise UsageError(f"Soft Augmentation softens one object's label by its visibility; upstream '{upstream}' "
                             f"already mixes labels (use a per-sample upstream: none, rand-*, trivialaug, autoaug-*)")

    def __init__(self, ctx, knobs=None):
        super().__init__(ctx, knobs)
        k = ctx.task.num_classes
        self.p_min = self.knobs.p_min if self.knobs.p_min is not None else 1.0 / k
        self.start_epoch(0)

    def start_epoch(self, epoch: int) -> None:
        self.n, self.vis_sum, self.conf_sum = 0, 0.0, 0.0

    def crop_and_soften(self, x, y_soft, generator):
        import torch

        offsets = draw_offsets(len(x), x.shape[-2], x.shape[-1], self.knobs.sigma, generator)
        fill = torch.randn(len(x), x.shape[1], 1, 1, generator=generator) * self.knobs.bg_std
        x, vis = shift_crop(x, offsets, fill)
        p = target_confidence(vis, self.p_min, self.knobs.k)
        return x, soften(y_soft, p), vis, p

    def soft_loss(self, logits, targets, p):
        """Soft-target cross-entropy per sample, weighted by the confidence p when `reweight` (the
        original's KL differs from it by the targets' entropy: the same gradients)."""
        import torch

        per_sample = -(targets * torch.log_softmax(logits, dim=1)).sum(1)
        weight = p.to(per_sample.dtype) if self.knobs.reweight else torch.ones_like(per_sample)
        return (weight * per_sample).mean()

    def loss(self, batch: StepBatch):
        ctx = self.ctx
        with ctx.timed():
            x, y, vis, p = self.crop_and_soften(batch.x, batch.y_soft, ctx.generator("softaug", batch.epoch, batch.index))
        logits = self.forward(x).float()
        self.n += len(x)
        self.vis_sum += float(vis.sum())
        self.conf_sum += float(p.sum())
        return self.soft_loss(logits, y, p), logits.detach()

    def end_epoch(self, epoch: int, last: bool) -> dict[str, float]:
        if not self.n:
            return {}
        return {"softaug_visibility": self.vis_sum / self.n, "softaug_confidence": self.conf_sum / self.n}
