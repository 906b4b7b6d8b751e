"""Learned fusion aggregators ("gated", "lowrank"; mmvae/fusion.py behind mmvae/aggregators.py).

References: a per-subset, per-sample Python loop that reads the definitions (the gated product of experts with
gates |S| softmax_S(g) or 2 sigmoid(g); low-rank fusion f = sum_i prod_m W_m^(i) h_m with h_m = [0, ..., 0, 1]
outside the subset) and knows nothing of the einsums. Closed forms are compared in float64 at 1e-10; the model
tests run in float32. Seeds: every random draw comes from a generator or manual_seed fixed in the test.
"""
import io
import json

import pytest
import torch
from test_aggregators import random_experts as shared_random_experts  # the same draws

from mmvae import InputError, Modality, MultimodalVAE
from mmvae.aggregators import Gated, LowRank, MoPoE, PoE, make_aggregator
from mmvae.gaussian import Experts, kl_std_normal
from mmvae.networks import MLPDecoder, MLPEncoder

TOL = dict(rtol=1e-10, atol=1e-10)
SUBSETS = ["joint", "joint+unimodal", "all"]


def random_experts(M, B, D, seed, p_obs=0.5):
    """float64 experts; sample 0 sees everything, sample 1 only the last modality, others at random (>= 1 each)."""
    return shared_random_experts(M, B, D, seed, p_obs)


def built(spec, M, D, seed=0, scale=1.0):
    """An aggregator built for (M, D) in float64, every parameter drawn at random (times `scale`)."""
    agg = make_aggregator(spec)
    agg.build(M, D)
    agg.double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in agg.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return agg


def garbage_in_unobserved(experts):
    """The same experts with NaN means and inf log-variances wherever a modality is not observed."""
    hole = ~experts.avail.T[..., None]  # [M, B, 1]
    return Experts(torch.where(hole, float("nan"), experts.mu), torch.where(hole, float("inf"), experts.logvar),
                   experts.avail)


# ------------------------------------------------------------------ the naive references
def naive_gated(agg, experts):
    """(mu, logvar) [K, B, D] by a loop over subsets and samples, from the gate network's logits [M, B, D]."""
    M, B, D = experts.mu.shape
    post = agg(experts)
    logits = agg.net(*agg.observed(experts))
    mu, lv = torch.zeros(post.mu.shape, dtype=torch.float64), torch.zeros(post.mu.shape, dtype=torch.float64)
    for k in range(post.members.shape[0]):
        for b in range(B):
            used = post.members[k, b].nonzero().flatten().tolist()
            prec = torch.full((D,), 1.0 if agg.prior_expert else 0.0, dtype=torch.float64)
            num = torch.zeros(D, dtype=torch.float64)
            g = logits[used, b]  # [n, D]
            a = 2 * torch.sigmoid(g) if agg.gate == "sigmoid" else len(used) * torch.softmax(g, 0)
            for j, m in enumerate(used):
                p = torch.exp(-experts.logvar[m, b])
                prec, num = prec + a[j] * p, num + a[j] * p * experts.mu[m, b]
            prec = prec.clamp_min(1e-8)
            mu[k, b], lv[k, b] = num / prec, -torch.log(prec)
    return mu, lv


def naive_lowrank(agg, experts):
    """(mu, logvar) [K, B, D] by a loop over subsets, samples, ranks and modalities (Liu et al.'s sum of products)."""
    M, B, D = experts.mu.shape
    post, net = agg(experts), agg.net
    mu, lv = torch.zeros(post.mu.shape, dtype=torch.float64), torch.zeros(post.mu.shape, dtype=torch.float64)
    for k in range(post.members.shape[0]):
        for b in range(B):
            f = torch.zeros(net.factors.shape[-1], dtype=torch.float64)
            for i in range(net.factors.shape[1]):
                prod = torch.ones_like(f)
                for m in range(M):
                    h = torch.zeros(2 * D + 1, dtype=torch.float64)
                    h[-1] = 1.0
                    if post.members[k, b, m]:
                        h[:D], h[D:2 * D] = experts.mu[m, b], experts.logvar[m, b]
                    prod = prod * (h @ net.factors[m, i])
                f = f + prod
            mu[k, b] = net.mu_head(f)
            lv[k, b] = 12.0 * torch.tanh(net.logvar_head(f) / 12.0)
    return mu, lv


