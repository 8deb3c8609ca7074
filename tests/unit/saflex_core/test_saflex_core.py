"""saflex_core: the five properties of design/SAFLEX.md section 8, plus config and BatchNorm handling.

Fast (a few seconds on CPU). float64 wherever an identity is checked.
"""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import linprog
from sklearn.metrics import roc_auc_score
from torch import nn

import saflex_core as sx
from saflex_core import (
    ConfigError,
    Saflex,
    SaflexConfig,
    alignment,
    bn_mode_context,
    sample_scores,
    solve_weights_labels,
    validation_summary,
    weighted_soft_cross_entropy,
)
from saflex_core.contrastive import (
    ContrastiveSaflex,
    clip_class_logits,
    contrastive_summary,
    weighted_clip_loss,
)

D64 = torch.float64


def _rand_simplex(n, C, g, soft: bool):
    if soft:
        # MixUp/CutMix-like: lambda-mixture of two one-hot labels, sometimes the same class,
        # plus some fully dense rows
        a = torch.randint(0, C, (n,), generator=g)
        b = torch.randint(0, C, (n,), generator=g)
        lam = torch.rand(n, generator=g, dtype=D64)
        y = lam[:, None] * F.one_hot(a, C).to(D64) + (1 - lam[:, None]) * F.one_hot(b, C).to(D64)
        dense = torch.rand(n, generator=g) < 0.3
        e = -torch.log(torch.rand(n, C, generator=g, dtype=D64))
        y[dense] = (e / e.sum(1, keepdim=True))[dense]
        return y
    return F.one_hot(torch.randint(0, C, (n,), generator=g), C).to(D64)


def _rand_instance(g, n, C, soft):
    p = torch.softmax(2 * torch.randn(n, C, generator=g, dtype=D64), 1)
    y = _rand_simplex(n, C, g, soft)
    u = torch.randn(n, C, generator=g, dtype=D64)
    return p, y, u


# ------------------------------------------------------------------------------------------------
# 1. closed form == LP optimum
# ------------------------------------------------------------------------------------------------
def _lp_optimum(p, y, u, eps, rho):
    """max sum_i w_i p_i.u_i - sum_ic s_ic u_ic  over (w, s = w q)  with
    0 <= w <= 1, sum_c s_ic = w_i, s_ic >= (1-eps) y_ic w_i, s >= 0, [sum w <= rho n]."""
    p, y, u = (t.numpy() for t in (p, y, u))
    n, C = p.shape
    nv = n + n * C
    c = np.concatenate([-(p * u).sum(1), u.reshape(-1)])  # minimise the negative objective
    A_eq = np.zeros((n, nv))
    for i in range(n):
        A_eq[i, i] = -1.0
        A_eq[i, n + i * C: n + (i + 1) * C] = 1.0
    b_eq = np.zeros(n)
    A_ub = np.zeros((n * C, nv))
    for i in range(n):
        for k in range(C):
            A_ub[i * C + k, i] = (1 - eps) * y[i, k]
            A_ub[i * C + k, n + i * C + k] = -1.0
    b_ub = np.zeros(n * C)
    if rho is not None:
        A_ub = np.vstack([A_ub, np.concatenate([np.ones(n), np.zeros(n * C)])[None]])
        b_ub = np.concatenate([b_ub, [rho * n]])
    bounds = [(0.0, 1.0)] * n + [(0.0, None)] * (n * C)
    res = linprog(c, A_ub=A_ub, b_ub=b_ub, A_eq=A_eq, b_eq=b_eq, bounds=bounds, method="highs")
    assert res.status == 0, res.message
    return -res.fun


@pytest.mark.parametrize("soft", [False, True], ids=["onehot", "soft"])
@pytest.mark.parametrize("rho", [None, 0.5, 0.37, 1.0], ids=["nobudget", "rho0.5", "rho0.37", "rho1"])
def test_closed_form_equals_lp_optimum(soft, rho):
    g = torch.Generator().manual_seed(1000 + int(soft) + int(100 * (rho or 0)))
    for trial in range(30):
        n = int(torch.randint(1, 13, (1,), generator=g))
        C = int(torch.randint(2, 7, (1,), generator=g))
        eps = [0.0, 0.1, 0.3, 1.0][trial % 4] if trial < 8 else float(torch.rand(1, generator=g))
        p, y, u = _rand_instance(g, n, C, soft)
        cfg = SaflexConfig(eps=eps, rho=rho, weights="hard")
        w, q = solve_weights_labels(p, y, u, cfg)
        assert w.dtype == D64 and q.dtype == D64
        # feasibility of the closed-form point (w, s = w q)
        assert torch.all(w >= 0) and torch.all(w <= 1)
        assert torch.allclose(q.sum(1), torch.ones(n, dtype=D64), atol=1e-12)
        assert torch.all(q >= -1e-15)
        assert torch.all(q >= (1 - eps) * y - 1e-12)
        if rho is not None:
            assert float(w.sum()) <= rho * n + 1e-9
        obj = float((w * alignment(p, q, u)).sum())
        opt = _lp_optimum(p, y, u, eps, rho)
        assert obj == pytest.approx(opt, rel=1e-6, abs=1e-9), (n, C, eps, rho, obj, opt)


