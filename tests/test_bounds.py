"""Importance-weighted bounds (mmvae/bounds.py): IWAE against the ELBO, the exact log-likelihood of a linear
Gaussian model and itself across K; DReG against a direct implementation of its gradient formula and against the
IWAE gradient in expectation.

Seeds: torch.manual_seed before every stochastic call, so two objectives on the same seed see the same draws.
Monte-Carlo comparisons use 4 standard errors (two-sided false-alarm rate ~6e-5 each, Gaussian approximation).
"""
import math

import pytest
import torch

from mmvae import Modality, MultimodalVAE
from mmvae.gaussian import kl_std_normal
from mmvae.networks import MLPDecoder, MLPEncoder
from mmvae.objectives import ELBO, IWAE, DReG, make_objective

AGGREGATORS = ["poe", "moe", "mopoe", "none", {"name": "poe", "subsets": "joint+unimodal"}]


def small_model(aggregator="moe", prior="normal", D=2, X=4, M=3, private_dim=0, hidden=(16,), scale=1.0, **kw):
    def mod():
        d = D + private_dim
        return Modality(MLPEncoder((X,), 2 * d, hidden=hidden), MLPDecoder(d, (X,), hidden=hidden),
                        {"name": "gaussian", "scale": scale})
    return MultimodalVAE({f"m{i}": mod() for i in range(M)}, D, private_dim=private_dim, aggregator=aggregator,
                         prior=prior, **kw)


def batch(B, seed, M=3, X=4, p_obs=0.7):
    g = torch.Generator().manual_seed(seed)
    x = {f"m{i}": torch.randn(B, X, generator=g) for i in range(M)}
    avail = torch.rand(B, M, generator=g) < p_obs
    avail[:, 0] |= ~avail.any(1)
    return x, avail


