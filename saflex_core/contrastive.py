"""Contrastive variant (CLIP fine-tuning, FLYP-style), design/SAFLEX.md section 7.

The class-prompt text embeddings T [C, d] (L2-normalised) times the logit scale s act as a linear
head without bias, W = s * T, on the L2-normalised image embedding h [n, d]: logits = s * h T^T.
Sections 3-5 then apply unchanged on the image-to-text direction (g = 0 because there is no bias);
the weights w multiply each image's terms of the symmetric CLIP loss in both directions.

Embeddings are assumed already normalised; nothing here normalises them. ``logit_scale`` is the
multiplier s itself (e.g. ``model.logit_scale.exp()``), a float or a 0-dim tensor.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .adapter import Saflex
from .config import SaflexConfig
from .core import ValSummary, validation_summary

__all__ = ["clip_class_logits", "contrastive_summary", "ContrastiveSaflex", "weighted_clip_loss"]


def clip_class_logits(img_emb: torch.Tensor, txt_emb: torch.Tensor, logit_scale) -> torch.Tensor:
    """logits = s * h T^T.  clip_class_logits(img_emb [n, d], txt_emb [C, d], logit_scale) -> [n, C]."""
    return logit_scale * img_emb @ txt_emb.t()


@torch.no_grad()
def contrastive_summary(
    img_emb_ref: torch.Tensor,
    txt_emb: torch.Tensor,
    logit_scale,
    y_ref: torch.Tensor,
    residual: str = "ce",
    T: float = 2.0,
    margin: float = 1.0,
) -> ValSummary:
    """ValSummary (G [C, d], g = 0 [C]) of the reference loss w.r.t. the head W = s * T.

    contrastive_summary(img_emb_ref [m, d], txt_emb [C, d], logit_scale, y_ref [m, C] | [m],
                        residual="ce", T=2.0, margin=1.0) -> ValSummary
    """
    logits = clip_class_logits(img_emb_ref, txt_emb, logit_scale)
    return validation_summary(img_emb_ref, logits, y_ref, residual=residual, T=T, margin=margin, bias=False)


class ContrastiveSaflex:
    """Saflex for CLIP-style models: class-prompt embeddings as the head.

    ContrastiveSaflex(cfg: SaflexConfig | None = None)
      .active(epoch) -> bool ; .needs_refresh(step) -> bool
      .refresh(img_emb_ref [m,d], txt_emb [C,d], logit_scale, y_ref [m,C] | [m]) -> ValSummary
      .reweight(img_emb [n,d], txt_emb [C,d], logit_scale, y [n,C] | [n]) -> (w [n], q [n,C], stats)

    w feeds :func:`weighted_clip_loss`; q (soft labels over the C class prompts) can feed
    ``weighted_soft_cross_entropy(clip_class_logits(img, txt, s), q, w)`` when training with a
    class-prompt loss; the batch contrastive loss itself has no place for q.
    """

    def __init__(self, cfg: SaflexConfig | None = None) -> None:
        self.inner = Saflex(cfg, bias=False)

    @property
    def cfg(self) -> SaflexConfig:
        return self.inner.cfg

    @property
    def summary(self) -> ValSummary | None:
        return self.inner.summary

    def active(self, epoch: int) -> bool:
        return self.inner.active(epoch)

    def needs_refresh(self, step: int) -> bool:
        return self.inner.needs_refresh(step)

    @property
    def period(self) -> int:
        return self.inner.period

    @torch.no_grad()
    def refresh(self, img_emb_ref, txt_emb, logit_scale, y_ref) -> ValSummary:
        return self.inner.refresh(img_emb_ref, clip_class_logits(img_emb_ref, txt_emb, logit_scale), y_ref)

    @torch.no_grad()
    def reweight(self, img_emb, txt_emb, logit_scale, y):
        return self.inner.reweight(img_emb, clip_class_logits(img_emb, txt_emb, logit_scale), y)


def weighted_clip_loss(
    img_emb: torch.Tensor, txt_emb: torch.Tensor, logit_scale, w: torch.Tensor | None = None
) -> torch.Tensor:
    """Symmetric CLIP loss with per-pair weights.

    weighted_clip_loss(img_emb [n, d], txt_emb [n, d] (row i = caption/prompt of image i),
                       logit_scale, w [n] or None) -> scalar

    L = 1/2 * [ (1/n) sum_i w_i CE(s h_i T^T, i)            image -> text: row i of the logit matrix
              + (1/n) sum_j w_j CE(s t_j H^T, j) ]           text -> image: column j, weighted by w_j
    With w = None or all ones this is exactly the standard CLIP loss. Gradients flow into both
    embeddings and logit_scale; w is treated as a constant.
    """
    logits = logit_scale * img_emb @ txt_emb.t()  # [n, n]
    n = logits.shape[0]
    target = torch.arange(n, device=logits.device)
    l_i2t = F.cross_entropy(logits, target, reduction="none")
    l_t2i = F.cross_entropy(logits.t(), target, reduction="none")
    if w is not None:
        wd = w.detach().to(l_i2t.dtype)
        l_i2t = l_i2t * wd
        l_t2i = l_t2i * wd
    return 0.5 * (l_i2t.mean() + l_t2i.mean())
