"""The MM-VAMP prior (mmvae/priors/mmvamp.py): its density against Pyro's mixture, its two KL estimators against
closed forms and each other, annealing, gradient flow, and its use in the MMVM VAE.

Seeds: every random input comes from a torch.Generator or torch.manual_seed with a fixed seed. Monte-Carlo checks
use 4 standard errors (two-sided false-alarm rate ~6e-5 per comparison for a Gaussian mean).
"""
import math
import pickle

import pytest
import torch
from pyro.distributions import MixtureOfDiagNormals

from mmvae import Modality, MultimodalVAE
from mmvae.aggregators import NoAggregation
from mmvae.gaussian import Experts, SubsetPosterior, kl_normal, kl_std_normal, log_normal
from mmvae.models import modality_embeddings
from mmvae.networks import MLPDecoder, MLPEncoder
from mmvae.objectives import ELBO
from mmvae.priors import MMVAMP, make_prior


def random_experts(M, B, D, seed, p_obs=0.6, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(M, B, D, generator=g, dtype=dtype)
    logvar = 0.5 * torch.randn(M, B, D, generator=g, dtype=dtype)
    avail = torch.rand(B, M, generator=g) < p_obs
    avail[torch.arange(B), torch.randint(M, (B,), generator=g)] = True
    avail[0] = True
    return Experts(mu, logvar, avail)


def random_posterior(K, B, D, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(K, B, D, generator=g, dtype=dtype)
    lv = 0.5 * torch.randn(K, B, D, generator=g, dtype=dtype)
    members = torch.ones(K, B, 1, dtype=torch.bool)
    return SubsetPosterior(mu, lv, members, torch.full((K, B), 1.0 / K, dtype=dtype))


def mc_with_se(prior, post, experts, L):
    """MC estimate of KL(q_k || h) and its standard error, from L single-sample estimates.  # [K, B] each"""
    torch.manual_seed(1)
    z = post.mu + (0.5 * post.logvar).exp() * torch.randn(L, *post.mu.shape, dtype=post.mu.dtype)  # [L, K, B, D]
    terms = log_normal(z, post.mu, post.logvar) - prior._log_h(z, experts, prior.alpha)  # [L, K, B]
    return terms.mean(0), terms.std(0) / math.sqrt(L)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_log_prob_matches_pyro_mixture(alpha):
    experts = random_experts(M=4, B=6, D=5, seed=0)
    prior = MMVAMP(alpha_start=alpha, alpha_end=alpha).eval()
    z = torch.randn(7, 3, 6, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)  # [S, K, B, D]
    got = prior.log_prob(z, experts)  # [S, K, B]
    assert got.shape == (7, 3, 6)
    for b in range(6):
        obs = experts.avail[b].nonzero().squeeze(1)
        locs = torch.cat([experts.mu[obs, b], torch.zeros(1, 5, dtype=torch.float64)])  # [M'+1, D]
        scales = torch.cat([(0.5 * experts.logvar[obs, b]).exp(), torch.ones(1, 5, dtype=torch.float64)])
        w = torch.tensor([(1 - alpha) / len(obs)] * len(obs) + [alpha], dtype=torch.float64)
        keep = w > 0
        mix = MixtureOfDiagNormals(locs[keep], scales[keep], w[keep].log())
        torch.testing.assert_close(got[:, :, b], mix.log_prob(z[:, :, b]), rtol=1e-10, atol=1e-10)


def test_bound_is_the_average_pairwise_kl():
    experts = random_experts(M=4, B=5, D=3, seed=2)
    post = NoAggregation()(experts)
    for alpha in (0.0, 0.25):
        got = MMVAMP(alpha_start=alpha, alpha_end=alpha).kl(post, experts)  # [K, B]
        for k in range(4):
            for b in range(5):
                if not experts.avail[b, k]:
                    assert got[k, b] == 0.0
                    continue
                obs = experts.avail[b].nonzero().squeeze(1).tolist()
                pair = [kl_normal(experts.mu[k, b], experts.logvar[k, b], experts.mu[j, b], experts.logvar[j, b])
                        for j in obs]
                want = (1 - alpha) * sum(pair) / len(obs) + alpha * kl_std_normal(experts.mu[k, b],
                                                                                   experts.logvar[k, b])
                torch.testing.assert_close(got[k, b], want, rtol=1e-12, atol=1e-12)


def test_mc_converges_to_gaussian_kl_when_the_mixture_has_one_component():
    """h = q_m' alone (one observed modality): KL(q || h) is a Gaussian KL; the MC error shrinks like 1/sqrt(L)."""
    experts = random_experts(M=3, B=8, D=4, seed=3)
    experts.avail[:] = False
    experts.avail[:, 1] = True
    post = random_posterior(K=2, B=8, D=4, seed=4)
    exact = kl_normal(post.mu, post.logvar, experts.mu[1][None], experts.logvar[1][None])  # [K, B]
    prior = MMVAMP(kl="mc").eval()
    errs = []
    for L in (100, 10_000):
        est, se = mc_with_se(prior, post, experts, L)
        assert ((est - exact).abs() < 4 * se).all()
        errs.append((est - exact).abs().mean())
    assert errs[1] < errs[0] / 3  # 10x less error expected, 3x required
    # the estimator the model uses (n_samples draws inside kl) agrees as well
    torch.manual_seed(0)
    est = MMVAMP(kl="mc", n_samples=20_000).eval().kl(post, experts)
    torch.testing.assert_close(est, exact, rtol=0.05, atol=0.05)


def test_mc_with_standard_normal_component_equal_to_its_mixture_partner():
    """alpha N(0, I) + (1 - alpha) q_1 with q_1 = N(0, I) is N(0, I): the MC estimate converges to KL(q || N)."""
    experts = random_experts(M=2, B=6, D=3, seed=5)
    experts.avail[:] = torch.tensor([False, True])
    experts.mu[1].zero_()
    experts.logvar[1].zero_()
    post = random_posterior(K=2, B=6, D=3, seed=6)
    prior = MMVAMP(kl="mc", alpha_start=0.4, alpha_end=0.4).eval()
    est, se = mc_with_se(prior, post, experts, 20_000)
    exact = kl_std_normal(post.mu, post.logvar)
    assert ((est - exact).abs() < 4 * se).all()
    torch.testing.assert_close(prior.kl_bound(post, experts), exact, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_mc_lies_below_the_jensen_bound(alpha):
    experts = random_experts(M=4, B=16, D=3, seed=7)
    post = NoAggregation()(experts)
    prior = MMVAMP(kl="mc", alpha_start=alpha, alpha_end=alpha).eval()
    est, se = mc_with_se(prior, post, experts, 4000)
    bound = prior.kl_bound(post, experts)
    valid = post.valid
    assert (est[valid] <= bound[valid] + 4 * se[valid]).all()
    # strictly below where the mixture has more than one distinct component
    multi = valid & (experts.avail.sum(1) > 1)[None]
    assert ((bound - est)[multi] > 4 * se[multi]).float().mean() > 0.9


def test_model_mc_path_agrees_with_prior_kl():
    """ELBO(kl="mc") scores log q_m(z) - log h(z) through `prior.log_prob`; its mean matches MMVAMP(kl="mc").kl and
    lies below the bound."""
    torch.manual_seed(0)
    model = mmvm_model(prior="mmvamp")
    x, avail = toy_batch(B=32, seed=1)
    model.eval()
    with torch.no_grad():
        enc = model.encode(x, avail)
        post = model.aggregator(enc.experts)
        bound = (model.prior.kl_bound(post, enc.experts) * post.valid).sum(0).mean()
        exact = (MMVAMP(kl="mc", n_samples=4000).eval().kl(post, enc.experts) * post.valid).sum(0).mean()
        model.objective = ELBO(kl="mc")
        runs = torch.stack([model(x, avail).terms["kl/shared"] for _ in range(150)])
    assert abs(runs.mean() - exact) < 4 * runs.std() / math.sqrt(150) + 0.02 * abs(exact)
    assert exact < bound


def test_alpha_anneals_linearly_one_step_per_training_forward():
    torch.manual_seed(0)
    model = mmvm_model(prior={"name": "mmvamp", "alpha_start": 1.0, "alpha_end": 0.2, "anneal_steps": 4})
    x, avail = toy_batch(B=8, seed=2)
    seen = []
    for _ in range(6):
        seen.append(model.prior.alpha)
        model(x, avail).loss.backward()
    assert seen == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2, 0.2])
    assert int(model.state_dict()["prior.steps"]) == 6
    model.eval()
    with torch.no_grad():
        model(x, avail)
    model.train()
    enc = model.encode(x, avail)
    post = model.aggregator(enc.experts)
    model.prior.kl(post, enc.experts)
    model.prior.kl(post, enc.experts)  # the same forward's experts: counted once
    assert int(model.prior.steps) == 7
    fresh = mmvm_model(prior=model.prior.config())
    fresh.load_state_dict(model.state_dict())  # the step count is checkpointed
    assert fresh.prior.alpha == pytest.approx(0.2) and int(fresh.prior.steps) == 7
    assert int(pickle.loads(pickle.dumps(model)).prior.steps) == 7  # a whole model pickles (spawn, torch.save)


@pytest.mark.parametrize("detach", [False, True])
def test_gradients_reach_the_prior_components_unless_detached(detach):
    experts = random_experts(M=3, B=4, D=2, seed=8)
    experts.avail[:] = True
    mu = experts.mu.clone().requires_grad_()
    ex = Experts(mu, experts.logvar, experts.avail)
    for kl in ("bound", "mc"):
        mu.grad = None
        post = NoAggregation()(ex)
        MMVAMP(kl=kl, detach_prior=detach).kl(post, ex)[0].sum().backward()  # KL(q_0 || h): q_1, q_2 only in h
        others = mu.grad[1:].abs().sum()
        assert (others == 0) if detach else (others > 0)
        assert mu.grad[0].abs().sum() > 0


def test_config_round_trip():
    prior = MMVAMP(kl="mc", n_samples=3, alpha_start=0.5, alpha_end=0.1, anneal_steps=10, detach_prior=True)
    again = make_prior(prior.config())
    assert isinstance(again, MMVAMP) and again.config() == prior.config()


# ------------------------------------------------------------------ the MMVM VAE
def mmvm_model(prior="mmvamp", beta=1.0, M=3, D=2):
    mods = {f"m{i}": Modality(MLPEncoder((5,), 2 * D, hidden=(16,)), MLPDecoder(D, (5,), hidden=(16,)), "gaussian")
            for i in range(M)}
    return MultimodalVAE(mods, D, aggregator="none", prior=prior, beta=beta)


def toy_batch(B, seed, M=3):
    g = torch.Generator().manual_seed(seed)
    x = {f"m{i}": torch.randn(B, 5, generator=g) for i in range(M)}
    avail = torch.rand(B, M, generator=g) < 0.7
    avail[:, 0] |= ~avail.any(1)
    return x, avail


def test_mmvm_loss_is_reconstruction_plus_beta_average_pairwise_kl():
    torch.manual_seed(0)
    model = mmvm_model(beta=2.0)
    x, avail = toy_batch(B=6, seed=3)
    out = model(x, avail)
    enc = model.encode(x, avail)
    kl = torch.zeros(6)
    for b in range(6):
        obs = avail[b].nonzero().squeeze(1).tolist()
        for m in obs:
            kl[b] += sum(kl_normal(enc.experts.mu[m, b], enc.experts.logvar[m, b], enc.experts.mu[j, b],
                                   enc.experts.logvar[j, b]) for j in obs) / len(obs)
    torch.testing.assert_close(out.terms["kl/shared"], kl.mean(), rtol=1e-5, atol=1e-5)
    nll = sum(out.terms[f"nll/m{i}"] for i in range(3))
    torch.testing.assert_close(out.loss, nll + 2.0 * kl.mean(), rtol=1e-5, atol=1e-4)


def test_mmvm_imputes_from_the_mixture_of_observed_posteriors_and_embeds_their_average():
    torch.manual_seed(0)
    model = mmvm_model().eval()
    x, _ = toy_batch(B=5, seed=4)
    observed = {"m0": x["m0"], "m2": x["m2"]}
    post, enc = model.posterior(observed)
    valid = post.valid.T  # [B, K]
    assert valid[:, [0, 2]].all() and not valid[:, 1].any()
    torch.testing.assert_close(post.weight[[0, 2]], torch.full((2, 5), 0.5))
    torch.testing.assert_close(post.mu[[0, 2]], enc.experts.mu[[0, 2]])
    emb = modality_embeddings(model, observed)
    assert set(emb["per_modality"]) == {"m0", "m2"}
    torch.testing.assert_close(emb["mean"], (emb["per_modality"]["m0"] + emb["per_modality"]["m2"]) / 2)
    torch.testing.assert_close(emb["mean"], model.embed(observed)["shared"])
    out = model.impute(observed, n_samples=3)
    assert out["m1"].shape == (3, 5, 5) and torch.isfinite(out["m1"]).all()


def test_mmvm_preset_warms_up_from_independent_vaes_and_mmvm_paper_keeps_the_authors_settings():
    """`mmvm` anneals alpha 1 -> 0 over 100 steps (issue 13: started at alpha 0, short runs sit on a broad,
    unaligned plateau); `mmvm_paper` is the authors' PolyMNIST run: alpha 0 from the first step, latent size 512."""
    from mmvae.models import PRESETS

    mods = lambda: {f"m{i}": Modality(likelihood="gaussian", shape=(5,)) for i in range(3)}  # noqa: E731
    model = PRESETS["mmvm"](mods())
    assert model.aggregator.name == "none" and model.shared_dim == 16
    assert model.prior.config() == {"name": "mmvamp", "kl": "bound", "n_samples": 1, "alpha_start": 1.0,
                                    "alpha_end": 0.0, "anneal_steps": 100, "detach_prior": False}
    assert model.prior.alpha == 1.0 and PRESETS["mmvm"](mods(), anneal_steps=50).prior.anneal_steps == 50
    model.prior.steps.fill_(50)
    assert model.prior.alpha == pytest.approx(0.5)
    model.prior.steps.fill_(500)
    assert model.prior.alpha == 0.0
    paper = PRESETS["mmvm_paper"](mods())
    assert paper.shared_dim == 512 and paper.aggregator.name == "none"
    assert paper.prior.config()["kl"] == "bound" and paper.prior.alpha == 0.0 and not paper.prior.detach_prior
