"""Closed forms on diagonal Gaussians (mmvae/gaussian.py) against torch.distributions and Monte Carlo.

Seeds: every test seeds its own torch.Generator / torch.manual_seed. Tolerances: float64 closed-form comparisons
use rtol 1e-10 (they are the same formula up to rounding); Monte Carlo comparisons are stated where they are made.
"""
import math

import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence

from mmvae.gaussian import LOGVAR_BOUND, kl_normal, kl_std_normal, log_normal, rsample, soft_clamp_logvar


def _params(seed, shape=(4, 5, 6)):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(shape, generator=g, dtype=torch.float64) * 2
    logvar = torch.randn(shape, generator=g, dtype=torch.float64) * 1.5
    return mu, logvar


def _dist(mu, logvar):
    return Independent(Normal(mu, (0.5 * logvar).exp()), 1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kl_std_normal_matches_torch(seed):
    mu, lv = _params(seed)
    ref = kl_divergence(_dist(mu, lv), _dist(torch.zeros_like(mu), torch.zeros_like(lv)))
    out = kl_std_normal(mu, lv)
    assert out.shape == mu.shape[:-1]
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kl_normal_matches_torch(seed):
    mu1, lv1 = _params(seed)
    mu2, lv2 = _params(seed + 100)
    ref = kl_divergence(_dist(mu1, lv1), _dist(mu2, lv2))
    torch.testing.assert_close(kl_normal(mu1, lv1, mu2, lv2), ref, rtol=1e-10, atol=1e-10)
    # KL to the standard normal is the special case; KL of a distribution to itself is 0
    zeros = torch.zeros_like(mu1)
    torch.testing.assert_close(kl_normal(mu1, lv1, zeros, zeros), kl_std_normal(mu1, lv1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(kl_normal(mu1, lv1, mu1, lv1), torch.zeros(mu1.shape[:-1], dtype=mu1.dtype))


@pytest.mark.parametrize("seed", [0, 1])
def test_log_normal_matches_torch(seed):
    mu, lv = _params(seed)
    g = torch.Generator().manual_seed(seed + 7)
    z = torch.randn(mu.shape, generator=g, dtype=torch.float64) * 3
    ref = _dist(mu, lv).log_prob(z)
    torch.testing.assert_close(log_normal(z, mu, lv), ref, rtol=1e-10, atol=1e-10)
    # broadcasting over a leading sample dim, as the objectives use it
    zs = torch.randn((3, *mu.shape), generator=g, dtype=torch.float64)
    torch.testing.assert_close(log_normal(zs, mu, lv), _dist(mu, lv).log_prob(zs), rtol=1e-10, atol=1e-10)


def test_mc_kl_approaches_closed_form():
    """E_q[log q(z) - log p(z)] over N = 400k reparameterised draws vs the closed form.

    The estimator's standard deviation is sd(log q - log p) / sqrt(N) (computed from the draws themselves);
    we assert |MC - closed| < 5 sd per distribution (false-alarm rate about 6e-7 each under normality).
    """
    torch.manual_seed(1234)
    mu1, lv1 = _params(3, (3, 4))
    mu2, lv2 = _params(4, (3, 4))
    lv1, lv2 = lv1 * 0.5, lv2 * 0.5  # keep the variance of the estimator moderate
    N = 400_000
    z = rsample(mu1, lv1, N)  # [N, 3, 4]
    assert z.shape == (N, 3, 4)
    for mu_p, lv_p, closed in [
        (mu2, lv2, kl_normal(mu1, lv1, mu2, lv2)),
        (torch.zeros_like(mu1), torch.zeros_like(lv1), kl_std_normal(mu1, lv1)),
    ]:
        diff = log_normal(z, mu1, lv1) - log_normal(z, mu_p, lv_p)  # [N, 3]
        est, se = diff.mean(0), diff.std(0) / math.sqrt(N)
        assert bool(((est - closed).abs() < 5 * se).all()), (est, closed, se)


def test_rsample_moments():
    """rsample draws have the stated mean and variance: N = 200k, 6-sigma bounds on each moment estimate."""
    torch.manual_seed(5)
    mu = torch.tensor([-2.0, 0.0, 3.0], dtype=torch.float64)
    lv = torch.tensor([-1.0, 0.0, 1.5], dtype=torch.float64)
    N = 200_000
    z = rsample(mu, lv, N)
    var = lv.exp()
    assert bool(((z.mean(0) - mu).abs() < 6 * (var / N).sqrt()).all())
    # sd of the sample variance of a Gaussian is var * sqrt(2 / N)
    assert bool(((z.var(0) - var).abs() < 6 * var * math.sqrt(2 / N)).all())
    assert rsample(mu, lv).shape == mu.shape


def test_soft_clamp_logvar_bounded_and_identity_near_zero():
    raw = torch.tensor([-1e4, -50.0, -1e-3, 0.0, 1e-3, 50.0, 1e4], dtype=torch.float64)
    out = soft_clamp_logvar(raw)
    assert bool((out.abs() <= LOGVAR_BOUND).all())
    torch.testing.assert_close(out[2:5], raw[2:5], rtol=1e-6, atol=1e-12)
    assert bool((out[1:] >= out[:-1]).all())  # monotone


# ------------------------------------------------------------------ the fused KL of every product of experts
@pytest.mark.parametrize("prior_expert", [False, True])
@pytest.mark.parametrize("chunk", [None, 3])
@pytest.mark.parametrize("complete", [False, True])
@pytest.mark.parametrize("D", [3, 4])
def test_fused_poe_kl_equals_the_closed_form_of_each_subset(prior_expert, chunk, complete, D):
    """poe_kl_std_normal (chunked, hand-written backward, logs of pairs) against kl_std_normal of the materialised
    subset Gaussians: values and gradients, float64, MoPoE subsets of 4 modalities, complete or with missing ones."""
    from mmvae.aggregators import MoPoE, all_subsets
    from mmvae.gaussian import Experts, poe_kl_std_normal

    g = torch.Generator().manual_seed(7)
    M, B = 4, 9
    mu = (torch.randn(M, B, D, generator=g, dtype=torch.float64) * 2).requires_grad_()
    lv = torch.randn(M, B, D, generator=g, dtype=torch.float64).requires_grad_()
    avail = torch.rand(B, M, generator=g) < (1.0 if complete else 0.6)  # complete: the clamp-free path
    avail[:, 0] = True
    experts = Experts(mu, lv, avail)
    agg = MoPoE(prior_expert=prior_expert)
    post = agg(experts)
    c = torch.randn(post.weight.shape, generator=g, dtype=torch.float64)  # a random cotangent
    ref = torch.where(post.valid, kl_std_normal(post.mu, post.logvar), 0.0)  # [K, B]
    a = avail.T[..., None]
    prec = torch.where(a, torch.exp(-lv), 0.0)
    fused = torch.where(post.valid, poe_kl_std_normal(all_subsets(M), prec, torch.where(a, mu * prec, 0.0),
                                                      prior_expert, chunk), 0.0)
    torch.testing.assert_close(fused, ref, rtol=1e-10, atol=1e-10)
    g_ref = torch.autograd.grad((c * ref).sum(), (mu, lv))
    g_fused = torch.autograd.grad((c * fused).sum(), (mu, lv))
    for a_, b_ in zip(g_fused, g_ref):
        torch.testing.assert_close(a_, b_, rtol=1e-9, atol=1e-10)
    # the lazy posterior takes the fused path (K = 15 >= 8) and gives the same
    torch.testing.assert_close(agg(experts).kl_std_normal(), ref, rtol=1e-10, atol=1e-10)


def test_sample_index_follows_the_weights_and_never_draws_a_zero_weight():
    """sample_index draws k ~ weight[:, b] per column. Seed 0; 40000 draws: each frequency within 5 standard errors
    (false alarm < 1e-5 per category), and a zero-weight subset is never drawn."""
    from mmvae.gaussian import sample_index

    torch.manual_seed(0)
    w = torch.tensor([0.5, 0.0, 0.3, 0.2, 0.0])[:, None].expand(5, 40000)
    k = sample_index(w)
    assert k.shape == (1, 40000)
    freq = torch.bincount(k[0], minlength=5).double() / 40000
    se = (w[:, 0] * (1 - w[:, 0]) / 40000).sqrt()
    assert bool(((freq - w[:, 0]).abs() <= 5 * se + 1e-12).all()), freq
    assert freq[1] == 0 and freq[4] == 0
