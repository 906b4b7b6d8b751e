"""Aggregators (mmvae/aggregators.py) against a naive per-subset, per-sample Python loop.

The loop below is the reference: it reads the definitions (PoE = precision-weighted product, optionally with a
N(0, I) prior expert; AVG = mean of the observed means and variances; MoE = one component per observed expert;
MoPoE = PoE of every subset of the observed set) and knows nothing of the vectorised einsum code.

Seeds: each test draws its inputs from a torch.Generator seeded by the test's parameters. Tolerances: inputs are
float64, so closed forms are compared at rtol/atol 1e-10. The sampling tests state their false-alarm rates.
"""
import itertools
import math

import pytest
import torch
from scipy import stats

from mmvae import InputError
from mmvae.aggregators import (
    AGGREGATORS,
    AVG,
    MoE,
    MoPoE,
    NoAggregation,
    PoE,
    all_subsets,
    make_aggregator,
    subset_names,
)
from mmvae.gaussian import Experts, SubsetPosterior, log_normal

TOL = dict(rtol=1e-10, atol=1e-10)


def random_experts(M, B, D, seed, p_obs=0.6):
    """Random experts and a random availability mask with at least one observed modality per sample."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(M, B, D, generator=g, dtype=torch.float64) * 2
    logvar = torch.randn(M, B, D, generator=g, dtype=torch.float64)
    avail = torch.rand(B, M, generator=g) < p_obs
    avail[torch.arange(B), torch.randint(M, (B,), generator=g)] = True
    avail[0] = True  # one sample sees everything
    if B > 1:
        avail[1] = False  # one sample sees a single modality
        avail[1, M - 1] = True
    return Experts(mu, logvar, avail)


# ------------------------------------------------------------------ the naive reference
def naive_gaussian(kind, used, experts, b, prior_expert):
    """(mu, logvar) [D] of the fusion of experts `used` for sample b, by the textbook formula."""
    mus = [experts.mu[m, b] for m in used]
    vars_ = [experts.logvar[m, b].exp() for m in used]
    if kind == "poe":
        prec = sum(1.0 / v for v in vars_) + (1.0 if prior_expert else 0.0)
        mean = sum(mu / v for mu, v in zip(mus, vars_)) / prec
        return mean, -torch.log(prec)
    if kind == "avg":
        return sum(mus) / len(used), torch.log(sum(vars_) / len(used))
    assert kind == "moe" and len(used) == 1
    return mus[0], experts.logvar[used[0], b]


def naive_posterior(kind, subsets, restrict, experts, prior_expert=False):
    """Loop over subsets and samples. Returns mu, logvar [K, B, D], members [K, B, M], weight [K, B]."""
    M, B, D = experts.mu.shape
    K = subsets.shape[0]
    mu = torch.full((K, B, D), float("nan"), dtype=torch.float64)
    lv = torch.full((K, B, D), float("nan"), dtype=torch.float64)
    members = torch.zeros(K, B, M, dtype=torch.bool)
    valid = torch.zeros(K, B, dtype=torch.bool)
    for b in range(B):
        observed = {m for m in range(M) if experts.avail[b, m]}
        for k in range(K):
            S = {m for m in range(M) if subsets[k, m]}
            if restrict == "contain":
                ok, used = S <= observed, sorted(S)
            else:
                used = sorted(S & observed)
                ok = len(used) > 0
            if not ok:
                continue
            valid[k, b] = True
            members[k, b, used] = True
            mu[k, b], lv[k, b] = naive_gaussian(kind, used, experts, b, prior_expert)
    n_valid = valid.sum(0)
    weight = valid.double() / n_valid
    return mu, lv, members, weight, valid


def assert_matches(post: SubsetPosterior, ref):
    mu, lv, members, weight, valid = ref
    assert post.mu.shape == mu.shape and post.logvar.shape == lv.shape
    assert torch.equal(post.members, members)
    assert torch.equal(post.valid, valid)
    torch.testing.assert_close(post.weight.double(), weight, **TOL)
    torch.testing.assert_close(post.weight.sum(0), torch.ones_like(post.weight[0]), **TOL)
    v = valid[..., None].expand_as(mu)
    torch.testing.assert_close(post.mu[v], mu[v], **TOL)
    torch.testing.assert_close(post.logvar[v], lv[v], **TOL)
    # invalid subsets are never chosen (weight 0) but must stay finite: stratified objectives decode them
    assert bool(torch.isfinite(post.mu).all() and torch.isfinite(post.logvar).all())


# ------------------------------------------------------------------ subsets
@pytest.mark.parametrize("M", [1, 2, 3, 4, 5])
def test_all_subsets(M):
    S = all_subsets(M)
    assert S.shape == (2**M - 1, M) and S.dtype == torch.bool
    rows = [tuple(r) for r in S.tolist()]
    assert len(set(rows)) == len(rows) and all(any(r) for r in rows)
    # ordered by size, then lexicographically by the tuple of members
    keys = [(sum(r), tuple(i for i, on in enumerate(r) if on)) for r in rows]
    assert keys == sorted(keys)
    expected = {tuple(i in c for i in range(M)) for k in range(1, M + 1) for c in itertools.combinations(range(M), k)}
    assert set(rows) == expected


def test_subset_names():
    assert subset_names(all_subsets(3), ["a", "b", "c"]) == [
        ("a",), ("b",), ("c",), ("a", "b"), ("a", "c"), ("b", "c"), ("a", "b", "c")]


@pytest.mark.parametrize("M", [1, 2, 3, 4, 5])
def test_subset_masks_of_each_aggregator(M):
    assert torch.equal(PoE().subsets(M), torch.ones(1, M, dtype=torch.bool))
    assert torch.equal(AVG().subsets(M), torch.ones(1, M, dtype=torch.bool))
    assert torch.equal(MoE().subsets(M), torch.eye(M, dtype=torch.bool))
    assert torch.equal(MoPoE().subsets(M), all_subsets(M))
    assert torch.equal(PoE(subsets="all").subsets(M), all_subsets(M))
    ju = PoE(subsets="joint+unimodal").subsets(M)
    assert ju.shape == ((M + 1) if M > 1 else 1, M)
    assert bool(ju[0].all())


# ------------------------------------------------------------------ vectorised == naive loop
CASES = [
    # (aggregator, kind, restrict, prior_expert)
    (lambda: PoE(prior_expert=True), "poe", "intersect", True),
    (lambda: PoE(prior_expert=False), "poe", "intersect", False),
    (lambda: PoE(prior_expert=True, subsets="joint+unimodal"), "poe", "intersect", True),
    (lambda: PoE(prior_expert=False, subsets="all"), "poe", "contain", False),
    (lambda: MoPoE(prior_expert=False), "poe", "contain", False),
    (lambda: MoPoE(prior_expert=True), "poe", "contain", True),
    (lambda: AVG(), "avg", "intersect", False),
    (lambda: MoE(), "moe", "contain", False),
    (lambda: NoAggregation(), "moe", "contain", False),
]


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("M", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("seed", [0, 1])
def test_vectorised_equals_naive_loop(case, M, seed):
    make, kind, restrict, prior_expert = CASES[case]
    agg = make()
    assert agg.restrict == restrict  # the documented semantics of each aggregator
    experts = random_experts(M, B=7, D=3, seed=1000 * seed + 10 * M + case)
    post = agg(experts)
    assert torch.equal(post.subsets, agg.subsets(M))
    assert_matches(post, naive_posterior(kind, agg.subsets(M), restrict, experts, prior_expert))


@pytest.mark.parametrize("M", [1, 2, 3, 4, 5])
def test_every_subset_of_full_observation(M):
    """With everything observed, PoE over each fixed subset (with and without prior expert) has the closed form,
    checked here on all_subsets(M) one subset at a time through a one-row subset mask."""
    experts = random_experts(M, B=4, D=2, seed=M)
    experts.avail[:] = True
    for prior_expert in (False, True):
        post = PoE(prior_expert=prior_expert, subsets="all")(experts)
        for k, S in enumerate(all_subsets(M)):
            used = S.nonzero().flatten().tolist()
            for b in range(4):
                mu, lv = naive_gaussian("poe", used, experts, b, prior_expert)
                torch.testing.assert_close(post.mu[k, b], mu, **TOL)
                torch.testing.assert_close(post.logvar[k, b], lv, **TOL)
        torch.testing.assert_close(post.weight, torch.full_like(post.weight, 1 / (2**M - 1)), **TOL)


@pytest.mark.parametrize("prior_expert", [False, True])
def test_poe_is_a_product_of_densities(prior_expert):
    """log q_PoE(z) - [sum_m log q_m(z) (+ log N(z; 0, I))] does not depend on z: the product, renormalised."""
    experts = random_experts(3, B=5, D=4, seed=11)
    experts.avail[:] = True
    post = PoE(prior_expert=prior_expert)(experts)
    g = torch.Generator().manual_seed(12)
    z = torch.randn(6, 5, 4, generator=g, dtype=torch.float64) * 3  # [N, B, D]
    rest = log_normal(z[:, None], experts.mu[None], experts.logvar[None]).sum(1)  # [N, B]
    if prior_expert:
        rest = rest + log_normal(z, torch.zeros_like(z), torch.zeros_like(z))
    gap = log_normal(z, post.mu[0], post.logvar[0]) - rest  # [N, B]
    torch.testing.assert_close(gap, gap[:1].expand_as(gap), rtol=1e-9, atol=1e-9)


def test_mopoe_unimodal_subsets_are_the_experts():
    experts = random_experts(3, B=6, D=4, seed=3)
    for prior_expert in (False, True):
        post = MoPoE(prior_expert=prior_expert)(experts)
        for m in range(3):  # subsets 0..M-1 are the singletons {m}
            obs = experts.avail[:, m]
            mu_m, var_m = experts.mu[m, obs], experts.logvar[m, obs].exp()
            if prior_expert:  # N(mu, var) * N(0, 1), renormalised
                mu_m, var_m = mu_m / var_m / (1 / var_m + 1), 1 / (1 / var_m + 1)
            torch.testing.assert_close(post.mu[m, obs], mu_m, **TOL)
            torch.testing.assert_close(post.logvar[m, obs].exp(), var_m, **TOL)
            assert bool((post.weight[m, ~obs] == 0).all())


def test_intersect_versus_contain():
    """avail = {0, 2} of 3: intersect (PoE joint) fuses {0, 2}; contain (MoPoE) keeps exactly the subsets of {0, 2}."""
    experts = random_experts(3, B=1, D=2, seed=4)
    experts.avail[:] = torch.tensor([[True, False, True]])
    joint = PoE(prior_expert=False)(experts)
    assert joint.members[0, 0].tolist() == [True, False, True]
    mu, lv = naive_gaussian("poe", [0, 2], experts, 0, False)
    torch.testing.assert_close(joint.mu[0, 0], mu, **TOL)
    mix = MoPoE()(experts)
    names = subset_names(mix.subsets, ["a", "b", "c"])
    valid = {names[k] for k in range(len(names)) if mix.valid[k, 0]}
    assert valid == {("a",), ("c",), ("a", "c")}
    torch.testing.assert_close(mix.weight[:, 0][mix.valid[:, 0]], torch.full((3,), 1 / 3, dtype=torch.float64))
    # PoE(subsets="all") also uses "contain": the full subset {a, b, c} is not valid here
    assert not bool(PoE(subsets="all")(experts).valid[-1, 0])
    # "joint+unimodal" uses "intersect" for the joint row but the unimodal {b} is empty -> invalid
    ju = PoE(subsets="joint+unimodal")(experts)
    assert ju.valid[:, 0].tolist() == [True, True, False, True]


def test_moe_components_are_the_observed_experts():
    experts = random_experts(4, B=8, D=3, seed=5)
    post = MoE()(experts)
    obs = experts.avail.T  # [M, B]
    torch.testing.assert_close(post.mu[obs], experts.mu[obs], **TOL)
    torch.testing.assert_close(post.logvar[obs], experts.logvar[obs], **TOL)
    expected_w = obs.double() / obs.sum(0, keepdim=True)
    torch.testing.assert_close(post.weight, expected_w, **TOL)
    # the mixture mean is the average of the observed experts' means
    ref = (experts.mu * obs[..., None]).sum(0) / obs.sum(0)[:, None]
    torch.testing.assert_close(post.mean(), ref, **TOL)


# ------------------------------------------------------------------ errors and factory
@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_sample_without_observation_raises(name):
    experts = random_experts(3, B=4, D=2, seed=6)
    experts.avail[2] = False
    with pytest.raises(InputError, match="no observed modality"):
        make_aggregator(name)(experts)


def test_make_aggregator():
    for name, cls in AGGREGATORS.items():
        agg = make_aggregator(name)
        assert type(agg) is cls and make_aggregator(agg) is agg
        again = make_aggregator(agg.config())
        assert type(again) is cls and again.config() == agg.config()
    with pytest.raises(InputError, match="unknown aggregator 'bogus'"):
        make_aggregator("bogus")
    with pytest.raises(InputError, match="subsets"):
        PoE(subsets="pairs")


# ------------------------------------------------------------------ sampling from the mixture
def _separated_moe(avail):
    """MoE over M experts whose means are 100 apart along every dim and whose sd is 0.01."""
    B, M = avail.shape
    mu = (100.0 * torch.arange(M, dtype=torch.float64))[:, None, None].expand(M, B, 2).clone()
    logvar = torch.full((M, B, 2), 2 * math.log(0.01), dtype=torch.float64)
    return MoE()(Experts(mu, logvar, avail))


def _component_of(z):
    return (z[..., 0] / 100.0).round().long()  # [n, B]: nearest expert


def test_moe_sampling_proportions_and_never_unobserved():
    """n = 6000 draws per sample. Uniform over the observed experts is tested by a chi-square goodness-of-fit
    test per sample at level 1e-4 (false-alarm rate < 6e-4 over the 6 samples, seed fixed). Draws from an unobserved
    expert would be a certain failure (weight 0), and are asserted to be exactly zero."""
    torch.manual_seed(2024)
    avail = torch.tensor([[1, 1, 1, 1], [1, 0, 1, 0], [0, 0, 0, 1], [0, 1, 1, 1], [1, 1, 0, 0], [0, 0, 1, 0]],
                         dtype=torch.bool)
    post = _separated_moe(avail)
    n = 6000
    z = post.sample_component(n)  # [n, B, D]
    assert z.shape == (n, 6, 2)
    comp = _component_of(z)
    for b in range(6):
        counts = torch.bincount(comp[:, b], minlength=4)
        assert int(counts[~avail[b]].sum()) == 0
        obs = counts[avail[b]].numpy()
        if len(obs) > 1:
            assert stats.chisquare(obs).pvalue > 1e-4, (b, obs)
    # each drawn point lies on its component: within 6 sd (0.06) of that expert's mean
    assert bool(((z[..., 0] - 100.0 * comp).abs() < 0.06).all())
    assert post.sample_component().shape == (6, 2)


def test_sample_component_follows_nonuniform_weights():
    """Weights (0.1, 0.6, 0.3, 0): counts over n = 20000 draws pass a chi-square test at level 1e-4
    (false-alarm rate 1e-4, seed fixed); the zero-weight component is never drawn."""
    torch.manual_seed(7)
    K, B, D = 4, 1, 2
    mu = (100.0 * torch.arange(K, dtype=torch.float64))[:, None, None].expand(K, B, D).clone()
    lv = torch.full((K, B, D), -9.0, dtype=torch.float64)
    w = torch.tensor([[0.1], [0.6], [0.3], [0.0]], dtype=torch.float64)
    post = SubsetPosterior(mu, lv, torch.ones(K, B, 1, dtype=torch.bool), w)
    n = 20_000
    counts = torch.bincount(_component_of(post.sample_component(n))[:, 0], minlength=K)
    assert int(counts[3]) == 0
    assert stats.chisquare(counts[:3].numpy(), n * w[:3, 0].numpy()).pvalue > 1e-4, counts


def test_sample_component_moments_of_one_component():
    """A single component: draws have its mean and variance (N = 100k; 6-sigma bounds)."""
    torch.manual_seed(8)
    mu = torch.tensor([[[1.0, -2.0]]], dtype=torch.float64)
    lv = torch.tensor([[[0.5, -1.0]]], dtype=torch.float64)
    post = SubsetPosterior(mu, lv, torch.ones(1, 1, 1, dtype=torch.bool), torch.ones(1, 1, dtype=torch.float64))
    n = 100_000
    z = post.sample_component(n)[:, 0]  # [n, D]
    var = lv[0, 0].exp()
    assert bool(((z.mean(0) - mu[0, 0]).abs() < 6 * (var / n).sqrt()).all())
    assert bool(((z.var(0) - var).abs() < 6 * var * math.sqrt(2 / n)).all())