def test_budget_fractional_remainder_is_the_lp_optimum():
    """'top rho*n' alone is sub-optimal when rho*n is not an integer: the LP also takes a fraction."""
    p = torch.full((4, 2), 0.5, dtype=D64)
    y = F.one_hot(torch.tensor([0, 0, 0, 0]), 2).to(D64)
    u = torch.tensor([[-4.0, 0.0], [-3.0, 0.0], [-2.0, 0.0], [-1.0, 0.0]], dtype=D64)  # a = 2,1.5,1,.5 (eps 0)
    w, _ = solve_weights_labels(p, y, u, SaflexConfig(eps=0.0, rho=0.6, weights="hard"))  # budget 2.4
    assert w.tolist() == pytest.approx([1.0, 1.0, 0.4, 0.0])
    assert float((w * alignment(p, y, u)).sum()) == pytest.approx(_lp_optimum(p, y, u, 0.0, 0.6))


def test_kl_labels_minimise_entropic_objective():
    g = torch.Generator().manual_seed(7)
    p, y, u = _rand_instance(g, 6, 5, soft=True)
    cfg = SaflexConfig(labels="kl", eps=0.2, label_T=0.7)
    _, q = solve_weights_labels(p, y, u, cfg)
    yt = 0.8 * y + 0.2 / 5

    def obj(qq):
        return (qq * u).sum(1) + 0.7 * (qq * (qq.clamp_min(1e-300).log() - yt.log())).sum(1)

    base = obj(q)
    for _ in range(200):
        e = -torch.log(torch.rand(6, 5, generator=g, dtype=D64))
        other = 0.5 * q + 0.5 * e / e.sum(1, keepdim=True)
        assert torch.all(obj(other) >= base - 1e-12)
    assert torch.allclose(q.sum(1), torch.ones(6, dtype=D64))


# ------------------------------------------------------------------------------------------------
# 2. u_i is the autograd gradient inner product
# ------------------------------------------------------------------------------------------------
class TinyNet(nn.Module):
    def __init__(self, din=5, d=7, C=4):
        super().__init__()
        self.features = nn.Sequential(nn.Linear(din, d), nn.Tanh(), nn.Linear(d, d), nn.ReLU())
        self.head = nn.Linear(d, C)

    def forward(self, x):
        return self.head(self.features(x))


def _ref_loss(z, y, residual, T, margin):
    """The reference loss whose (W, b)-gradient validation_summary claims to return."""
    if residual == "ce":
        return -(y * torch.log_softmax(z, 1)).sum(1).mean()
    if residual == "tempered":
        return (T * -(y * torch.log_softmax(z / T, 1)).sum(1)).mean()
    counts = y.sum(0)
    K = int((counts > 0).sum())
    omega = (y / (K * counts.clamp_min(1e-300))).sum(1)
    return (omega * -(y * torch.log_softmax(z - margin * y, 1)).sum(1)).sum()


@pytest.mark.parametrize("residual", ["ce", "tempered", "margin"])
def test_scores_equal_autograd_gradient_inner_product(residual):
    torch.manual_seed(0)
    C = 4
    net = TinyNet(C=C).double()
    g = torch.Generator().manual_seed(3)
    xv = torch.randn(30, 5, generator=g, dtype=D64)
    yv = _rand_simplex(30, C, g, soft=residual != "margin")
    if residual == "margin":  # unbalanced classes, so the balancing matters
        yv = F.one_hot(torch.tensor([0] * 18 + [1] * 8 + [2] * 4), C).to(D64)
    xa = torch.randn(9, 5, generator=g, dtype=D64)
    ya = _rand_simplex(9, C, g, soft=True)
    T, M = 1.7, 0.8

    W, b = net.head.weight, net.head.bias
    zv = net(xv)
    gW_val, gb_val = torch.autograd.grad(_ref_loss(zv, yv, residual, T, M), (W, b))

    with torch.no_grad():
        hv = net.features(xv)
        summary = validation_summary(hv, net.head(hv), yv, residual=residual, T=T, margin=M)
        assert torch.allclose(summary.G, gW_val, atol=1e-12)
        assert torch.allclose(summary.g, gb_val, atol=1e-12)
        h = net.features(xa)
        p = torch.softmax(net.head(h), 1)
        u = sample_scores(summary, h)
    _, q = solve_weights_labels(p, ya, u, SaflexConfig(eps=0.25))
    for i in range(9):
        zi = net(xa[i: i + 1])
        loss_i = -(q[i: i + 1] * torch.log_softmax(zi, 1)).sum()
        gW_i, gb_i = torch.autograd.grad(loss_i, (W, b))
        inner = (gW_val * gW_i).sum() + (gb_val * gb_i).sum()
        assert float(inner) == pytest.approx(float(((p[i] - q[i]) * u[i]).sum()), rel=1e-10, abs=1e-14)


