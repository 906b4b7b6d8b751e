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