# ------------------------------------------------------------------ gated
@pytest.mark.parametrize("gate", ["softmax", "sigmoid"])
@pytest.mark.parametrize("subsets", SUBSETS)
@pytest.mark.parametrize("prior_expert", [False, True])
def test_equal_gates_are_poe(gate, subsets, prior_expert):
    """Zeroing the gate network's last layer makes every gate equal: then the gated product is PoE exactly (same
    subsets, members, weights, mu, logvar), with per-sample missing modalities. Random gates are not PoE."""
    experts = random_experts(4, B=9, D=3, seed=1)
    agg = built({"name": "gated", "gate": gate, "subsets": subsets, "prior_expert": prior_expert}, 4, 3)
    poe = PoE(prior_expert=prior_expert, subsets=subsets)(experts)
    assert not torch.allclose(agg(experts).mu, poe.mu, rtol=1e-3, atol=1e-3)  # the check below can fail
    with torch.no_grad():
        agg.net.w2.zero_()
        agg.net.b2.zero_()
    post = agg(experts)
    assert torch.equal(post.members, poe.members) and torch.equal(post.subsets, poe.subsets)
    torch.testing.assert_close(post.weight, poe.weight, **TOL)
    torch.testing.assert_close(post.mu, poe.mu, **TOL)
    torch.testing.assert_close(post.logvar, poe.logvar, **TOL)
    gates = agg.gates(experts)  # [K, B, M, D]
    torch.testing.assert_close(gates, post.members[..., None].expand_as(gates).double(), **TOL)


def test_a_new_gated_aggregator_starts_as_poe():
    """As built (last layer at zero), gated is PoE before any training."""
    experts = random_experts(3, B=6, D=4, seed=2)
    agg = make_aggregator("gated")
    agg.build(3, 4)
    agg.double()
    poe = PoE()(experts)
    torch.testing.assert_close(agg(experts).mu, poe.mu, **TOL)
    torch.testing.assert_close(agg(experts).logvar, poe.logvar, **TOL)


@pytest.mark.parametrize("gate", ["softmax", "sigmoid"])
@pytest.mark.parametrize("subsets", SUBSETS)
@pytest.mark.parametrize("M", [1, 2, 4])
def test_gated_equals_the_naive_loop(gate, subsets, M):
    """With random (unequal) gates, the fused einsums equal the textbook gated product, subset by subset."""
    experts = random_experts(M, B=7, D=3, seed=10 + M)
    agg = built({"name": "gated", "gate": gate, "subsets": subsets}, M, 3, seed=M)
    post = agg(experts)
    mu, lv = naive_gated(agg, experts)
    v = post.valid[..., None].expand_as(mu)
    torch.testing.assert_close(post.mu[v], mu[v], **TOL)
    torch.testing.assert_close(post.logvar[v], lv[v], **TOL)


@pytest.mark.parametrize("gate", ["softmax", "sigmoid"])
@pytest.mark.parametrize("subsets", SUBSETS)
def test_gated_masks_unobserved_experts(gate, subsets):
    """NaN / inf in unobserved experts, saturated gates (weights x 50), log-variances at the soft bound, a row with a
    single observed expert and subsets with no observed member: everything stays finite, the gates of experts
    outside a subset are exactly 0 (softmax gates sum to |S| over it), and unobserved experts get zero gradient."""
    experts = random_experts(4, B=8, D=3, seed=3)
    experts.logvar[:, 2] = 12.0 * torch.sign(experts.logvar[:, 2])  # var e^12 or e^-12
    experts.mu.requires_grad_(True)
    agg = built({"name": "gated", "gate": gate, "subsets": subsets, "prior_expert": False}, 4, 3, scale=50.0)
    dirty = garbage_in_unobserved(experts)
    post = agg(dirty)
    assert bool(torch.isfinite(post.mu).all() and torch.isfinite(post.logvar).all())
    if subsets == "joint+unimodal":  # an empty subset (the unimodal {m} where m is missing), invalid
        assert not bool(post.valid.all())
    gates = agg.gates(dirty)  # [K, B, M, D]
    assert bool(torch.isfinite(gates).all())
    assert bool((gates[~post.members] == 0).all()) and bool((gates[post.members] > 0).all())
    if gate == "softmax":
        n = post.members.sum(-1, keepdim=True).double()  # [K, B, 1]
        torch.testing.assert_close(gates.sum(2), n.expand(-1, -1, 3), **TOL)
    (post.mu.sum() + post.logvar.sum()).backward()
    g = experts.mu.grad  # [M, B, D]
    assert bool(torch.isfinite(g).all())
    assert bool((g[~experts.avail.T] == 0).all()) and bool((g[experts.avail.T] != 0).any())
    assert all(bool(torch.isfinite(p.grad).all()) for p in agg.parameters())