def test_contrastive_summary_is_gradient_wrt_text_head():
    g = torch.Generator().manual_seed(5)
    m, n, C, d = 12, 6, 5, 8
    img_v = F.normalize(torch.randn(m, d, generator=g, dtype=D64), dim=1)
    img = F.normalize(torch.randn(n, d, generator=g, dtype=D64), dim=1)
    txt = F.normalize(torch.randn(C, d, generator=g, dtype=D64), dim=1)
    s = 4.0
    yv = torch.randint(0, C, (m,), generator=g)
    W = (s * txt).clone().requires_grad_(True)
    gW = torch.autograd.grad(F.cross_entropy(img_v @ W.t(), yv), W)[0]
    summ = contrastive_summary(img_v, txt, s, yv)
    assert torch.allclose(summ.G, gW, atol=1e-12) and torch.all(summ.g == 0)
    cs = ContrastiveSaflex(SaflexConfig(eps=0.2, weights="hard"))
    cs.refresh(img_v, txt, s, yv)
    y = torch.randint(0, C, (n,), generator=g)
    w, q, stats = cs.reweight(img, txt, s, y)
    p = torch.softmax(clip_class_logits(img, txt, s), 1)
    for i in range(n):
        gi = torch.autograd.grad(-(q[i] * torch.log_softmax(img[i] @ W.t(), 0)).sum(), W)[0]
        a_i = float(((p[i] - q[i]) * (summ.G @ img[i])).sum())
        assert float((gW * gi).sum()) == pytest.approx(a_i, rel=1e-10, abs=1e-14)
        assert float(w[i]) == float(a_i > 0)


# ------------------------------------------------------------------------------------------------
# 3. one SGD step on the head with SAFLEX (w, q) helps the validation loss at least as much
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("weights", ["hard", "sigmoid"])
@pytest.mark.parametrize("soft", [False, True], ids=["onehot", "soft"])
def test_saflex_step_lowers_val_loss_at_least_as_much(soft, weights):
    """First order: the SAFLEX step decreases L_val by lr/n * sum_i w_i a_i(q_i) and the uniform step by
    lr/n * sum_i a_i(y_i). hard: w_i a_i = max(a_i, 0) >= a_i(y_i). sigmoid with mean-1 normalisation:
    w is increasing in a, so mean(w a) >= mean(w) mean(a) = mean(a) (Chebyshev's sum inequality)."""
    C, d = 5, 6
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        net = TinyNet(din=5, d=d, C=C).double()
        xv = torch.randn(40, 5, generator=g, dtype=D64)
        yv = torch.randint(0, C, (40,), generator=g)
        xa = torch.randn(32, 5, generator=g, dtype=D64)
        ya = _rand_simplex(32, C, g, soft)
        with torch.no_grad():
            hv, h = net.features(xv), net.features(xa)
        sf = Saflex(SaflexConfig(eps=0.2, weights=weights))
        sf.refresh(hv, net.head(hv), yv)

        def val_loss(W, b):
            return F.cross_entropy(hv @ W.t() + b, yv)

        def step(weights, labels, lr):
            W = net.head.weight.detach().clone().requires_grad_(True)
            b = net.head.bias.detach().clone().requires_grad_(True)
            gW, gb = torch.autograd.grad(weighted_soft_cross_entropy(h @ W.t() + b, labels, weights), (W, b))
            with torch.no_grad():
                return float(val_loss(W - lr * gW, b - lr * gb))

        with torch.no_grad():
            base = float(val_loss(net.head.weight, net.head.bias))
        loss, w, q, stats = sf.loss(net.head(h), ya, h)
        assert loss.requires_grad
        for lr in (1e-3, 1e-2):
            dec_saflex = base - step(w, q, lr)
            dec_uniform = base - step(None, ya, lr)
            assert dec_saflex >= dec_uniform - 1e-9, (seed, lr, dec_saflex, dec_uniform)
            assert dec_saflex >= 0.0


