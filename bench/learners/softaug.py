"""`softaug`: Soft Augmentation (Liu, Yan, Leal-Taixe, Hays, Ramanan, CVPR 2023, "Soft Augmentation
for Image Classification"; arXiv 2211.04625, 2022) as a learner.

The learner applies its own aggressive random crop (a translation of the image inside its frame,
the uncovered part filled with black) and softens the target as a function of how much of the
image stays visible, v = (W - |dx|)(H - |dy|) / (W H):

    p = 1 - (1 - p_min) (1 - v)^k                     (the paper's target-confidence curve)

the labelled class gets confidence p and the other K - 1 classes share 1 - p uniformly. A soft
upstream target y (label noise) is softened the same way, y' = p y + (1 - p)(1 - y) / (K - 1), which
is the formula above for one-hot y. Offsets are drawn per sample from N(0, (sigma * size)^2), clipped
to the image; k = 2 as in the paper; p_min defaults to chance level (1/K) so the target never
favours a wrong class. Draws come from ctx.generator("softaug", epoch, batch_index).

Composes with the per-sample image upstreams (RandAugment, TrivialAugment, AutoAugment, label
noise); refuses batch mixers (their mixed labels have no single object whose visibility the crop
measures), multi-label tasks and non-image tasks. Extra cost (learner_s): the crop and the targets.
"""
from __future__ import annotations

from typing import Optional

from pydantic import Field

from bench.config import Knobs
from bench.errors import UsageError
from bench.learners._affine import mixer_inside, require_image
from bench.learners.base import Learner, StepBatch, register_learner


class SoftAugKnobs(Knobs):
    sigma: float = Field(0.3, ge=0, description="std of the crop offset, as a fraction of the image size")
    k: float = Field(2.0, gt=0, description="power of the softening curve p = 1 - (1 - p_min)(1 - v)^k")
    p_min: Optional[float] = Field(None, ge=0, le=1, description="confidence at zero visibility (default: 1/K)")


def target_confidence(v, p_min: float, k: float):
    """The paper's curve: confidence of the labelled class at visibility v (tensor or float)."""
    return 1 - (1 - p_min) * (1 - v) ** k


def soften(y, p):
    """Targets [B, K] -> p on the labelled mass, 1 - p shared uniformly by the rest (rows stay on the simplex)."""
    k = y.shape[1]
    p = p.view(-1, 1).to(y.dtype)
    return p * y + (1 - p) * (1 - y) / (k - 1)


def draw_offsets(n: int, height: int, width: int, sigma: float, generator):
    """Integer offsets [n] (dy, dx), normal with std sigma * size, clipped so one pixel row/column stays."""
    import torch

    z = torch.randn(n, 2, generator=generator)
    size = torch.tensor([height, width], dtype=torch.float32)
    off = torch.round(z * sigma * size)
    lim = size - 1
    return torch.maximum(torch.minimum(off, lim), -lim).long()


def shift_crop(x, offsets, fill):
    """Translate each image [C, H, W] by its (dy, dx), filling the uncovered part with `fill` [C, 1, 1];
    returns the shifted batch and the visible fractions v [B]."""
    import torch

    b, _, h, w = x.shape
    out = fill.to(x.dtype).expand_as(x).clone()
    for i, (dy, dx) in enumerate(offsets.tolist()):
        ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
        xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
        out[i, :, yd, xd] = x[i, :, ys, xs]
    vis = (h - offsets[:, 0].abs()).float() * (w - offsets[:, 1].abs()).float() / (h * w)
    return out, vis.to(x.device)


@register_learner("softaug")
class SoftAugmentation(Learner):
    Knobs = SoftAugKnobs
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
        import torch

        super().__init__(ctx, knobs)
        k = ctx.task.num_classes
        self.p_min = self.knobs.p_min if self.knobs.p_min is not None else 1.0 / k
        # black in the task's model input: what the paper's crop leaves in the uncovered area
        channels = ctx.task.channels(ctx.spec) if hasattr(ctx.task, "channels") else 1
        self.fill = ctx.task.prepare(torch.zeros(1, channels, 1, 1, dtype=torch.uint8))[0].to(ctx.device)
        self.start_epoch(0)

    def start_epoch(self, epoch: int) -> None:
        self.n, self.vis_sum, self.conf_sum = 0, 0.0, 0.0

    def crop_and_soften(self, x, y_soft, generator):
        offsets = draw_offsets(len(x), x.shape[-2], x.shape[-1], self.knobs.sigma, generator)
        x, vis = shift_crop(x, offsets, self.fill)
        p = target_confidence(vis, self.p_min, self.knobs.k)
        return x, soften(y_soft, p), vis, p

    def loss(self, batch: StepBatch):
        ctx = self.ctx
        with ctx.timed():
            x, y, vis, p = self.crop_and_soften(batch.x, batch.y_soft, ctx.generator("softaug", batch.epoch, batch.index))
        logits = self.forward(x).float()
        self.n += len(x)
        self.vis_sum += float(vis.sum())
        self.conf_sum += float(p.sum())
        return ctx.task.loss(logits, y), logits.detach()

    def end_epoch(self, epoch: int, last: bool) -> dict[str, float]:
        if not self.n:
            return {}
        return {"softaug_visibility": self.vis_sum / self.n, "softaug_confidence": self.conf_sum / self.n}
