"""`adautomix`: Adversarial AutoMixup (Qin, Jin, Jiang, El-Yacoubi, Gao, ICLR 2024) as a learner,
following the authors' code (JinXins/Adversarial-AutoMixup: `AdAutoMix.forward_train`, `forward_k`,
`forward_q`, the `AdaptiveMask` mix block and the CUB/CIFAR configs).

Per step:

- count and ratios: m images per mix, m drawn uniformly from 2..`mix_num` (the original's
  `is_random`, mix_samples 3); m ratios from one Beta(alpha, alpha) draw each for the whole batch.
  With m = 2 the generator's mix uses the first ratio lam and the classifier's mix the second, each
  pairing the batch with its own random permutation; with m > 2 both use the normalised ratios
  lam_i / sum(lam) over m random permutations each. Labels are mixed by the ratios: sum lam_i y_i;
- features: the EMA teacher (a moving average of the classifier's parameters, momentum `ema`, 0.999)
  gives each image's spatial feature map (here the input of the model's last global pool);
- mask generator (the original's AdaptiveMask): each image's map gets its ratio as an extra channel;
  1x1 convolutions give queries and keys (ReLU, C / `reduction` channels) and a one-channel value;
  image i attends from its queries to the keys of the other images of the mix, the attended values
  are its mask logits; upsampled (nearest) to the image and a softmax across the m images gives
  masks summing to 1 at every pixel. The mix is sum_i mask_i x_i;
- generator step (its own Adam, inside the learner), on a mix drawn for it: L = the EMA teacher's
  mixed-label loss on the mix, cos = mean over samples of sum_i lam_i cos(teacher logits of the mix,
  teacher logits of image i). Every `adv_every`-th step (2: every second one) the step is
  adversarial and minimises -adv_weight * L + (1 - adv_weight) * cos (adv_weight 0.3); the other
  steps are cooperative and minimise L (AutoMix's objective). Only the generator receives this
  gradient; the classifier is not involved;
- classifier step (the trainer's optimiser): on a separately drawn mix (its own ratios and
  permutations; the generator's masks, detached; replaced by the constant ratios when a ratio is
  within `lam_margin` of 0 or 1), loss = `mix_weight` x mixed-label loss on that mix + the loss on
  the batch; with m > 2 the latter is (1 - mixup_ratio) x the batch loss + mixup_ratio x the loss on
  the linear (mixup) mix of the same images. Separate forwards, as the original.

Replaces mixing, so it refuses batch-mixing upstreams (cutmix, mixup, also inside noisy(...)); needs
image feature maps, so it refuses non-image tasks and models without a global pooling layer. The
generator, its optimiser and the EMA teacher are saved in state_dict() so a resumed run is exact.
Extra cost (learner_s): teacher forwards, the generator step, building the mixes.
"""
from __future__ import annotations

import copy
import math

from pydantic import Field

from bench.config import Knobs
from bench.errors import UsageError
from bench.learners._affine import mixer_inside, require_image
from bench.learners.base import Learner, StepBatch, register_learner


class AdAutoMixKnobs(Knobs):
    mix_num: int = Field(3, ge=2, le=4, description="most images per mix (the original's mix_samples)")
    random_count: bool = Field(True, description="draw the count per step from 2..mix_num (the original's is_random)")
    alpha: float = Field(1.0, gt=0, description="Beta(alpha, alpha) of the mixing ratios")
    gen_lr: float = Field(1e-3, gt=0, description="learning rate of the generator's Adam")
    adv_weight: float = Field(0.3, ge=0, le=1, description="adversarial steps minimise -w L + (1 - w) cos (the original's beta_radio)")
    adv_every: int = Field(2, ge=1, description="every n-th step is adversarial, the others cooperative (the original: 2)")
    mix_weight: float = Field(1.0, ge=0, description="weight of the loss on the classifier's mix (the original's head_mix_q)")
    mixup_ratio: float = Field(0.5, ge=0, le=1, description="with more than 2 images: share of the linear-mix loss in the batch loss")
    lam_margin: float = Field(0.03, ge=0, lt=0.5, description="ratios this close to 0 or 1 mix linearly (constant masks)")
    ema: float = Field(0.999, ge=0, lt=1, description="momentum of the EMA teacher")
    reduction: int = Field(2, ge=1, le=64, description="query/key channels = feature channels / reduction")