# ------------------------------------------------------------------------------------------------
# 4. noisy upstream: weights separate corrupted samples; labels move toward the true class
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_noisy_upstream_separates_corrupted_samples(seed):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    C, din, d = 4, 8, 16
    means = 2.0 * torch.randn(C, din, generator=g)

    def sample(n):
        yy = torch.randint(0, C, (n,), generator=g)
        return means[yy] + torch.randn(n, din, generator=g), yy

    xtr, ytr = sample(400)
    xv, yv = sample(200)
    x, y_true = sample(400)
    x = x + 0.3 * torch.randn(x.shape, generator=g)  # "augmentation"
    feat, head = nn.Sequential(nn.Linear(din, d), nn.ReLU()), nn.Linear(d, C)
    params = [*feat.parameters(), *head.parameters()]
    for _ in range(30):  # brief full-batch GD: the model is decent but not confidently fitted
        grads = torch.autograd.grad(F.cross_entropy(head(feat(xtr)), ytr), params)
        with torch.no_grad():
            for prm, gr in zip(params, grads):
                prm -= 0.05 * gr
    corrupted = torch.rand(400, generator=g) < 0.3
    y_up = torch.where(corrupted, (y_true + torch.randint(1, C, (400,), generator=g)) % C, y_true)

    with torch.no_grad():
        hv, h = feat(xv), feat(x)
        zv, z = head(hv), head(h)
    # sigmoid weights (normalize=False, so w in (0, 1)); AUC of -w against the corruption flag
    sf = Saflex(SaflexConfig(weights="sigmoid", normalize=False, eps=0.1))
    sf.refresh(hv, zv, yv)
    w, q, stats = sf.reweight(h, z, F.one_hot(y_up, C).float())
    auc = roc_auc_score(corrupted.numpy(), -w.numpy())
    assert auc > 0.8, auc
    # hard weights: corrupted samples are dropped far more often than clean ones
    sh = Saflex(SaflexConfig(eps=0.1, weights="hard"))
    sh.summary = sf.summary
    w_hard, q_hard, _ = sh.reweight(h, z, y_up)
    assert float((w_hard[corrupted] == 0).float().mean()) > float((w_hard[~corrupted] == 0).float().mean()) + 0.3
    # soft labels of corrupted samples: the eps mass goes to the true class more often than to any other
    moved_to = (q - F.one_hot(y_up, C).float() * 0.9).argmax(1)  # class that received the eps mass
    counts = torch.bincount(((moved_to[corrupted] - y_true[corrupted]) % C), minlength=C)  # 0 = true class
    assert counts[0] > counts[1:].max(), counts.tolist()
    assert counts[0] > 0.5 * int(corrupted.sum()), counts.tolist()
    assert 0.0 < stats["w_mean"] < 1.0 and stats["label_shift"] > 0


# ------------------------------------------------------------------------------------------------
# 5. soft upstream labels (MixUp/CutMix): q on the simplex, w in [0, 1], no NaN, edge cases
# ------------------------------------------------------------------------------------------------
_SOFT_CFGS = [
    SaflexConfig(weights="hard"),
    SaflexConfig(eps=0.3, rho=0.4, weights="hard"),
    SaflexConfig(weights="sigmoid", normalize=False),
    SaflexConfig(weights="sigmoid", normalize=False, labels="kl", eps=0.0),
    SaflexConfig(labels="kl", eps=0.2, label_T=0.5, weights="hard"),
    SaflexConfig(eps=1.0, weights="hard"),
]


@pytest.mark.parametrize("cfg", _SOFT_CFGS, ids=lambda c: f"{c.weights}-{c.labels}-eps{c.eps}-rho{c.rho}")
def test_soft_labels_simplex_and_weight_range(cfg):
    g = torch.Generator().manual_seed(11)
    for n in (1, 2, 17, 64):
        for C in (2, 10):
            p, y, u = _rand_instance(g, n, C, soft=True)
            for uu in (u, torch.zeros_like(u), 1e-30 * u, 1e6 * u):
                for dt in (torch.float32, D64):
                    w, q = solve_weights_labels(p.to(dt), y.to(dt), uu.to(dt), cfg)
                    assert w.shape == (n,) and q.shape == (n, C)
                    assert not w.requires_grad and not q.requires_grad
                    assert torch.isfinite(w).all() and torch.isfinite(q).all()
                    assert torch.all(w >= 0) and torch.all(w <= 1)
                    assert torch.all(q >= 0)
                    assert torch.allclose(q.sum(1), torch.ones(n, dtype=q.dtype), atol=1e-5)
                    if cfg.labels == "lp":
                        assert torch.all(q >= (1 - cfg.eps) * y.to(q.dtype) - 1e-6)


