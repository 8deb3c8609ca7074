"""SAFLEX math on tensors: validation summary (G, g), per-sample scores u, the closed-form LP
solution (w, q), and the weighted soft cross-entropy.

Notation (design/SAFLEX.md): features h = phi(x) [.., d], linear head z = W h + b [.., C],
p = softmax(z), upstream label y on the simplex (one-hot or MixUp/CutMix-mixed).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .config import RESIDUALS, ConfigError, SaflexConfig

__all__ = [
    "ValSummary",
    "as_probs",
    "validation_residual",
    "validation_summary",
    "sample_scores",
    "alignment",
    "solve_weights_labels",
    "weighted_soft_cross_entropy",
    "reweight_stats",
]


class ValSummary(NamedTuple):
    """Last-layer validation gradient: G = dL_ref/dW [C, d], g = dL_ref/db [C] (zeros if no bias)."""

    G: torch.Tensor
    g: torch.Tensor


def _work_dtype(*ts: torch.Tensor) -> torch.dtype:
    dt = torch.float32
    for t in ts:
        if t.is_floating_point():
            dt = torch.promote_types(dt, t.dtype)
    return dt


def as_probs(y: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Labels as probability rows [n, C]: integer class indices [n] become one-hot; float [n, C] passes."""
    if not y.is_floating_point():
        if y.dim() != 1:
            raise ValueError(f"integer labels must have shape [n], got {tuple(y.shape)}")
        return F.one_hot(y.long(), num_classes).to(dtype)
    if y.dim() != 2 or y.shape[1] != num_classes:
        raise ValueError(f"soft labels must have shape [n, {num_classes}], got {tuple(y.shape)}")
    return y.to(dtype)