# ------------------------------------------------------------------ low rank
@pytest.mark.parametrize("subsets", SUBSETS)
@pytest.mark.parametrize("M", [1, 2, 3])
@pytest.mark.parametrize("rank", [1, 3])
def test_lowrank_equals_the_naive_loop(subsets, M, rank):
    """The einsum over [K, B, M, r, H] equals Liu et al.'s sum over ranks of products over modalities, per subset."""
    experts = random_experts(M, B=5, D=2, seed=20 + M)
    agg = built({"name": "lowrank", "rank": rank, "subsets": subsets, "hidden": 6}, M, 2, seed=rank)
    post = agg(experts)
    mu, lv = naive_lowrank(agg, experts)
    torch.testing.assert_close(post.mu, mu, **TOL)  # invalid subsets too: they fuse constants only
    torch.testing.assert_close(post.logvar, lv, **TOL)


def test_lowrank_with_one_modality_observed_ignores_the_others():
    """Sample 1 observes only the last modality: rewriting the other experts' mu / logvar (NaN included) leaves its
    joint posterior identical; rewriting the observed expert changes it."""
    experts = random_experts(3, B=6, D=4, seed=4)
    agg = built("lowrank", 3, 4, seed=5, scale=0.3)
    before = agg(experts)
    other = experts.mu.clone(), experts.logvar.clone()
    other[0][:2, 1], other[1][:2, 1] = float("nan"), 100.0
    after = agg(Experts(*other, experts.avail))
    assert torch.equal(after.mu[:, 1], before.mu[:, 1]) and torch.equal(after.logvar[:, 1], before.logvar[:, 1])
    own = experts.mu.clone()
    own[2, 1] += 1.0
    moved = agg(Experts(own, experts.logvar, experts.avail))
    assert not torch.allclose(moved.mu[:, 1], before.mu[:, 1])


def test_lowrank_subset_posteriors_depend_on_their_members_only():
    """subsets="all", everything observed: changing modality j's inputs leaves every subset without j unchanged
    (bit for bit) and changes every subset with j."""
    experts = random_experts(3, B=4, D=3, seed=6)
    experts.avail[:] = True
    agg = built({"name": "lowrank", "subsets": "all"}, 3, 3, seed=7, scale=0.3)
    before = agg(experts)
    for j in range(3):
        mu, lv = experts.mu.clone(), experts.logvar.clone()
        mu[j] += 0.5
        lv[j] -= 0.5
        after = agg(Experts(mu, lv, experts.avail))
        has_j = before.subsets[:, j]  # [K]
        assert torch.equal(after.mu[~has_j], before.mu[~has_j])
        assert torch.equal(after.logvar[~has_j], before.logvar[~has_j])
        assert bool(((after.mu[has_j] - before.mu[has_j]).abs().amax((1, 2)) > 1e-6).all())


def test_lowrank_masks_unobserved_experts():
    """NaN / inf in unobserved experts: finite posteriors, and zero gradient into those experts."""
    experts = random_experts(4, B=8, D=3, seed=8)
    experts.mu.requires_grad_(True)
    post = built({"name": "lowrank", "subsets": "joint+unimodal"}, 4, 3, scale=0.3)(garbage_in_unobserved(experts))
    assert bool(torch.isfinite(post.mu).all() and torch.isfinite(post.logvar).all())
    (post.mu.sum() + post.logvar.sum()).backward()
    g = experts.mu.grad
    assert bool((g[~experts.avail.T] == 0).all()) and bool((g[experts.avail.T] != 0).any())


# ------------------------------------------------------------------ the SubsetPosterior contract
@pytest.mark.parametrize("spec", [{"name": "gated", "subsets": "all"}, {"name": "lowrank", "subsets": "all"}])
def test_mixture_over_all_subsets_is_mopoe_shaped(spec):
    """subsets="all" is a learned MoPoE: MoPoE's subsets, members and weights, one subset drawn per sample; a drawn
    subset fused alone (`select`) equals the same subset fused with all others; the KL is the closed form."""
    experts = random_experts(3, B=10, D=2, seed=9)
    agg = built(spec, 3, 2, seed=1, scale=0.3)
    post, ref = agg(experts), MoPoE()(experts)
    assert agg.stratify is False and agg.restrict == "contain" and agg.fuses_any
    assert torch.equal(post.members, ref.members) and torch.equal(post.weight, ref.weight)
    torch.manual_seed(0)
    k = torch.stack([torch.multinomial(post.weight.T, 1).squeeze(1) for _ in range(3)])  # [3, B], valid subsets
    drawn = agg(experts).select(k)  # lazily: fuses only the drawn subsets
    idx = k[..., None].expand(3, 10, 2)
    torch.testing.assert_close(drawn.mu, post.mu.gather(0, idx), **TOL)
    torch.testing.assert_close(drawn.logvar, post.logvar.gather(0, idx), **TOL)
    assert torch.equal(drawn.members, post.members.gather(0, k[..., None].expand(3, 10, 3)))
    torch.testing.assert_close(agg(experts).kl_std_normal(), kl_std_normal(post.mu, post.logvar), **TOL)