def test_all_zero_alignment_edge_cases():
    p = torch.softmax(torch.randn(5, 3), 1)
    y = torch.softmax(torch.randn(5, 3), 1)
    u = torch.zeros(5, 3)
    w, q = solve_weights_labels(p, y, u, SaflexConfig(weights="hard"))
    assert torch.all(w == 0)
    w, _ = solve_weights_labels(p, y, u, SaflexConfig(weights="sigmoid", normalize=False))
    assert torch.allclose(w, torch.full((5,), 0.5))
    w, _ = solve_weights_labels(p, y, u, SaflexConfig(weights="sigmoid"))
    assert torch.allclose(w, torch.ones(5))
    # n = 1, sigmoid normalised -> weight exactly 1
    w, q = solve_weights_labels(p[:1], y[:1], torch.randn(1, 3), SaflexConfig(weights="sigmoid"))
    assert torch.allclose(w, torch.ones(1)) and torch.allclose(q.sum(), torch.tensor(1.0))
    # n = 0
    w, q = solve_weights_labels(p[:0], y[:0], u[:0], SaflexConfig(weights="sigmoid"))
    assert w.shape == (0,) and q.shape == (0, 3)


def test_sigmoid_normalised_weights_have_mean_one():
    g = torch.Generator().manual_seed(2)
    p, y, u = _rand_instance(g, 50, 6, soft=True)
    w, _ = solve_weights_labels(p, y, u, SaflexConfig(weights="sigmoid", tau=0.5))
    assert float(w.mean()) == pytest.approx(1.0) and torch.all(w > 0) and float(w.max()) <= 50
    # a monotone function of a
    _, q = solve_weights_labels(p, y, u, SaflexConfig())
    a = alignment(p, q, u)
    assert torch.equal(torch.argsort(w), torch.argsort(a))


def test_integer_labels_equal_one_hot():
    g = torch.Generator().manual_seed(4)
    p, _, u = _rand_instance(g, 10, 4, soft=False)
    yi = torch.randint(0, 4, (10,), generator=g)
    w1, q1 = solve_weights_labels(p, yi, u, SaflexConfig())
    w2, q2 = solve_weights_labels(p, F.one_hot(yi, 4).to(D64), u, SaflexConfig())
    assert torch.equal(w1, w2) and torch.equal(q1, q2)


def test_weighted_soft_cross_entropy():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8, 5, generator=g, requires_grad=True)
    yi = torch.randint(0, 5, (8,), generator=g)
    assert torch.allclose(weighted_soft_cross_entropy(z, yi), F.cross_entropy(z, yi))
    w = torch.rand(8, generator=g)
    q = torch.softmax(torch.randn(8, 5, generator=g), 1)
    ref = (w * -(q * torch.log_softmax(z, 1)).sum(1)).sum() / 8
    out = weighted_soft_cross_entropy(z, q, w)
    assert torch.allclose(out, ref)
    out.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()


def test_adapter_stats_refresh_and_state():
    g = torch.Generator().manual_seed(9)
    cfg = SaflexConfig(refresh=3, warmup_epochs=2)
    sf = Saflex(cfg)
    assert sf.needs_refresh(5)  # nothing yet
    with pytest.raises(RuntimeError):
        sf.reweight(torch.randn(2, 4), torch.randn(2, 3), torch.tensor([0, 1]))
    sf.refresh(torch.randn(20, 4, generator=g), torch.randn(20, 3, generator=g), torch.randint(0, 3, (20,), generator=g))
    assert [sf.needs_refresh(s) for s in range(7)] == [True, False, False, True, False, False, True]
    assert [sf.active(e) for e in range(4)] == [False, False, True, True]
    h, z = torch.randn(16, 4, generator=g), torch.randn(16, 3, generator=g)
    y = torch.randint(0, 3, (16,), generator=g)
    w, q, stats = sf.reweight(h, z, y)
    assert set(stats) == {"w_mean", "w_zero_frac", "label_shift", "argmax_change"}
    assert all(isinstance(v, float) for v in stats.values())
    yp = F.one_hot(y, 3).float()
    assert stats["w_mean"] == pytest.approx(float(w.mean()))
    assert stats["w_zero_frac"] == pytest.approx(float((w == 0).float().mean()))
    assert stats["label_shift"] == pytest.approx(float((q - yp).abs().sum(1).mean() / 2))
    assert stats["label_shift"] <= cfg.eps + 1e-6 and stats["argmax_change"] == 0.0  # eps < 1/2
    st = sf.state_dict()
    sf2 = Saflex()
    sf2.load_state_dict(st)
    assert sf2.cfg == cfg and torch.equal(sf2.summary.G, sf.summary.G)
    # clean term
    sfc = Saflex(cfg.replace(clean_weight=0.5))
    sfc.summary = sf.summary
    zc = torch.randn(16, 3, generator=g)
    l1 = sf.loss(z, y, h)[0]
    l2 = sfc.loss(z, y, h, clean_logits=zc, clean_y=y)[0]
    assert float(l2) == pytest.approx(float(l1) + 0.5 * float(F.cross_entropy(zc, y)), rel=1e-6)