@torch.no_grad()
def validation_residual(
    logits_val: torch.Tensor,
    y_val: torch.Tensor,
    residual: str = "ce",
    T: float = 2.0,
    margin: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-reference-sample residual r [m, C] and sample weights omega [m] (summing to 1).

    The summary is G = sum_v omega_v r_v h_v^T, g = sum_v omega_v r_v; each choice is the exact
    gradient w.r.t. (W, b) of a reference loss L_ref = sum_v omega_v l(z_v, y_v):

    - ``"ce"``: r = softmax(z) - y, omega = 1/m.  L_ref = mean CE(z, y) (the paper's choice).
    - ``"tempered"``: r = softmax(z / T) - y, omega = 1/m.  L_ref = mean T * CE(z / T, y).
      With T > 1 the residual of confidently fitted samples decays much more slowly.
    - ``"margin"``: class-balanced margin residual. r = softmax(z - M * y) - y (an LDAM-style
      logit margin M = ``margin`` on the labelled class) with class-balanced weights
      omega_v = sum_c y_vc / (K * n_c), n_c = sum_v y_vc (soft class counts), K = number of
      classes present, so every present class carries total weight 1/K.
      L_ref = sum_v omega_v CE(z_v - M y_v, y_v). The residual only vanishes once every reference
      sample is fitted with a logit margin clearly above M, and the balancing keeps the majority
      class from dominating G (the unbalanced version collapsed a model to the majority class).
    """
    C = logits_val.shape[1]
    dt = _work_dtype(logits_val)
    z = logits_val.detach().to(dt)
    y = as_probs(y_val, C, dt)
    m = z.shape[0]
    if residual == "ce":
        r = torch.softmax(z, dim=1) - y
        omega = torch.full((m,), 1.0 / max(m, 1), dtype=dt, device=z.device)
    elif residual == "tempered":
        r = torch.softmax(z / T, dim=1) - y
        omega = torch.full((m,), 1.0 / max(m, 1), dtype=dt, device=z.device)
    elif residual == "margin":
        r = torch.softmax(z - margin * y, dim=1) - y
        counts = y.sum(0)  # [C] soft class counts
        present = counts > 0
        K = present.sum().clamp_min(1).to(dt)  # a tensor: no host sync on GPU
        inv = torch.where(present, 1.0 / (counts.clamp_min(1e-12) * K), torch.zeros_like(counts))
        omega = y @ inv
    else:
        raise ConfigError(f"saflex.residual must be one of {', '.join(RESIDUALS)} (got {residual!r})")
    return r, omega


@torch.no_grad()
def validation_summary(
    h_val: torch.Tensor,
    logits_val: torch.Tensor,
    y_val: torch.Tensor,
    residual: str = "ce",
    T: float = 2.0,
    margin: float = 1.0,
    bias: bool = True,
) -> ValSummary:
    """Summary of the reference (validation) gradient of the last layer.

    validation_summary(h_val [m, d], logits_val [m, C], y_val [m, C] probs or [m] int,
                       residual="ce"|"tempered"|"margin", T=2.0, margin=1.0, bias=True)
        -> ValSummary(G [C, d], g [C])

    G = sum_v omega_v r_v h_v^T and g = sum_v omega_v r_v (omega = 1/m for ce and tempered), i.e.
    exactly (dL_ref/dW, dL_ref/db) of the reference loss described in :func:`validation_residual`.
    ``bias=False`` (heads without bias, e.g. CLIP) returns g = 0. Detached, float32 or wider.
    """
    dt = _work_dtype(h_val, logits_val)
    h = h_val.detach().to(dt)
    if h.dim() != 2 or h.shape[0] != logits_val.shape[0]:
        raise ValueError(f"h_val must be [m, d] matching logits_val [m, C]; got {tuple(h.shape)} and {tuple(logits_val.shape)}")
    r, omega = validation_residual(logits_val, y_val, residual=residual, T=T, margin=margin)
    wr = r.to(dt) * omega.to(dt)[:, None]  # [m, C]
    G = wr.t() @ h  # [C, d]
    g = wr.sum(0) if bias else torch.zeros(r.shape[1], dtype=dt, device=h.device)
    return ValSummary(G, g)


@torch.no_grad()
def sample_scores(summary: ValSummary, h: torch.Tensor) -> torch.Tensor:
    """u = h G^T + g  [n, C]: how the reference loss wants the logits at each feature h_i to move.

    sample_scores(summary: ValSummary, h [n, d]) -> u [n, C]
    """
    G, g = summary
    hh = h.detach().to(G.dtype)
    return hh @ G.t() + g


@torch.no_grad()
def alignment(p: torch.Tensor, q: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """a_i = (p_i - q_i) . u_i  [n]: first-order decrease of the reference loss per unit step on sample i."""
    return ((p - q) * u).sum(1)


def _hard_weights(a: torch.Tensor, rho: float | None) -> torch.Tensor:
    n = a.shape[0]
    pos = a > 0
    if rho is None:
        return pos.to(a.dtype)
    # Fractional knapsack with unit costs: the LP optimum takes the floor(rho*n) largest positive a_i
    # at weight 1 and, when rho*n is not an integer, the next positive one at the fractional remainder.
    budget = rho * n
    k = int(budget + 1e-9)
    frac = budget - k
    if frac < 1e-9:
        frac = 0.0
    w = torch.zeros_like(a)
    order = torch.argsort(a, descending=True, stable=True)
    if k > 0:
        w[order[:k]] = 1.0
    if frac > 0 and k < n:
        w[order[k]] = frac
    return w * pos.to(a.dtype)


@torch.no_grad()
def solve_weights_labels(
    p: torch.Tensor,
    y: torch.Tensor,
    u: torch.Tensor,
    cfg: SaflexConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample weights and soft labels from the SAFLEX inner problem (SAFLEX.md section 4).

    solve_weights_labels(p [n, C] probs, y [n, C] probs or [n] int, u [n, C], cfg=SaflexConfig())
        -> (w [n], q [n, C]), detached, dtype float32 or wider.

    labels="lp" (exact LP optimum, for one-hot AND soft y, since y on the simplex leaves exactly
    eps of mass free in q >= (1-eps) y):  q_i = (1-eps) y_i + eps * onehot(argmin_c u_ic).
    labels="kl":  q_i ∝ ytilde_i * exp(-u_i / label_T),  ytilde_i = (1-eps) y_i + eps / C
    (the minimiser of q.u + label_T * KL(q || ytilde)).

    a_i = (p_i - q_i) . u_i.
    weights="hard": w_i = 1[a_i > 0] in {0, 1}. With a budget rho: the floor(rho*n) largest
      positive a_i get 1 and, if rho*n is fractional, the next positive one gets rho*n - floor(rho*n)
      (that fractional weight is what the LP optimum does; "top rho*n" alone is optimal only for
      integer rho*n). Hard weights are never normalised.
    weights="sigmoid": w_i = sigmoid(a_i / (tau * mean|a|)) in (0, 1); with normalize=True rescaled
      to mean 1 over the batch, so w lies in (0, n] (not [0, 1]). If all a_i = 0 then w = 0.5
      (normalize=False) or 1 (normalize=True); never NaN.
    """
    cfg = cfg if cfg is not None else SaflexConfig()
    if p.dim() != 2 or u.shape != p.shape:
        raise ValueError(f"p and u must both be [n, C]; got {tuple(p.shape)} and {tuple(u.shape)}")
    n, C = p.shape
    dt = _work_dtype(p, u, y)
    p = p.detach().to(dt)
    u = u.detach().to(dt)
    y = as_probs(y.detach(), C, dt)
    eps = cfg.eps

    if cfg.labels == "lp":
        k = torch.argmin(u, dim=1)
        q = (1.0 - eps) * y + eps * F.one_hot(k, C).to(dt)
    else:  # "kl"
        ytilde = (1.0 - eps) * y + eps / C
        q = torch.softmax(torch.log(ytilde) - u / cfg.label_T, dim=1)

    a = alignment(p, q, u)
    if cfg.weights == "hard":
        w = _hard_weights(a, cfg.rho)
    else:  # "sigmoid"
        scale = cfg.tau * a.abs().mean() if n > 0 else a.new_tensor(1.0)
        scale = scale.clamp_min(torch.finfo(dt).tiny)
        w = torch.sigmoid(a / scale)
        if cfg.normalize and n > 0:
            w = w * (n / w.sum().clamp_min(torch.finfo(dt).tiny))
    return w.detach(), q.detach()


def weighted_soft_cross_entropy(
    logits: torch.Tensor, q: torch.Tensor, w: torch.Tensor | None = None
) -> torch.Tensor:
    """(1/n) sum_i w_i * CE_soft(z_i, q_i), CE_soft(z, q) = -sum_c q_c log softmax(z)_c.

    weighted_soft_cross_entropy(logits [n, C], q [n, C] probs or [n] int, w [n] or None) -> scalar.
    Differentiable w.r.t. logits (q and w are treated as constants). w=None means uniform weights 1.
    """
    C = logits.shape[1]
    logp = torch.log_softmax(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits, dim=1)
    qq = as_probs(q.detach(), C, logp.dtype)
    per = -(qq * logp).sum(1)
    if w is not None:
        per = per * w.detach().to(per.dtype)
    return per.mean() if per.numel() > 0 else per.sum()


@torch.no_grad()
def reweight_stats(w: torch.Tensor, q: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Diagnostics as python floats: w_mean, w_zero_frac, label_shift (mean |q - y|_1 / 2),
    argmax_change (fraction of samples where argmax q != argmax y)."""
    C = q.shape[1]
    y = as_probs(y, C, q.dtype)
    n = q.shape[0]
    if n == 0:
        return {"w_mean": 0.0, "w_zero_frac": 0.0, "label_shift": 0.0, "argmax_change": 0.0}
    return {
        "w_mean": float(w.float().mean()),
        "w_zero_frac": float((w == 0).float().mean()),
        "label_shift": float(((q - y).abs().sum(1) / 2).mean()),
        "argmax_change": float((q.argmax(1) != y.argmax(1)).float().mean()),
    }
