"""Issue 5.6: property-based fuzzing (hypothesis) over random shapes, masks, 1 to 8 modalities, latent sizes,
likelihoods, aggregators, priors and objectives.

Properties: aggregators, priors and objectives give finite values of the right shapes; values at masked-out
(missing) inputs have no effect, bit for bit; invalid inputs raise mmvae.InputError, never a bare RuntimeError
from inside torch. Examples are counted for the closing summary.
"""
from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_helpers import SMOKE, count

from mmvae import InputError, Modality, MultimodalVAE
from mmvae.aggregators import AVG, MoE, MoPoE, NoAggregation, PoE
from mmvae.gaussian import Experts
from mmvae.networks import MLPDecoder, MLPEncoder
from mmvae.priors import MMVAMP, StandardNormal

#: examples per property; MMVAE_FUZZ_EXAMPLES=N for a longer hunt
EXAMPLES = int(os.environ.get("MMVAE_FUZZ_EXAMPLES", 25 if SMOKE else 60))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

AGGREGATORS = {"poe": lambda: PoE(), "poe-noprior": lambda: PoE(prior_expert=False),
               "poe-joint+unimodal": lambda: PoE(subsets="joint+unimodal"), "poe-all": lambda: PoE(subsets="all"),
               "mopoe": lambda: MoPoE(), "moe": lambda: MoE(), "avg": lambda: AVG(), "none": lambda: NoAggregation()}
LIKELIHOODS = ["gaussian", "laplace", "bernoulli", "continuous_bernoulli", "categorical"]


@st.composite
def masks(draw, M=None, B=None):
    """avail [B, M] with at least one observed modality per sample."""
    M = M or draw(st.integers(1, 8))
    B = B or draw(st.integers(1, 5))
    rows = draw(st.lists(st.lists(st.booleans(), min_size=M, max_size=M).filter(any), min_size=B, max_size=B))
    return torch.tensor(rows, dtype=torch.bool)


@st.composite
def experts(draw):
    avail = draw(masks())
    B, M = avail.shape
    D = draw(st.integers(1, 4))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    spread = draw(st.sampled_from([1e-3, 1.0, 30.0]))
    mu = spread * torch.randn(M, B, D, generator=g)
    logvar = torch.empty(M, B, D).uniform_(-11.9, 11.9, generator=g)  # experts' logvar is soft-clamped to (-12, 12)
    return Experts(mu, logvar, avail), g


def garbage(ex: Experts, g) -> Experts:
    """The same experts with random values where the modality is missing (the aggregator must not read them)."""
    miss = ~ex.avail.T[..., None]  # [M, B, 1]
    mu = torch.where(miss, 1e4 * torch.randn(ex.mu.shape, generator=g), ex.mu)
    lv = torch.where(miss, torch.empty(ex.mu.shape).uniform_(-11.9, 11.9, generator=g), ex.logvar)
    return Experts(mu, lv, ex.avail)


@FUZZ
@given(case=experts(), name=st.sampled_from(sorted(AGGREGATORS)))
def test_aggregators_finite_shaped_and_blind_to_missing(case, name):
    count("fuzz_examples")
    ex, g = case
    agg = AGGREGATORS[name]()
    M, B, D = ex.mu.shape
    post = agg(ex)
    K = agg.subsets(M).shape[0]
    assert post.mu.shape == post.logvar.shape == (K, B, D) and post.weight.shape == (K, B)
    assert post.members.shape == (K, B, M)
    assert bool(torch.isfinite(post.mu).all() & torch.isfinite(post.logvar).all())
    assert bool((post.weight >= 0).all()) and torch.allclose(post.weight.sum(0), torch.ones(B))
    assert not bool((post.members & ~ex.avail[None]).any())  # no subset uses a missing modality
    other = agg(garbage(ex, g))
    for a, b in [(post.mu, other.mu), (post.logvar, other.logvar), (post.weight, other.weight),
                 (post.members, other.members)]:
        assert torch.equal(a, b)


@FUZZ
@given(case=experts(), name=st.sampled_from(["mopoe", "none", "poe", "moe"]),
       prior=st.sampled_from(["normal", "mmvamp-bound", "mmvamp-mc"]), n=st.integers(1, 3),
       alpha=st.tuples(st.floats(0, 1), st.floats(0, 1)), steps=st.integers(0, 5))