def test_sample_val_indices():
    assert sx.sample_val_indices(100, 512) is None
    idx = sx.sample_val_indices(1000, 512, torch.Generator().manual_seed(0))
    assert idx.shape == (512,) and len(set(idx.tolist())) == 512 and int(idx.max()) < 1000
    idx2 = sx.sample_val_indices(1000, 512, torch.Generator().manual_seed(0))
    assert torch.equal(idx, idx2)


# ------------------------------------------------------------------------------------------------
# contrastive loss
# ------------------------------------------------------------------------------------------------
def _clip_loss_reference(img, txt, s):
    logits_per_image = s * img @ txt.t()
    logits_per_text = s * txt @ img.t()
    labels = torch.arange(img.shape[0])
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def test_weighted_clip_loss():
    g = torch.Generator().manual_seed(0)
    n, d = 10, 16
    img = F.normalize(torch.randn(n, d, generator=g), dim=1).requires_grad_(True)
    txt = F.normalize(torch.randn(n, d, generator=g), dim=1).requires_grad_(True)
    log_s = torch.tensor(np.log(1 / 0.07), dtype=torch.float32, requires_grad=True)
    s = log_s.exp()
    ref = _clip_loss_reference(img, txt, s)
    assert torch.allclose(weighted_clip_loss(img, txt, s, torch.ones(n)), ref, atol=1e-6)
    assert torch.allclose(weighted_clip_loss(img, txt, s), ref, atol=1e-6)
    w = torch.rand(n, generator=g)
    out = weighted_clip_loss(img, txt, s, w)
    assert out.shape == ()
    out.backward()
    for t in (img, txt, log_s):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    # explicit form: rows weighted image->text, columns weighted text->image
    L = s.detach() * img.detach() @ txt.detach().t()
    lab = torch.arange(n)
    man = 0.5 * ((w * F.cross_entropy(L, lab, reduction="none")).mean()
                 + (w * F.cross_entropy(L.t(), lab, reduction="none")).mean())
    assert torch.allclose(weighted_clip_loss(img.detach(), txt.detach(), s.detach(), w), man, atol=1e-6)
    # zero weight on a pair removes it: the loss no longer depends on that pair's own terms
    w0 = torch.ones(n)
    w0[3] = 0.0
    img2 = img.detach().clone().requires_grad_(True)
    weighted_clip_loss(img2, txt.detach(), s.detach(), w0).backward()
    assert img2.grad[3].abs().sum() > 0  # still a negative in other rows' text->image terms


# ------------------------------------------------------------------------------------------------
# config
# ------------------------------------------------------------------------------------------------
def test_config_defaults_and_names():
    c = SaflexConfig()
    assert c.to_dict() == {
        "eps": 0.0, "rho": None, "weights": "sigmoid", "tau": 1.0, "normalize": True, "labels": "lp",
        "label_T": 1.0, "val_batch": 512, "refresh": "auto", "bn_mode": "train", "warmup_epochs": 0,
        "reference": "val", "residual": "ce", "residual_T": 2.0, "residual_margin": 1.0,
        "clean_weight": 0.0, "ref_ema": 0.0, "ref_budget": 0.125, "ref_ramp": True,
    }
    assert SaflexConfig.knob_names() == tuple(c.to_dict())
    assert SaflexConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert SaflexConfig.from_dict({"eps": 0.3}) == SaflexConfig(eps=0.3)
    with pytest.raises(dataclasses_FrozenInstanceError()):
        c.eps = 0.2  # type: ignore[misc]


def dataclasses_FrozenInstanceError():
    import dataclasses
    return dataclasses.FrozenInstanceError


def test_config_string_coercion():
    c = SaflexConfig().replace(eps="0.05", rho="0.5", tau="2", normalize="false", val_batch="256",
                               refresh="4", warmup_epochs="3", weights="HARD", residual_T="1.5",
                               clean_weight="0")
    assert c.eps == 0.05 and c.rho == 0.5 and c.tau == 2.0 and c.normalize is False
    assert c.val_batch == 256 and isinstance(c.val_batch, int) and c.refresh == 4 and c.warmup_epochs == 3
    assert c.weights == "hard" and c.residual_T == 1.5 and c.clean_weight == 0.0
    for s in ("none", "None", "null", "NULL"):
        assert c.replace(rho=s).rho is None
    assert SaflexConfig(eps="0.2").eps == 0.2
    assert SaflexConfig().replace(**{"saflex.eps": "0.3"}).eps == 0.3
    assert SaflexConfig(refresh=2.0).refresh == 2 and isinstance(SaflexConfig(refresh=2.0).refresh, int)
    assert SaflexConfig.from_dict({"normalize": "1", "rho": "null"}).normalize is True