def last_global_pool(model):
    """The model's last AdaptiveAvgPool2d: its input is the spatial feature map."""
    from torch import nn

    pools = [m for m in model.modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
    return pools[-1] if pools else None


class FeatureMapTap:
    """Forward pre-hook on the last global pool: keeps the feature map [B, C, h, w] of the last forward."""

    def __init__(self, model):
        self.pool = last_global_pool(model)
        if self.pool is None:
            raise UsageError("AdAutoMix needs image feature maps: the model has no global pooling layer")
        self.map = None
        self.pool.register_forward_pre_hook(self._keep)

    def _keep(self, module, args):
        self.map = args[0]


def build_generator(channels: int, reduction: int):
    import torch
    from torch import nn

    class MixGenerator(nn.Module):
        """Cross-attention mask generator for m images (see the module docstring)."""

        def __init__(self):
            super().__init__()
            c, d = channels + 1, max(channels // reduction, 1)  # + the ratio channel
            self.q = nn.Sequential(nn.Conv2d(c, d, 1), nn.ReLU())
            self.k = nn.Sequential(nn.Conv2d(c, d, 1), nn.ReLU())
            self.v = nn.Conv2d(c, 1, 1)
            self.dim = d
            for m in self.modules():  # the original's init: normal(0, 0.01), zero bias
                if isinstance(m, nn.Conv2d):
                    nn.init.normal_(m.weight, std=0.01)
                    nn.init.zeros_(m.bias)

        def forward(self, maps, lam, size):
            """maps: m feature maps [B, C, h, w] (image i of every mix); lam: m ratios (floats); size (H, W).
            Returns masks [B, m, H, W] summing to 1 over m."""
            b, _, h, w = maps[0].shape
            z = [torch.cat([f, torch.full((b, 1, h, w), float(l), device=f.device, dtype=f.dtype)], 1)
                 for f, l in zip(maps, lam)]
            q = [self.q(f).flatten(2).transpose(1, 2) for f in z]  # [B, hw, d]
            k = [self.k(f).flatten(2) for f in z]                  # [B, d, hw]
            logits = []
            for i, f in enumerate(z):
                scores = sum(q[i] @ k[j] for j in range(len(z)) if j != i) / math.sqrt(self.dim)
                v = self.v(f).flatten(2).transpose(1, 2)            # [B, hw, 1]
                logits.append((torch.softmax(scores.float(), -1) @ v.float()).view(b, 1, h, w))
            logits = nn.functional.interpolate(torch.cat(logits, 1), size=size, mode="nearest")
            return torch.softmax(logits, dim=1)

    return MixGenerator()


@register_learner("adautomix")
class AdAutoMix(Learner):
    Knobs = AdAutoMixKnobs
    semantics = 2  # ratio-mixed labels, Beta ratios per batch, up to 3 images, alternating adversarial/cooperative
    #                generator on the EMA teacher's logits, separately drawn classifier mix, EMA 0.999
    description = "Adversarial AutoMixup: attention mask generator trained against the EMA classifier, cosine term"

    @classmethod
    def check(cls, task, upstream) -> None:
        require_image("AdAutoMix", "image feature maps", task)
        mixer = mixer_inside(upstream)
        if mixer is not None:
            raise UsageError(f"AdAutoMix replaces mixing; upstream '{upstream}' already mixes ({mixer}): use a "
                             f"non-mixing upstream (none, rand-*, trivialaug, autoaug-*, noisy(P,<those>))")

    def __init__(self, ctx, knobs=None):
        import torch

        from bench.seeding import seeded_global

        super().__init__(ctx, knobs)
        self.teacher = copy.deepcopy(ctx.model).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.tap = FeatureMapTap(self.teacher)
        channels = self.probe_channels()
        with seeded_global(ctx.spec.seed, "adautomix", "generator-init"):
            self.generator = build_generator(channels, self.knobs.reduction).to(ctx.device)
        self.gen_opt = torch.optim.Adam(self.generator.parameters(), lr=self.knobs.gen_lr)
        self.last: dict = {}  # the latest step's mixes and losses (diagnostics, tests)
        self.start_epoch(0)

    def probe_channels(self) -> int:
        import torch

        task = self.ctx.task
        c = task.channels(self.ctx.spec) if hasattr(task, "channels") else getattr(task, "in_channels", 1)
        with torch.no_grad():
            self.teacher.features(torch.zeros(1, c, 32, 32, device=self.ctx.device))
        if self.tap.map is None or self.tap.map.ndim != 4:
            raise UsageError("AdAutoMix needs image feature maps: the model's global pool sees no [B, C, h, w] map")
        return int(self.tap.map.shape[1])

    def start_epoch(self, epoch: int) -> None:
        self.n = 0
        self.sums = dict(gen_loss=0.0, gen_cos=0.0, adv_steps=0.0, mix_loss=0.0, mask_area=0.0)

    # ---- the parts ---------------------------------------------------------------------------
    def teacher_maps(self, x):
        """Feature maps [B, C, h, w] of x under the EMA teacher."""
        self.teacher.features(x)
        return self.tap.map

    def draw(self, n: int, generator):
        """One step's draws: (generator's (perms, ratios), classifier's (perms, ratios)); ratios are floats."""
        import torch

        k = self.knobs
        m = int(torch.randint(2, k.mix_num + 1, (1,), generator=generator)) if k.random_count else k.mix_num
        conc = torch.full((m, 2), float(k.alpha))
        lam = torch._sample_dirichlet(conc, generator=generator)[:, 0].tolist()  # m Beta(alpha, alpha) draws
        perm = lambda: torch.randperm(n, generator=generator)  # noqa: E731
        if m == 2:
            ident = torch.arange(n)
            return ([ident, perm()], [lam[0], 1 - lam[0]]), ([ident, perm()], [lam[1], 1 - lam[1]])
        ratios = [v / sum(lam) for v in lam]
        return ([perm() for _ in range(m)], ratios), ([perm() for _ in range(m)], ratios)

    @staticmethod
    def mixed_targets(y, perms, lam):
        return sum(l * y[p] for p, l in zip(perms, lam))

    def masks(self, maps, perms, lam, size):
        return self.generator([maps[p] for p in perms], lam, size)

    def apply(self, x, perms, masks):
        return sum(masks[:, i:i + 1] * x[p] for i, p in enumerate(perms))

    def generator_step(self, x, y, maps, perms, lam, adversarial: bool) -> dict[str, float]:
        """One step of the generator on the EMA teacher; the classifier is not involved."""
        import torch
        import torch.nn.functional as F

        ctx = self.ctx
        masks = self.masks(maps, perms, lam, x.shape[-2:])
        x_mix = self.apply(x, perms, masks)
        with ctx.autocast():
            pred_mix = self.teacher(x_mix).float()
        loss = ctx.task.loss(pred_mix, self.mixed_targets(y, perms, lam))
        with torch.no_grad(), ctx.autocast():
            preds = [self.teacher(x[p]).float() for p in perms]
        cos = sum(l * F.cosine_similarity(pred_mix, pr, dim=-1) for pr, l in zip(preds, lam)).mean()
        w = self.knobs.adv_weight
        gen_loss = -w * loss + (1 - w) * cos if adversarial else loss
        params = list(self.generator.parameters())
        grads = torch.autograd.grad(gen_loss, params)
        for p, g in zip(params, grads):
            p.grad = g
        self.gen_opt.step()
        self.gen_opt.zero_grad(set_to_none=True)
        return {"gen_loss": float(loss.detach()), "gen_cos": float(cos.detach()), "adv_steps": float(adversarial),
                "mask_area": float(masks[:, 0].mean().detach())}

    def classifier_mix(self, x, y, maps, perms, lam):
        """The classifier's mix: the generator's masks (no gradient), constant ratios near 0 or 1."""
        import torch

        margin = self.knobs.lam_margin
        if lam[0] <= margin or lam[0] >= 1 - margin:  # the original tests the first ratio
            masks = torch.stack([torch.full(x.shape[-2:], l, device=x.device) for l in lam]).expand(len(x), -1, -1, -1)
        else:
            with torch.no_grad():
                masks = self.masks(maps, perms, lam, x.shape[-2:])
        return self.apply(x, perms, masks), self.mixed_targets(y, perms, lam)

    # ---- the step ----------------------------------------------------------------------------
    def loss(self, batch: StepBatch):
        import torch

        ctx, k = self.ctx, self.knobs
        x, y, n = batch.x, batch.y_soft, len(batch.x)
        with ctx.timed():
            (g_perms, g_lam), (c_perms, c_lam) = self.draw(n, ctx.generator("adautomix", batch.epoch, batch.index))
            with torch.no_grad():
                maps = self.teacher_maps(x)
            stats = self.generator_step(x, y, maps, g_perms, g_lam, adversarial=batch.step % k.adv_every == 0)
            x_mix, y_mix = self.classifier_mix(x, y, maps, c_perms, c_lam)
        logits = self.forward(x).float()
        one = ctx.task.loss(logits, y)
        if len(c_perms) > 2:  # the original's re-weighted one-hot loss: part of it on the linear mix
            x_lin = sum(l * x[p] for p, l in zip(c_perms, c_lam))
            one = (1 - k.mixup_ratio) * one + k.mixup_ratio * ctx.task.loss(self.forward(x_lin).float(), y_mix)
        mix_loss = ctx.task.loss(self.forward(x_mix).float(), y_mix)
        loss = one + k.mix_weight * mix_loss
        stats["mix_loss"] = float(mix_loss.detach())
        self.last = dict(x_mix=x_mix.detach(), y_mix=y_mix.detach(), perms=c_perms, lam=c_lam, **stats)
        for key, v in stats.items():
            self.sums[key] += v * n
        self.n += n
        return loss, logits.detach()

    def after_step(self, batch: StepBatch) -> None:
        """EMA teacher update (parameters averaged, buffers copied: the teacher runs in eval mode)."""
        import torch

        m = self.knobs.ema
        with self.ctx.timed(), torch.no_grad():
            for pt, p in zip(self.teacher.parameters(), self.ctx.model.parameters()):
                pt.mul_(m).add_(p.detach(), alpha=1 - m)
            for bt, b in zip(self.teacher.buffers(), self.ctx.model.buffers()):
                bt.copy_(b)

    def end_epoch(self, epoch: int, last: bool) -> dict[str, float]:
        if not self.n:
            return {}
        return {f"adautomix_{k}": v / self.n for k, v in self.sums.items()}

    def state_dict(self) -> dict:
        cpu = lambda sd: {k: v.detach().cpu().clone() for k, v in sd.items()}  # noqa: E731
        return {"generator": cpu(self.generator.state_dict()), "gen_opt": copy.deepcopy(self.gen_opt.state_dict()),
                "teacher": cpu(self.teacher.state_dict())}

    def load_state_dict(self, state) -> None:
        if not state:
            return
        dev = self.ctx.device
        self.generator.load_state_dict({k: v.to(dev) for k, v in state["generator"].items()})
        self.gen_opt.load_state_dict(state["gen_opt"])
        self.teacher.load_state_dict({k: v.to(dev) for k, v in state["teacher"].items()})