def test_priors_finite_shaped_and_blind_to_missing(case, name, prior, n, alpha, steps):
    count("fuzz_examples")
    ex, g = case
    post = AGGREGATORS[name]()(ex)
    if prior == "normal":
        p = StandardNormal()
    else:
        p = MMVAMP(kl=prior.split("-")[1], n_samples=n, alpha_start=alpha[0], alpha_end=alpha[1], anneal_steps=steps)
        p.eval()  # no annealing step counted, so repeated calls agree
    torch.manual_seed(0)
    kl = p.kl(post, ex)
    assert kl.shape == post.weight.shape and bool(torch.isfinite(kl).all())
    if prior == "mmvamp-bound" or prior == "normal":
        assert bool((kl[post.valid] >= -1e-3 * (1 + kl[post.valid].abs())).all())  # a KL (bound) is not negative
    z = post.mu + torch.randn(post.mu.shape, generator=g)  # [K, B, D]
    lp = p.log_prob(z, ex)
    assert lp.shape == post.weight.shape and bool(torch.isfinite(lp).all())
    ex2 = garbage(ex, g)
    torch.manual_seed(0)
    assert torch.equal(kl, p.kl(AGGREGATORS[name]()(ex2), ex2))
    assert torch.equal(lp, p.log_prob(z, ex2))


# ------------------------------------------------------------------------------------------------ whole models
@st.composite
def model_cases(draw, max_modalities=8):
    M = draw(st.integers(1, max_modalities))
    specs = []
    for _ in range(M):
        lik = draw(st.sampled_from(LIKELIHOODS))
        specs.append((lik, draw(st.integers(1, 4)), draw(st.integers(2, 5)) if lik == "categorical" else None,
                      draw(st.integers(0, 2))))
    shared = draw(st.integers(1, 4))
    aggregator = draw(st.sampled_from(["poe", "moe", "mopoe", "avg", "none", "poe-joint+unimodal"]))
    objective = draw(st.sampled_from(["elbo", "elbo-mc", "elbo-sum", "iwae", "dreg"]))
    prior = draw(st.sampled_from(["normal", "mmvamp", "mmvamp-mc"]))
    cross = draw(st.sampled_from(["prior", "posterior"]))
    K = draw(st.integers(1, 3))
    avail = draw(masks(M=M, B=draw(st.integers(1, 4))))
    seed = draw(st.integers(0, 2**31 - 1))
    return specs, shared, aggregator, objective, prior, cross, K, avail, seed


def build(specs, shared, aggregator, objective, prior, cross, K, seed):
    torch.manual_seed(seed)
    mods, private = {}, {}
    for i, (lik, d, C, dp) in enumerate(specs):
        latent = shared + dp
        enc = MLPEncoder((d,), 2 * latent, hidden=(8,), num_classes=C, embed_dim=2)
        dec = MLPDecoder(latent, (d,), hidden=(8,), num_classes=C)
        mods[f"m{i}"] = Modality(enc, dec, {"name": lik, "num_classes": C} if C else lik)
        private[f"m{i}"] = dp
    agg = {"name": "poe", "subsets": "joint+unimodal"} if aggregator == "poe-joint+unimodal" else aggregator
    obj = {"elbo": None, "elbo-mc": {"name": "elbo", "kl": "mc"}, "elbo-sum": {"name": "elbo", "combine": "sum"},
           "iwae": {"name": "iwae", "K": K}, "dreg": {"name": "dreg", "K": K}}[objective]
    pri = {"normal": "normal", "mmvamp": {"name": "mmvamp", "alpha_end": 0.2},
           "mmvamp-mc": {"name": "mmvamp", "kl": "mc", "n_samples": K}}[prior]
    return MultimodalVAE(mods, shared, private_dim=private, aggregator=agg, objective=obj, prior=pri,
                         cross_private=cross)


def batch(specs, avail, seed):
    g = torch.Generator().manual_seed(seed)
    B = avail.shape[0]
    x = {}
    for i, (lik, d, C, _) in enumerate(specs):
        if lik == "categorical":
            x[f"m{i}"] = torch.randint(C, (B, d), generator=g)
        elif lik in ("bernoulli", "continuous_bernoulli"):
            x[f"m{i}"] = torch.rand(B, d, generator=g)
        else:
            x[f"m{i}"] = 3 * torch.randn(B, d, generator=g)
    return x


def spoil_missing(x, avail):
    """NaN (or out-of-range tokens) wherever the modality is missing."""
    out = {}
    for i, (k, v) in enumerate(x.items()):
        miss = ~avail[:, i].view(-1, *[1] * (v.dim() - 1))
        out[k] = torch.where(miss, torch.full_like(v, -7 if not v.is_floating_point() else math.nan), v)
    return out


