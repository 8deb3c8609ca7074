"""saflex_core — SAFLEX (ICLR 2024) as plain tensor math, usable from any training loop.

Math only: tensors in, tensors out; no datasets, no I/O, no imports of bench/ or baselines/.
Algorithm: design/SAFLEX.md. Shapes: n augmented samples, m reference samples, d feature dim,
C classes. Labels ``y`` are probability rows [n, C] (one-hot or MixUp/CutMix-mixed) or integer
class indices [n].

Configuration
-------------
SaflexConfig(eps=0.0, rho=None, weights="sigmoid", tau=1.0, normalize=True, labels="lp", label_T=1.0,
             val_batch=512, refresh="auto", bn_mode="train", warmup_epochs=0, reference="val",
             residual="ce", residual_T=2.0, residual_margin=1.0, clean_weight=0.0, ref_ema=0.0,
             ref_budget=0.125, ref_ramp=True)
    frozen dataclass; string values are coerced ("0.05", "none", "true").
    .replace(**knobs) -> SaflexConfig        validated copy ("saflex." prefix accepted)
    .to_dict() -> dict ; SaflexConfig.from_dict(d) -> SaflexConfig ; SaflexConfig.knob_names() -> tuple[str, ...]
ConfigError(ValueError)                      bad knob name/value; one-line message

Math (all results detached, float32 or wider)
----
validation_summary(h_val [m,d], logits_val [m,C], y_val [m,C]|[m], residual="ce", T=2.0,
                   margin=1.0, bias=True) -> ValSummary(G [C,d], g [C])
    G = sum_v omega_v r_v h_v^T, g = sum_v omega_v r_v; residual ce: r = p - y; tempered:
    r = softmax(z/T) - y; margin: class-balanced r = softmax(z - margin*y) - y (see
    validation_residual).
validation_residual(logits_val, y_val, residual="ce", T=2.0, margin=1.0) -> (r [m,C], omega [m])
sample_scores(summary, h [n,d]) -> u [n,C]                 u = h G^T + g
alignment(p [n,C], q [n,C], u [n,C]) -> a [n]              a = (p - q) . u
solve_weights_labels(p [n,C], y [n,C]|[n], u [n,C], cfg=None) -> (w [n], q [n,C])
    lp labels: q = (1-eps) y + eps onehot(argmin u); hard weights w = 1[a > 0] (budget rho: LP
    optimum, top floor(rho n) plus one fractional); sigmoid: sigmoid(a / (tau mean|a|)), mean-1
    normalised if cfg.normalize (then w in (0, n]); kl labels: q ∝ ((1-eps) y + eps/C) exp(-u/label_T).
weighted_soft_cross_entropy(logits [n,C], q [n,C]|[n], w [n]|None=None) -> scalar
    (1/n) sum_i w_i CE_soft(z_i, q_i), differentiable w.r.t. logits.
reweight_stats(w, q, y) -> {"w_mean", "w_zero_frac", "label_shift", "argmax_change"} (floats)
as_probs(y, num_classes, dtype=float32) -> [n,C]

Training-loop adapter
---------------------
Saflex(cfg=None, bias=True)
    .active(epoch) -> bool ; .needs_refresh(step) -> bool
    .refresh(h_ref, logits_ref, y_ref) -> ValSummary ; .scores(h) -> u
    .reweight(h, logits, y) -> (w, q, stats) ; .loss(logits, y, h, clean_logits=None, clean_y=None)
        -> (loss, w, q, stats) ; .state_dict() / .load_state_dict(d)
bn_mode_context(model, mode: "train"|"eval")   context manager for the reference forward
sample_val_indices(m, val_batch, generator=None) -> LongTensor | None (None = whole split)

Contrastive (CLIP / FLYP)
-------------------------
clip_class_logits(img_emb [n,d], txt_emb [C,d], logit_scale) -> [n,C]
contrastive_summary(img_emb_ref, txt_emb, logit_scale, y_ref, residual="ce", T=2.0, margin=1.0) -> ValSummary
ContrastiveSaflex(cfg=None): .refresh(img_emb_ref, txt_emb, s, y_ref); .reweight(img_emb, txt_emb, s, y)
weighted_clip_loss(img_emb [n,d], txt_emb [n,d], logit_scale, w [n]|None=None) -> scalar
"""
import importlib

# name -> submodule: imported on first use, so `SaflexConfig` (knob validation, `list knobs`) costs
# no torch import
_WHERE = {
    "Saflex": "adapter", "bn_mode_context": "adapter", "sample_val_indices": "adapter",
    "ConfigError": "config", "SaflexConfig": "config",
    "ContrastiveSaflex": "contrastive", "clip_class_logits": "contrastive", "contrastive_summary": "contrastive",
    "weighted_clip_loss": "contrastive",
    "ValSummary": "core", "alignment": "core", "as_probs": "core", "reweight_stats": "core", "sample_scores": "core",
    "solve_weights_labels": "core", "validation_residual": "core", "validation_summary": "core",
    "weighted_soft_cross_entropy": "core",
}


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_WHERE))


__all__ = [
    "SaflexConfig",
    "ConfigError",
    "ValSummary",
    "validation_residual",
    "validation_summary",
    "sample_scores",
    "alignment",
    "solve_weights_labels",
    "weighted_soft_cross_entropy",
    "reweight_stats",
    "as_probs",
    "Saflex",
    "bn_mode_context",
    "sample_val_indices",
    "ContrastiveSaflex",
    "clip_class_logits",
    "contrastive_summary",
    "weighted_clip_loss",
]