@pytest.mark.parametrize("prior", ["normal", "mmvamp"])
@pytest.mark.parametrize("aggregator", AGGREGATORS, ids=str)
def test_iwae_with_one_sample_is_the_elbo_of_the_same_draws(aggregator, prior):
    torch.manual_seed(0)
    model = small_model(aggregator, prior, beta=1.5)
    x, avail = batch(8, seed=1)
    torch.manual_seed(2)
    elbo = ELBO(kl="mc", stratify=True)(model, x, avail)
    torch.manual_seed(2)
    iwae = IWAE(K=1)(model, x, avail)
    torch.manual_seed(2)
    dreg = DReG(K=1)(model, x, avail)
    torch.testing.assert_close(iwae.loss, elbo.loss, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(dreg.loss, elbo.loss, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(iwae.terms["kl/shared"], elbo.terms["kl/shared"], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("aggregator", ["poe", "moe", "none"])
def test_bound_does_not_decrease_with_K_on_average(aggregator):
    torch.manual_seed(0)
    model = small_model(aggregator)
    x, avail = batch(64, seed=3)
    Ks, means, ses = [1, 2, 4, 16], [], []
    with torch.no_grad():
        for K in Ks:
            runs = []
            for seed in range(20):
                torch.manual_seed(seed)
                runs.append(-IWAE(K)(model, x, avail).loss)
            runs = torch.stack(runs)
            means.append(runs.mean())
            ses.append(runs.std() / math.sqrt(len(runs)))
    for i in range(len(Ks) - 1):
        assert means[i + 1] > means[i] - 4 * math.hypot(ses[i], ses[i + 1])
    assert means[-1] - means[0] > 4 * math.hypot(ses[0], ses[-1])  # and it does grow


def linear_gaussian(aggregator, sigma=0.5, D=2, X=3):
    """Two modalities x_m = W_m z + b_m + sigma eps, z ~ N(0, I): log p(x_1, x_2) is a Gaussian log-density."""
    torch.manual_seed(0)
    model = small_model(aggregator, D=D, X=X, M=2, hidden=(), scale=sigma)
    lin = [model.modalities[n].decoder.net[0] for n in model.names]
    W = torch.cat([layer.weight for layer in lin]).double()  # [2X, D]
    b = torch.cat([layer.bias for layer in lin]).double()  # [2X]
    xs = b + torch.randn(2 * X, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    cov = W @ W.T + sigma ** 2 * torch.eye(2 * X, dtype=torch.float64)
    logp = torch.distributions.MultivariateNormal(b, cov).log_prob(xs).item()
    return model, {"m0": xs[:X].float(), "m1": xs[X:].float()}, logp


@pytest.mark.parametrize("aggregator", ["poe", "moe"])
def test_iwae_rises_to_the_exact_log_likelihood_of_a_linear_gaussian_model(aggregator):
    model, xs, logp = linear_gaussian(aggregator)
    B = 256
    x = {k: v.expand(B, -1) for k, v in xs.items()}
    avail = torch.ones(B, 2, dtype=torch.bool)
    bounds = []
    with torch.no_grad():
        for K in (1, 10, 100, 1000):
            torch.manual_seed(K)
            bounds.append(-IWAE(K)(model, x, avail).loss.item())
    assert all(b > a - 0.01 for a, b in zip(bounds, bounds[1:]))  # 0.01: the MC noise of a 256-sample average
    assert max(bounds) <= logp + 0.01
    assert abs(bounds[-1] - logp) < 0.02
    assert logp - bounds[0] > 0.2  # the ELBO itself is visibly loose here: the test could fail


def test_private_terms_estimate_the_private_kl():
    """Posterior-drawn private codes add log p(w) - log q(w | x): on average the private KL. Under a mixture, DMVAE's
    rule (own posterior everywhere) counts every modality in every subset; MMVAE+'s rule only in its own subset."""
    torch.manual_seed(0)
    x, avail = batch(16, seed=4)
    for rule in ("posterior", "prior"):
        model = small_model("moe", private_dim=2, cross_private=rule)
        with torch.no_grad():
            enc = model.encode(x, avail)
            kl = torch.stack([torch.where(avail[:, i], kl_std_normal(*enc.private[n]), 0.0)
                              for i, n in enumerate(model.names)])  # [M, B]
            share = 1.0 / avail.sum(1)  # [B]: pi_k of a sample's own-modality subset
            want = kl.sum(0) if rule == "posterior" else (kl * share).sum(0)
            runs = []
            for seed in range(100):
                torch.manual_seed(seed)
                runs.append(IWAE(K=1)(model, x, avail).terms["kl/private"])
        runs = torch.stack(runs)
        assert abs(runs.mean() - want.mean()) < 4 * runs.std() / math.sqrt(len(runs))


def dreg_by_formula(model, x, avail, K, seed):
    """The DReG gradient written out: per-sample gradients g_ksb of log w (log q with stopped parameters), combined
    as (1/B) sum_kb pi_kb sum_s c_ksb g_ksb with c = w~^2 for encoder parameters and c = w~ for the others."""
    torch.manual_seed(seed)
    lws = DReG(K).log_weights(model, x, avail, detach_q=True)
    wn = torch.softmax(lws.lw, 0).detach()  # [S, K', B]
    B = lws.lw.shape[-1]
    enc_params = {id(p) for n, p in model.named_parameters() if ".encoder." in n}
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    for idx in torch.cartesian_prod(*[torch.arange(s) for s in lws.lw.shape]).tolist():
        s, k, b = idx
        grads = torch.autograd.grad(lws.lw[s, k, b], params, retain_graph=True, allow_unused=True)
        for t, p, g in zip(total, params, grads):
            if g is None:
                continue
            c = wn[s, k, b] ** 2 if id(p) in enc_params else wn[s, k, b]
            t += lws.pi[k, b] / B * c * g
    return [-t for t in total]


@pytest.mark.parametrize("private_dim", [0, 2])
def test_dreg_gradient_equals_its_formula(private_dim):
    torch.manual_seed(0)
    model = small_model("moe", M=2, private_dim=private_dim, learn_private_prior=True)
    x, avail = batch(3, seed=5, M=2, p_obs=0.8)
    avail[0] = True
    want = dreg_by_formula(model, x, avail, K=3, seed=6)
    model.zero_grad()
    torch.manual_seed(6)
    DReG(K=3)(model, x, avail).loss.backward()
    got = [p.grad if p.grad is not None else torch.zeros_like(p) for p in model.parameters() if p.requires_grad]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
    # the reweighting matters: plain IWAE gradients differ from DReG's on the encoder
    model.zero_grad()
    torch.manual_seed(6)
    IWAE(K=3)(model, x, avail).loss.backward()
    enc = [p for n, p in model.named_parameters() if ".encoder." in n]
    assert any(not torch.allclose(p.grad, w, atol=1e-4) for p, w in zip(enc, want[:len(enc)]) if p.grad is not None)


def test_dreg_is_unbiased_for_the_iwae_gradient_of_a_single_gaussian_proposal():
    """One modality, PoE: q is one Gaussian, so E[DReG grad] = E[IWAE grad] = grad L_K on the encoder."""
    torch.manual_seed(0)
    model = small_model("poe", M=1, D=1, X=2, hidden=(), scale=0.5)
    x = {"m0": torch.tensor([[1.0, -0.5]]).expand(2000, 2)}
    avail = torch.ones(2000, 1, dtype=torch.bool)
    enc = [p for n, p in model.named_parameters() if ".encoder." in n]
    est = {}
    for obj in (IWAE(K=4), DReG(K=4)):
        runs = []
        for seed in range(20):
            model.zero_grad()
            torch.manual_seed(seed)
            obj(model, x, avail).loss.backward()
            runs.append(torch.cat([p.grad.flatten() for p in enc]))
        est[obj.name] = torch.stack(runs)  # [20, P]
    diff = est["dreg"].mean(0) - est["iwae"].mean(0)
    se = torch.sqrt(est["dreg"].var(0) / 20 + est["iwae"].var(0) / 20)
    assert (diff.abs() < 4 * se + 1e-4).all()
    assert (est["dreg"].std(0) < est["iwae"].std(0)).all()  # and, its point, with less noise


def test_objectives_round_trip_through_config():
    for obj in (IWAE(K=3, combine="sum", stratify=False), DReG(K=5)):
        again = make_objective(obj.config())
        assert type(again) is type(obj) and again.config() == obj.config()
    model = small_model("moe", objective={"name": "dreg", "K": 2})
    assert isinstance(model.objective, DReG) and model.objective.K == 2