# ------------------------------------------------------------------ specs and building
SPECS = ["gated", {"name": "gated", "gate": "sigmoid", "subsets": "all", "prior_expert": False, "hidden": 8},
         "lowrank", {"name": "lowrank", "rank": 2, "subsets": "joint+unimodal", "hidden": 5}]


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_config_round_trips(spec):
    agg = make_aggregator(spec)
    again = make_aggregator(json.loads(json.dumps(agg.config())))
    assert type(again) is type(agg) and again.config() == agg.config()
    if isinstance(spec, dict):
        assert {k: agg.config()[k] for k in spec} == spec


def test_build_and_option_errors():
    agg = make_aggregator("gated")
    experts = random_experts(3, B=4, D=2, seed=0)
    with pytest.raises(InputError, match="build"):
        _ = agg(experts).mu
    assert agg.build(3, 2) is agg
    net = agg.net
    assert agg.build(3, 2) is agg and agg.net is net  # again, the same size: a no-op
    with pytest.raises(InputError, match="built for"):
        agg.build(4, 2)
    with pytest.raises(InputError, match="gate"):
        Gated(gate="tanh")
    with pytest.raises(InputError, match="subsets"):
        LowRank(subsets="pairs")
    with pytest.raises(InputError, match="rank"):
        LowRank(rank=0)


# ------------------------------------------------------------------ inside the model
def tiny_model(aggregator, seed=0, M=3, D=3):
    torch.manual_seed(seed)
    mods = {f"m{i}": Modality(MLPEncoder((5,), 2 * D, hidden=(8,)), MLPDecoder(D, (5,), hidden=(8,)), "gaussian")
            for i in range(M)}
    return MultimodalVAE(mods, D, aggregator=aggregator)


def tiny_data(B=12, M=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = {f"m{i}": torch.randn(B, 5, generator=g) for i in range(M)}
    avail = torch.rand(B, M, generator=g) < 0.6
    avail[torch.arange(B), torch.randint(M, (B,), generator=g)] = True
    avail[0] = True
    return x, avail


MODEL_SPECS = ["gated", {"name": "gated", "gate": "sigmoid", "subsets": "all"}, "lowrank",
               {"name": "lowrank", "rank": 2, "subsets": "all"}, {"name": "lowrank", "subsets": "joint+unimodal"}]


@pytest.mark.parametrize("spec", MODEL_SPECS, ids=str)
def test_trains_inside_the_model(spec, one_thread):
    """A few Adam steps on tiny data with missing modalities: finite losses, every aggregator parameter is the
    model's (in its parameters and state_dict) and moves."""
    vae = tiny_model(spec)
    x, avail = tiny_data()
    own = dict(vae.aggregator.named_parameters())
    assert own and {id(p) for p in own.values()} <= {id(p) for p in vae.parameters()}
    assert {f"aggregator.{n}" for n in own} <= set(vae.state_dict())
    start = {n: p.detach().clone() for n, p in own.items()}
    opt = torch.optim.Adam(vae.parameters(), lr=1e-2)
    for _ in range(4):
        opt.zero_grad()
        loss = vae(x, avail).loss
        assert bool(torch.isfinite(loss))
        loss.backward()
        opt.step()
    moved = {n: bool((p.detach() != start[n]).any()) for n, p in own.items()}
    assert all(moved.values()), moved


@pytest.mark.parametrize("spec", MODEL_SPECS, ids=str)
def test_model_save_and_reload(spec, one_thread):
    """config -> JSON -> from_config, state_dict through torch.save: the same posterior and the same loss."""
    vae = tiny_model(spec)
    with torch.no_grad():  # move the aggregator away from its initial state
        for p in vae.aggregator.parameters():
            p.add_(0.1 * torch.randn_like(p))
    buf = io.BytesIO()
    torch.save(vae.state_dict(), buf)
    buf.seek(0)
    again = MultimodalVAE.from_config(json.dumps(vae.config()))
    assert again.aggregator.config() == vae.aggregator.config()
    again.load_state_dict(torch.load(buf))
    x, avail = tiny_data()
    p1, p2 = vae.posterior(x, avail)[0], again.posterior(x, avail)[0]
    assert torch.equal(p1.mu, p2.mu) and torch.equal(p1.logvar, p2.logvar)
    torch.manual_seed(3)
    l1 = vae(x, avail).loss
    torch.manual_seed(3)
    assert torch.equal(l1, again(x, avail).loss)
    fresh = MultimodalVAE.from_config(vae.config())  # without the weights: a different posterior
    assert not torch.equal(fresh.posterior(x, avail)[0].mu, p1.mu)