@pytest.mark.parametrize(
    "kw, pattern",
    [
        ({"epss": 0.1}, r"^unknown SAFLEX knob 'epss' \(valid: eps, rho, weights, .*clean_weight, ref_ema, ref_budget, ref_ramp\)$"),
        ({"weights": "soft"}, r"^saflex\.weights must be one of hard, sigmoid \(got 'soft'\)$"),
        ({"labels": "ce"}, r"^saflex\.labels must be one of lp, kl \(got 'ce'\)$"),
        ({"bn_mode": "frozen"}, r"^saflex\.bn_mode must be one of train, eval"),
        ({"reference": "test"}, r"^saflex\.reference must be one of val, clean"),
        ({"residual": "hinge"}, r"^saflex\.residual must be one of ce, tempered, margin"),
        ({"eps": 1.5}, r"^saflex\.eps must be a number in \[0, 1\] \(got 1\.5\)$"),
        ({"eps": "abc"}, r"^saflex\.eps must be a number in \[0, 1\] \(got 'abc'\)$"),
        ({"eps": "nan"}, r"^saflex\.eps must be a number"),
        ({"rho": 0}, r"^saflex\.rho must be a number in \(0, 1\]"),
        ({"rho": 1.2}, r"^saflex\.rho must be a number in \(0, 1\]"),
        ({"tau": 0}, r"^saflex\.tau must be a number in \(0, inf\)"),
        ({"label_T": -1}, r"^saflex\.label_T must be a number in \(0, inf\)"),
        ({"residual_T": "0"}, r"^saflex\.residual_T must be a number in \(0, inf\)"),
        ({"clean_weight": -0.1}, r"^saflex\.clean_weight must be a number in \[0, inf\)"),
        ({"val_batch": 0}, r"^saflex\.val_batch must be an integer >= 1 \(got 0\)$"),
        ({"refresh": 1.5}, r"^saflex\.refresh must be an integer >= 1 or 'auto' \(got 1\.5\)$"),
        ({"refresh": "often"}, r"^saflex\.refresh must be an integer >= 1 or 'auto' \(got 'often'\)$"),
        ({"ref_budget": 0}, r"^saflex\.ref_budget must be a number in \(0, inf\)"),
        ({"warmup_epochs": -1}, r"^saflex\.warmup_epochs must be an integer >= 0"),
        ({"normalize": "maybe"}, r"^saflex\.normalize must be true or false \(got 'maybe'\)$"),
        ({"weights": "sigmoid", "rho": 0.5}, r"^saflex\.rho .* only applies to saflex\.weights=hard"),
    ],
)
def test_config_errors(kw, pattern):
    with pytest.raises(ConfigError, match=pattern) as ei:
        SaflexConfig().replace(**kw)
    assert "\n" not in str(ei.value)
    assert isinstance(ei.value, ValueError)


def test_config_errors_in_from_dict_and_constructor():
    with pytest.raises(ConfigError, match="unknown SAFLEX knob 'foo'"):
        SaflexConfig.from_dict({"foo": 1})
    with pytest.raises(ConfigError, match="saflex.weights"):
        SaflexConfig(weights="soft")


# ------------------------------------------------------------------------------------------------
# BatchNorm handling of the reference forward
# ------------------------------------------------------------------------------------------------
class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                                      nn.Linear(4 * 6 * 6, 8), nn.BatchNorm1d(8), nn.Dropout(0.5))
        self.head = nn.Linear(8, 3)


def _bn_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("start_training", [True, False])
def test_bn_mode_context(mode, start_training):
    torch.manual_seed(0)
    model = BNNet()
    model.train()
    model.features(torch.randn(8, 3, 8, 8))  # non-trivial running stats
    model.train(start_training)
    model.features[6].eval()  # a mixed flag that must be restored as it was
    flags = {name: m.training for name, m in model.named_modules()}
    before = _bn_state(model)
    x = torch.randn(16, 3, 8, 8) * 3 + 1
    with torch.no_grad(), bn_mode_context(model, mode) as m:
        assert m is model
        bn = model.features[1]
        assert bn.training is (mode == "train")
        out = model.features(x)
    after = _bn_state(model)
    for k in before:
        assert torch.equal(before[k], after[k]), k  # bit-identical
    assert {name: m.training for name, m in model.named_modules()} == flags
    assert out.shape == (16, 8)


def test_bn_mode_context_restores_on_exception_and_uses_batch_stats():
    torch.manual_seed(1)
    bn = nn.BatchNorm1d(3)
    net = nn.Sequential(bn)
    net.eval()
    before = _bn_state(net)
    x = torch.randn(32, 3) * 5 + 7
    with torch.no_grad(), bn_mode_context(net, "train"):
        y = net(x)
    # train mode: normalised by the batch's own statistics (not running stats 0/1)
    assert torch.allclose(y.mean(0), torch.zeros(3), atol=1e-5)
    assert all(torch.equal(before[k], _bn_state(net)[k]) for k in before)
    assert net.training is False
    with pytest.raises(KeyError):
        with bn_mode_context(net, "train"):
            net(x)
            raise KeyError("boom")
    assert all(torch.equal(before[k], _bn_state(net)[k]) for k in before) and net.training is False
    with pytest.raises(ConfigError, match="saflex.bn_mode must be one of train, eval"):
        with bn_mode_context(net, "frozen"):
            pass


