"""`adautomix`: Adversarial AutoMixup (Qin, Jin, Jiang, El-Yacoubi, Gao, ICLR 2024) as a learner.

A mixed-sample generator is trained adversarially against the classifier:

- features: an EMA teacher (a moving average of the classifier, `ema` momentum) gives the spatial
  feature map of every image (the input of the model's last global pooling layer);
- generator: each sample is mixed with `mix_num - 1` partners (random permutations of the batch) and
  mixing ratios lam ~ Dirichlet(alpha). For every image i of a mix, cross-attention between its
  ratio-scaled feature map (queries, values) and the mixture's feature map (keys) gives a mask
  logit per location; log(lam_i) is added and a softmax across the images gives masks that sum to 1
  at every pixel (upsampled to the image size). The mix is sum_i mask_i * x_i and its label
  sum_i area(mask_i) * y_i (labels mixed by the mask areas);
- generator step (its own Adam optimiser, inside the learner): maximise the classifier's loss on its
  mixes, minus `cos_weight` times a cosine constraint: 1 - cos(teacher features of the mix,
  area-weighted teacher features of its images), which keeps the mix meaning what its label says
  and bounds how far the adversary can drift. The classifier's BatchNorm statistics are restored
  after this forward, and only the generator's parameters receive its gradient;
- classifier step (the trainer's optimiser): the task loss on the batch plus `mix_weight` times the
  loss on the updated generator's (detached) mixes, in one forward.

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
    mix_num: int = Field(2, ge=2, le=4, description="images per mix")
    alpha: float = Field(1.0, gt=0, description="Dirichlet concentration of the mixing ratios")
    gen_lr: float = Field(1e-3, gt=0, description="learning rate of the generator's Adam")
    cos_weight: float = Field(1.0, ge=0, description="weight of the cosine-similarity constraint in the generator loss")
    mix_weight: float = Field(1.0, ge=0, description="weight of the loss on the mixes in the classifier loss")
    ema: float = Field(0.99, ge=0, lt=1, description="momentum of the EMA teacher (short CPU schedules: below the paper's 0.999)")
    attn_dim: int = Field(32, ge=4, le=512, description="width of the generator's query/key/value projections")


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


def build_generator(channels: int, dim: int):
    import torch
    from torch import nn

    class MixGenerator(nn.Module):
        """Cross-attention mask generator for m images (see the module docstring)."""

        def __init__(self):
            super().__init__()
            self.q = nn.Conv2d(channels, dim, 1)
            self.k = nn.Conv2d(channels, dim, 1)
            self.v = nn.Conv2d(channels, dim, 1)
            self.out = nn.Conv2d(dim, 1, 1)

        def forward(self, maps, lam, size):
            """maps: list of m feature maps [B, C, h, w] (image i of every mix); lam [B, m]; size (H, W).
            Returns masks [B, m, H, W] summing to 1 over m."""
            b, _, h, w = maps[0].shape
            scaled = [z * lam[:, i].view(-1, 1, 1, 1) for i, z in enumerate(maps)]
            keys = self.k(sum(scaled)).flatten(2)  # [B, d, hw]: the mixture's content
            logits = []
            for i, z in enumerate(scaled):
                q, v = self.q(z).flatten(2), self.v(z).flatten(2)
                attn = torch.softmax(q.transpose(1, 2) @ keys / math.sqrt(q.shape[1]), dim=-1)  # [B, hw, hw]
                o = (v @ attn.transpose(1, 2)).view(b, -1, h, w)
                logits.append(self.out(o))
            logits = torch.cat(logits, 1) + torch.log(lam.clamp_min(1e-6)).view(b, -1, 1, 1)
            logits = nn.functional.interpolate(logits, size=size, mode="bilinear", align_corners=False)
            return torch.softmax(logits, dim=1)

    return MixGenerator()


@register_learner("adautomix")
class AdAutoMix(Learner):
    Knobs = AdAutoMixKnobs
    description = "Adversarial AutoMixup: attention mask generator trained against the classifier, EMA teacher, cosine constraint"

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
            self.generator = build_generator(channels, self.knobs.attn_dim).to(ctx.device)
        self.gen_opt = torch.optim.Adam(self.generator.parameters(), lr=self.knobs.gen_lr)
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
        self.n, self.sums = 0, dict(adv_loss=0.0, drift=0.0, mask_area=0.0)

    # ---- the parts ---------------------------------------------------------------------------
    def teacher_features(self, x):
        """(feature map, pooled features) of x under the EMA teacher (gradient flows to x only)."""
        h = self.teacher.features(x)
        return self.tap.map, h

    def draw(self, n: int, generator):
        """Partners (m - 1 permutations, the first is identity) and ratios lam [n, m]."""
        import torch

        m = self.knobs.mix_num
        perms = [torch.arange(n)] + [torch.randperm(n, generator=generator) for _ in range(m - 1)]
        lam = torch._sample_dirichlet(torch.full((n, m), float(self.knobs.alpha)), generator=generator)
        return perms, lam.to(self.ctx.device)

    def mix(self, x, y, maps, perms, lam):
        """(mixed images, mixed labels, mask areas [B, m]) from the generator's masks."""
        masks = self.generator([maps[p] for p in perms], lam, x.shape[-2:])
        xs = [x[p] for p in perms]
        x_mix = sum(masks[:, i:i + 1] * xi for i, xi in enumerate(xs))
        area = masks.mean(dim=(2, 3))
        y_mix = sum(area[:, i:i + 1] * y[p] for i, p in enumerate(perms))
        return x_mix, y_mix, area

    def drift(self, x_mix, feats, perms, area):
        """1 - cos(teacher features of the mix, area-weighted teacher features of its images), per sample."""
        import torch.nn.functional as F

        _, h_mix = self.teacher_features(x_mix)
        target = sum(area[:, i:i + 1] * feats[p] for i, p in enumerate(perms))
        return 1 - F.cosine_similarity(h_mix.float(), target.float(), dim=1)

    def generator_step(self, x, y, maps, feats, perms, lam) -> dict[str, float]:
        """One adversarial step of the generator; the classifier's weights and BN statistics are untouched."""
        import torch

        ctx, model = self.ctx, self.ctx.model
        x_mix, y_mix, area = self.mix(x, y, maps, perms, lam)
        buffers = {k: b.clone() for k, b in model.named_buffers()}
        with ctx.autocast():
            logits = model(x_mix).float()
        adv = ctx.task.loss(logits, y_mix)
        drift = self.drift(x_mix, feats, perms, area).mean()
        gen_loss = -adv + self.knobs.cos_weight * drift
        params = list(self.generator.parameters())
        grads = torch.autograd.grad(gen_loss, params)
        with torch.no_grad():  # after the backward, which reads the running statistics
            for k, b in model.named_buffers():
                b.copy_(buffers[k])
        for p, g in zip(params, grads):
            p.grad = g
        self.gen_opt.step()
        self.gen_opt.zero_grad(set_to_none=True)
        return {"adv_loss": float(adv.detach()), "drift": float(drift.detach()), "mask_area": float(area[:, 0].mean().detach())}

    # ---- the step ----------------------------------------------------------------------------
    def loss(self, batch: StepBatch):
        import torch

        ctx = self.ctx
        x, y, n = batch.x, batch.y_soft, len(batch.x)
        with ctx.timed():
            perms, lam = self.draw(n, ctx.generator("adautomix", batch.epoch, batch.index))
            with torch.no_grad():
                maps, feats = self.teacher_features(x)
            stats = self.generator_step(x, y, maps, feats, perms, lam)
            with torch.no_grad():
                x_mix, y_mix, _ = self.mix(x, y, maps, perms, lam)
        with ctx.autocast():  # one forward for both halves: train-mode BatchNorm sees one batch
            logits = ctx.model(torch.cat([x, x_mix])).float()
        loss = ctx.task.loss(logits[:n], y) + self.knobs.mix_weight * ctx.task.loss(logits[n:], y_mix)
        for k, v in stats.items():
            self.sums[k] += v * n
        self.n += n
        return loss, logits[:n].detach()

    def after_step(self, batch: StepBatch) -> None:
        """EMA teacher update (parameters averaged, buffers copied)."""
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