def run(model, x, avail, seed=1):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = model(x, avail)
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@FUZZ
@given(case=model_cases())
def test_objectives_finite_and_blind_to_missing(case):
    count("fuzz_examples")
    specs, shared, aggregator, objective, prior, cross, K, avail, seed = case
    model = build(specs, shared, aggregator, objective, prior, cross, K, seed)
    x = batch(specs, avail, seed)
    out, grads = run(model, x, avail)
    assert out.loss.shape == () and bool(torch.isfinite(out.loss))
    assert {f"nll/m{i}" for i in range(len(specs))} <= set(out.terms) and "kl/shared" in out.terms
    assert all(t.shape == () and bool(torch.isfinite(t)) for t in out.terms.values())
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads.values())
    if prior != "normal":  # MM-VAMP counts training forwards for its annealing; start the second run alike
        model.prior.steps.zero_()
    out2, grads2 = run(model, spoil_missing(x, avail), avail)
    if prior != "normal":
        model.prior.steps.zero_()
    assert torch.equal(out.loss, out2.loss)
    assert all(torch.equal(out.terms[k], out2.terms[k]) for k in out.terms)
    assert grads.keys() == grads2.keys() and all(torch.equal(grads[k], grads2[k]) for k in grads)
    # the inference verbs too
    model.eval()
    torch.manual_seed(2)
    a = model.impute(x, targets=list(x), avail=avail)
    torch.manual_seed(2)
    b = model.impute(spoil_missing(x, avail), targets=list(x), avail=avail)
    assert all(torch.equal(a[k], b[k]) and a[k].shape[0] == avail.shape[0] for k in a)
    assert torch.equal(model.embed(x, avail)["shared"], model.embed(spoil_missing(x, avail), avail)["shared"])


def _corrupt(kind, x, avail, specs, draw):
    """A copy of a valid (x, avail) made invalid in one way; None when the batch offers no place for it."""
    x = {k: v.clone() for k, v in x.items()}
    names = list(x)
    B, M = avail.shape
    pick = lambda options: options[draw(st.integers(0, len(options) - 1))] if options else None  # noqa: E731
    cont = [i for i, s in enumerate(specs) if s[0] != "categorical"]
    unit = [i for i, s in enumerate(specs) if s[0] in ("bernoulli", "continuous_bernoulli")]
    cat = [i for i, s in enumerate(specs) if s[0] == "categorical"]
    observed = lambda idx: [i for i in idx if bool(avail[:, i].any())]  # noqa: E731
    if kind == "unknown name":
        x["not_a_modality"] = torch.zeros(B, 1)
    elif kind == "observed but absent":
        i = pick(observed(range(M)))
        if i is None:
            return None
        del x[names[i]]
    elif kind == "batch sizes disagree":
        if M == 1:
            return None
        i = pick(list(range(M)))
        x[names[i]] = torch.cat([x[names[i]], x[names[i]][:1]])
    elif kind == "trailing shape":
        i = pick(list(range(M)))
        v = x[names[i]]
        x[names[i]] = torch.cat([v, v[:, :1]], 1) if draw(st.booleans()) else v[..., None]
    elif kind == "dtype":  # checked where observed: a modality missing in every sample is never read
        i = pick(observed(range(M)))
        if i is None:
            return None
        v = x[names[i]]
        x[names[i]] = v.float() if i in cat else v.round().long()
    elif kind == "Inf observed":
        i = pick(observed(cont))
        if i is None:
            return None
        b = pick(avail[:, i].nonzero().flatten().tolist())
        x[names[i]][b, 0] = pick([math.inf, -math.inf])  # NaN is a gap, not an error
    elif kind == "out of range":
        i = pick(observed(unit + cat))
        if i is None:
            return None
        b = pick(avail[:, i].nonzero().flatten().tolist())
        x[names[i]][b, -1] = pick([-2, specs[i][2]]) if i in cat else pick([-0.5, 1.5])
    elif kind == "mask shape":
        avail = pick([avail[:, :-1], torch.cat([avail, avail[:, :1]], 1), avail[:-1] if B > 1 else avail[:, None],
                      avail[None]])
    elif kind == "mask values":
        avail = avail.float()
        avail[pick(list(range(B))), pick(list(range(M)))] = pick([2.0, -1.0, 0.5, math.nan])
    elif kind == "sample with nothing observed":
        avail = avail.clone()
        avail[pick(list(range(B)))] = False
    elif kind == "empty batch":
        x = {k: v[:0] for k, v in x.items()}
        avail = avail[:0]
    elif kind == "not a tensor":
        i = pick(list(range(M)))
        x[names[i]] = x[names[i]].tolist()
    return x, avail


KINDS = ["unknown name", "observed but absent", "batch sizes disagree", "trailing shape", "dtype",
         "Inf observed", "out of range", "mask shape", "mask values", "sample with nothing observed",
         "empty batch", "not a tensor"]


@FUZZ
@given(case=model_cases(max_modalities=5), kind=st.sampled_from(KINDS),
       verb=st.sampled_from(["forward", "impute", "embed"]), data=st.data())
def test_invalid_inputs_raise_input_error(case, kind, verb, data):
    count("fuzz_examples")
    specs, shared, aggregator, objective, prior, cross, K, avail, seed = case
    model = build(specs, shared, aggregator, objective, prior, cross, K, seed)
    x = batch(specs, avail, seed)
    bad = _corrupt(kind, x, avail, specs, data.draw)
    if bad is None:
        return
    xb, ab = bad
    call = {"forward": lambda: model(xb, ab), "embed": lambda: model.embed(xb, ab),
            "impute": lambda: model.impute(xb, targets=list(x), avail=ab)}[verb]
    with pytest.raises(InputError):
        call()