def test_no_forbidden_imports():
    import pathlib
    import re
    root = pathlib.Path(sx.__file__).parent
    for f in root.glob("*.py"):
        src = f.read_text()
        assert not re.search(r"^\s*(from|import)\s+(bench|baselines)\b", src, re.M), f


def test_ref_ema_averages_the_reference_summary():
    torch.manual_seed(0)
    h1, z1, y1 = torch.randn(8, 4), torch.randn(8, 3), torch.randint(0, 3, (8,))
    h2, z2, y2 = torch.randn(8, 4), torch.randn(8, 3), torch.randint(0, 3, (8,))
    plain = Saflex(SaflexConfig(ref_ema=0.0))
    s1 = plain.refresh(h1, z1, y1)
    s2 = plain.refresh(h2, z2, y2)  # ref_ema = 0: the last batch only
    ema = Saflex(SaflexConfig(ref_ema=0.75))
    ema.refresh(h1, z1, y1)
    out = ema.refresh(h2, z2, y2)
    assert torch.allclose(out.G, 0.75 * s1.G + 0.25 * s2.G) and torch.allclose(out.g, 0.75 * s1.g + 0.25 * s2.g)
    with pytest.raises(ConfigError, match="ref_ema"):
        SaflexConfig(ref_ema=1.0)


def test_auto_refresh_spaces_whole_reference_refreshes_by_the_budget():
    """refresh=auto: every ceil(m / (ref_budget * n)) steps for a reference batch of m and a training
    batch of n, both read from the first refresh and reweight; a fixed refresh ignores the budget."""
    c = SaflexConfig()
    assert c.refresh == "auto" and SaflexConfig(refresh="AUTO").refresh == "auto"
    assert c.refresh_period(39, 128) == 3 == math.ceil(39 / 16)  # Breast's reference part: 39 images
    assert c.refresh_period(262, 128) == 17  # Pneumonia's
    assert c.refresh_period(5000, 128) == 32  # capped at val_batch=512 images per refresh
    assert c.replace(ref_budget=0.0625).refresh_period(39, 128) == 5
    assert c.replace(refresh=3).refresh_period(39, 128) == 3
    g = torch.Generator().manual_seed(3)
    sf = Saflex(c.replace(ref_ramp=False))
    assert sf.needs_refresh(0) and sf.period == 1  # sizes unknown yet
    sf.refresh(torch.randn(40, 4, generator=g), torch.randn(40, 3, generator=g), torch.randint(0, 3, (40,), generator=g))
    sf.reweight(torch.randn(64, 4, generator=g), torch.randn(64, 3, generator=g), torch.randint(0, 3, (64,), generator=g))
    assert sf.period == 5  # ceil(40 / (0.125 * 64))
    assert [sf.needs_refresh(s) for s in range(1, 11)] == [s % 5 == 0 for s in range(1, 11)]
    resumed = Saflex()
    resumed.load_state_dict(sf.state_dict())
    assert resumed.period == 5  # a resumed run keeps its period before it sees a batch


def refreshes(sf: Saflex, steps: range, m: int = 359, n: int = 64) -> list[int]:
    g = torch.Generator().manual_seed(0)
    out = []
    for step in steps:
        if sf.needs_refresh(step):
            out.append(step)
            sf.refresh(torch.randn(m, 4, generator=g), torch.randn(m, 3, generator=g), torch.randint(0, 3, (m,), generator=g))
        sf.reweight(torch.randn(n, 4, generator=g), torch.randn(n, 3, generator=g), torch.randint(0, 3, (n,), generator=g))
    return out


def test_ref_ramp_doubles_the_gap_up_to_the_budget_period():
    """The digits demo's reference (359 images, 64-image batches): period 45. With the ramp the
    randomly initialised model's summary is replaced at steps 1, 2, 4, ...; without it, it would
    weight the first 45 steps. A resumed run continues the same schedule."""
    assert refreshes(Saflex(SaflexConfig()), range(200)) == [0, 1, 2, 4, 8, 16, 32, 64, 109, 154, 199]
    assert refreshes(Saflex(SaflexConfig(ref_ramp=False)), range(200)) == [0, 45, 90, 135, 180]
    assert refreshes(Saflex(SaflexConfig(refresh=4)), range(10)) == [0, 4, 8]  # a fixed refresh has no ramp
    first = Saflex(SaflexConfig())
    refreshes(first, range(20))
    resumed = Saflex()
    resumed.load_state_dict(first.state_dict())
    assert refreshes(resumed, range(20, 120)) == [32, 64, 109]
