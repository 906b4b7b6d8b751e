"""Objectives (mmvae/objectives.py): the hand-written ELBO against Pyro and against a naive per-sample loop.

Exact comparisons share their random draws: both sides are run after the same `torch.manual_seed(seed)` and draw
their standard normals in the same order and with the same number of elements (torch.randn and Pyro's
Normal.rsample both fill a fresh tensor with `normal_()`), so the estimators agree sample by sample and the
assertions are to float32 rounding (rtol 1e-5), not statistical.

Seeds: data and weights use fixed seeds (`_batch`, `build_vae`); each exact comparison names its seed.
"""
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from mmvae import InputError, Modality, MultimodalVAE
from mmvae.gaussian import kl_std_normal, log_normal, sample_index
from mmvae.networks import MLPDecoder, MLPEncoder
from mmvae.objectives import ELBO, make_objective

SHAPES = {"a": (5,), "b": (6,), "c": (4,)}
LIKS = {"a": "gaussian", "b": "bernoulli", "c": {"name": "gaussian", "scale": 0.5, "learn_scale": True}}
EXACT = dict(rtol=1e-5, atol=1e-4)  # float32 sums of a few hundred terms of size ~10


def build_vae(aggregator="poe", shared_dim=3, private_dim=0, names=("a", "b", "c"), seed=0, weights=None, **kw):
    """A small MLP MultimodalVAE; modality "a" weighs 2 by default so the weighting lambda_m is exercised."""
    torch.manual_seed(seed)
    weights = weights or {"a": 2.0}
    mods = {}
    for n in names:
        d = shared_dim + (private_dim.get(n, 0) if isinstance(private_dim, dict) else private_dim)
        mods[n] = Modality(MLPEncoder(SHAPES[n], 2 * d, hidden=(16,)), MLPDecoder(d, SHAPES[n], hidden=(16,)),
                           LIKS[n], weight=weights.get(n, 1.0))
    return MultimodalVAE(mods, shared_dim, private_dim=private_dim, aggregator=aggregator, **kw)


def _batch(B=6, names=("a", "b", "c"), seed=1, avail=None):
    g = torch.Generator().manual_seed(seed)
    x = {}
    for n in names:
        t = torch.randn(B, *SHAPES[n], generator=g)
        x[n] = (t > 0).float() if LIKS[n] == "bernoulli" else t
    if avail is None:  # every pattern: all, one missing, single modality; each modality seen somewhere
        rows = [[1, 1, 1], [1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 0]]
        avail = torch.tensor([(rows[i % len(rows)])[: len(names)] for i in range(B)], dtype=torch.bool)
        avail[~avail.any(1), 0] = True
    return x, avail


# ------------------------------------------------------------------ the Pyro oracle
def pyro_model(vae, x, avail, mc_shared=False):
    B = avail.shape[0]
    with pyro.plate("batch", B):
        pz = dist.Normal(torch.zeros(()), 1.0).expand([vae.shared_dim]).to_event(1)
        z = pyro.sample("z", pz)
        for i, name in enumerate(vae.names):
            d = vae.private_dims[name]
            w = None
            if d:
                w = pyro.sample(f"w_{name}", dist.Normal(torch.zeros(()), 1.0).expand([d]).to_event(1)
                                .mask(avail[:, i]))
            mod = vae.modalities[name]
            params = vae.decode(name, z, w)
            with poutine.scale(scale=mod.weight):
                pyro.sample(f"x_{name}", mod.likelihood.dist(params, x[name].dim() - 1).mask(avail[:, i]),
                            obs=x[name])


def pyro_guide(vae, x, avail, mc_shared=False):
    """z ~ the model's own PoE posterior; w_m ~ its own q(w_m | x_m), masked where x_m is missing.

    Before each w_m it discards one [1, 1, B, d] standard normal block: mmvae draws a cross-modal prior code there
    (unused by PoE, whose single subset holds every observed modality) and we keep the two streams aligned."""
    B = avail.shape[0]
    enc = vae.encode(x, avail)
    post = vae.aggregator(enc.experts)
    assert post.mu.shape[0] == 1  # one joint subset
    with pyro.plate("batch", B):
        qz = dist.Normal(post.mu[0], (0.5 * post.logvar[0]).exp()).to_event(1)
        # KL(MaskedDistribution || Independent) is not registered: TraceMeanField_ELBO falls back to MC for z
        pyro.sample("z", qz.mask(True) if mc_shared else qz)
        for i, name in enumerate(vae.names):
            d = vae.private_dims[name]
            if d:
                torch.randn(1, 1, B, d)
                mu, lv = enc.private[name]
                pyro.sample(f"w_{name}", dist.Normal(mu, (0.5 * lv).exp()).to_event(1).mask(avail[:, i]))


def _grads(loss, vae):
    params = [p for p in vae.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, params, allow_unused=True)


def _assert_same(ours, theirs, vae):
    torch.testing.assert_close(ours, theirs, **EXACT)
    for g1, g2 in zip(_grads(ours, vae), _grads(theirs, vae)):
        if g1 is None or g2 is None:
            assert g1 is None and g2 is None
        else:
            torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("names", [("a", "b"), ("a", "b", "c")])
@pytest.mark.parametrize("seed", [0, 1])
def test_mc_elbo_equals_pyro_trace_elbo(names, seed):
    """private_dim = 0: batch_size * ELBO(kl="mc").loss == Trace_ELBO loss, and so are the gradients."""
    vae = build_vae(names=names, seed=seed)
    x, avail = vae.check(*_batch(names=names, seed=seed + 10))
    B = avail.shape[0]
    torch.manual_seed(100 + seed)
    ours = B * ELBO(kl="mc")(vae, x, avail).loss
    torch.manual_seed(100 + seed)
    theirs = Trace_ELBO(max_plate_nesting=1).differentiable_loss(pyro_model, pyro_guide, vae, x, avail)
    _assert_same(ours, theirs, vae)


@pytest.mark.parametrize("private_dim", [0, 2, {"a": 2, "c": 3}])
@pytest.mark.parametrize("seed", [0, 1])
def test_closed_elbo_equals_pyro_mean_field_elbo(private_dim, seed):
    """Analytic KL for z and every w_m: ELBO(kl="closed") == TraceMeanField_ELBO."""
    vae = build_vae(private_dim=private_dim, seed=seed)
    x, avail = vae.check(*_batch(seed=seed + 20))
    B = avail.shape[0]
    torch.manual_seed(200 + seed)
    ours = B * ELBO(kl="closed")(vae, x, avail).loss
    torch.manual_seed(200 + seed)
    theirs = TraceMeanField_ELBO(max_plate_nesting=1).differentiable_loss(pyro_model, pyro_guide, vae, x, avail)
    _assert_same(ours, theirs, vae)


@pytest.mark.parametrize("private_dim", [2, {"b": 1, "c": 3}])
def test_mc_elbo_with_private_latents_equals_pyro(private_dim):
    """ELBO(kl="mc") estimates the shared KL by Monte Carlo but keeps the private KLs closed-form; in Pyro that is
    TraceMeanField_ELBO with the z site opted out of analytic KL (`.mask(True)` on the guide's z only)."""
    vae = build_vae(private_dim=private_dim, seed=3)
    x, avail = vae.check(*_batch(seed=33))
    B = avail.shape[0]
    torch.manual_seed(300)
    ours = B * ELBO(kl="mc")(vae, x, avail).loss
    torch.manual_seed(300)
    theirs = TraceMeanField_ELBO(max_plate_nesting=1).differentiable_loss(pyro_model, pyro_guide, vae, x, avail,
                                                                          mc_shared=True)
    _assert_same(ours, theirs, vae)


def test_pyro_oracle_is_sensitive():
    """The oracle can fail: a different seed (another z) or a dropped availability mask changes the Pyro loss."""
    vae = build_vae(seed=4)
    x, avail = vae.check(*_batch(seed=44))
    B = avail.shape[0]
    torch.manual_seed(1)
    ours = B * ELBO(kl="mc")(vae, x, avail).loss
    torch.manual_seed(2)
    other_seed = Trace_ELBO(max_plate_nesting=1).differentiable_loss(pyro_model, pyro_guide, vae, x, avail)
    assert not torch.allclose(ours, other_seed, **EXACT)
    torch.manual_seed(1)
    everything = torch.ones_like(avail)
    no_mask = Trace_ELBO(max_plate_nesting=1).differentiable_loss(
        lambda *a: pyro_model(vae, x, everything), lambda *a: pyro_guide(vae, x, avail))
    assert not torch.allclose(ours, no_mask, **EXACT)


# ------------------------------------------------------------------ a naive per-sample reference for mixtures
def naive_elbo(vae, x, avail, seed, kl, combine, members_only, stratify):
    """-ELBO averaged over the batch, by loops over samples and subsets, drawing the same normals as mmvae:
    (subset indices if not stratified), then z [K', B, Ds], then per observed modality a prior block
    [1, K'_m, B, d] and a posterior block [K'_m, B, d] for its private code."""
    torch.manual_seed(seed)
    enc = vae.encode(x, avail)
    post = vae.aggregator(enc.experts)
    K, B, Ds = post.mu.shape
    if stratify:
        ks = torch.arange(K)[:, None].expand(K, B)  # [K', B]: subset of each drawn z
    else:
        ks = sample_index(post.weight)  # [1, B]: the objective's own sampler (its law: test_gaussian)
    eps = torch.randn(ks.shape[0], B, Ds)
    members = post.members[ks, torch.arange(B)[None]]  # [K', B, M]
    priv_eps = {}
    for i, name in enumerate(vae.names):
        if not bool(avail[:, i].any()):
            continue
        rows = list(range(ks.shape[0]))
        if members_only and stratify:
            rows = [k for k in range(K) if bool(post.subsets[k, i])]
        d = vae.private_dims[name]
        if d:
            priv_eps[name] = (rows, torch.randn(1, len(rows), B, d)[0], torch.randn(len(rows), B, d))
    total = 0.0
    for b in range(B):
        loss_b = 0.0
        for j in range(ks.shape[0]):
            k = int(ks[j, b])
            if not bool(post.valid[k, b]):
                continue
            pi = float(post.weight[k, b]) if combine == "mixture" and stratify else 1.0
            z = post.mu[k, b] + (0.5 * post.logvar[k, b]).exp() * eps[j, b]  # [Ds]
            for i, name in enumerate(vae.names):
                if not bool(avail[b, i]) or (members_only and not bool(members[j, b, i])):
                    continue
                w = None
                if name in priv_eps:
                    rows, pe, qe = priv_eps[name]
                    r = rows.index(k) if (members_only and stratify) else j
                    use_post = bool(members[j, b, i]) or (vae.cross_private == "posterior")
                    if use_post:
                        mu_w, lv_w = enc.private[name]
                        w = mu_w[b] + (0.5 * lv_w[b]).exp() * qe[r, b]
                    else:
                        w = pe[r, b] * (0.5 * vae.private_prior_logvar[name]).exp()
                    w = w[None]
                mod = vae.modalities[name]
                lp = mod.likelihood.log_prob(vae.decode(name, z[None], w), x[name][b:b + 1])[0]
                loss_b = loss_b - pi * mod.weight * lp
            if kl == "mc":
                if combine == "mixture":
                    valid = post.valid[:, b]
                    log_q = torch.logsumexp(torch.stack([
                        math.log(float(post.weight[kk, b])) + log_normal(z, post.mu[kk, b], post.logvar[kk, b])
                        for kk in range(K) if bool(valid[kk])]), 0)
                else:
                    log_q = log_normal(z, post.mu[k, b], post.logvar[k, b])
                log_p = log_normal(z, torch.zeros_like(z), torch.zeros_like(z))
                loss_b = loss_b + vae.beta * pi * (log_q - log_p)
        if kl == "closed":
            for k in range(K):
                if bool(post.valid[k, b]):
                    pk = float(post.weight[k, b]) if combine == "mixture" else 1.0
                    loss_b = loss_b + vae.beta * pk * kl_std_normal(post.mu[k, b], post.logvar[k, b])
        for i, name in enumerate(vae.names):
            if vae.private_dims[name] and bool(avail[b, i]):
                loss_b = loss_b + vae.beta * kl_std_normal(enc.private[name][0][b], enc.private[name][1][b])
        total = total + loss_b
    return total / B


NAIVE_CASES = [
    # aggregator, combine, members_only, stratify (the aggregator's defaults in ELBO.settings)
    ("moe", "mixture", False, True),
    ("mopoe", "mixture", False, False),
    ("poe", "mixture", False, True),
    ({"name": "poe", "subsets": "joint+unimodal"}, "sum", True, True),
    ("none", "sum", True, True),
    ("avg", "mixture", False, True),
]


@pytest.mark.parametrize("case", range(len(NAIVE_CASES)))
@pytest.mark.parametrize("kl", ["closed", "mc"])
@pytest.mark.parametrize("private_dim", [0, 2])
def test_elbo_equals_naive_loop(case, kl, private_dim):
    agg, combine, members_only, stratify = NAIVE_CASES[case]
    vae = build_vae(aggregator=agg, private_dim=private_dim, seed=case, beta=0.7)
    x, avail = vae.check(*_batch(seed=50 + case))
    obj = ELBO(kl=kl, beta=vae.beta)  # an objective holds its own beta
    assert obj.settings(vae.aggregator) == (combine, "members" if members_only else "all", stratify)
    seed = 500 + case
    torch.manual_seed(seed)
    ours = obj(vae, x, avail).loss
    ref = naive_elbo(vae, x, avail, seed, kl, combine, members_only, stratify)
    _assert_same(ours, ref, vae)


def test_elbo_cross_private_posterior_equals_naive_loop():
    """DMVAE-style cross_private="posterior": an observed x_m uses its own w_m even when decoded from another subset."""
    vae = build_vae(aggregator="moe", private_dim=2, seed=9, cross_private="posterior")
    x, avail = vae.check(*_batch(seed=59))
    torch.manual_seed(509)
    ours = ELBO(kl="closed", beta=vae.beta)(vae, x, avail).loss
    ref = naive_elbo(vae, x, avail, 509, "closed", "mixture", False, True)
    _assert_same(ours, ref, vae)


def test_terms_add_up_to_the_loss():
    vae = build_vae(aggregator="mopoe", private_dim=2, beta=0.5)
    x, avail = vae.check(*_batch())
    out = vae.objective(vae, x, avail)
    nll = sum(v for k, v in out.terms.items() if k.startswith("nll/"))
    kl = out.terms["kl/shared"] + sum(v for k, v in out.terms.items() if k.startswith("kl/private/"))
    torch.testing.assert_close(out.loss, nll + vae.beta * kl, rtol=1e-6, atol=1e-6)
    assert {f"kl/private/{n}" for n in vae.names} <= set(out.terms)
    assert all(t.dim() == 0 and bool(torch.isfinite(t)) for t in out.terms.values())


# ------------------------------------------------------------------ missing modalities
@pytest.mark.parametrize("aggregator", ["poe", "moe", "mopoe", "avg", "none"])
@pytest.mark.parametrize("private_dim", [0, 2])
def test_missing_modality_gets_zero_gradient(aggregator, private_dim):
    """Modality "c" is missing for every sample: its encoder and decoder get no gradient; the others do."""
    vae = build_vae(aggregator=aggregator, private_dim=private_dim)
    x, avail = _batch()
    avail[:, 2] = False
    avail[~avail.any(1), 0] = True
    torch.manual_seed(0)
    vae(x, avail).loss.backward()
    for name, p in vae.modalities.named_parameters():
        if name.startswith("c.encoder") or name.startswith("c.decoder"):
            assert p.grad is None or bool((p.grad == 0).all()), name
    for m in ("a", "b"):
        for part in ("encoder", "decoder"):
            grads = [p.grad for n, p in vae.modalities.named_parameters() if n.startswith(f"{m}.{part}")]
            assert any(g is not None and bool((g != 0).any()) for g in grads), (m, part)


@pytest.mark.parametrize("aggregator", ["poe", "moe", "mopoe", "avg", "none"])
@pytest.mark.parametrize("private_dim", [0, 2])
def test_values_at_missing_entries_change_nothing(aggregator, private_dim):
    """NaN, zeros or garbage where avail is False: identical loss and identical gradients under one seed."""
    vae = build_vae(aggregator=aggregator, private_dim=private_dim)
    x, avail = _batch()

    def run(fill):
        xs = {n: torch.where(avail[:, i].view(-1, *[1] * len(SHAPES[n])), t, fill) for i, (n, t) in
              enumerate(x.items())}
        vae.zero_grad(set_to_none=True)
        torch.manual_seed(3)
        out = vae(xs, avail)
        out.loss.backward()
        return out.loss.detach(), [None if p.grad is None else p.grad.clone() for p in vae.parameters()]

    loss0, g0 = run(torch.tensor(0.0))
    for fill in (torch.tensor(float("nan")), torch.tensor(1e6), torch.tensor(-3.0)):
        loss, g = run(fill)
        assert torch.equal(loss, loss0)
        for a, b in zip(g, g0):
            assert (a is None and b is None) or torch.equal(a, b)
    # and without an explicit mask, all-NaN rows are read as missing
    xs = {n: torch.where(avail[:, i].view(-1, *[1] * len(SHAPES[n])), t, torch.tensor(float("nan")))
          for i, (n, t) in enumerate(x.items())}
    torch.manual_seed(3)
    assert torch.equal(vae(xs).loss.detach(), loss0)


def test_missing_modality_does_not_enter_the_loss():
    """A batch with "c" missing everywhere has the same loss as the same batch given without "c" at all."""
    vae = build_vae(aggregator="mopoe")
    x, avail = _batch()
    avail[:, 2] = False
    avail[~avail.any(1), 0] = True
    torch.manual_seed(4)
    l1 = vae(x, avail).loss
    torch.manual_seed(4)
    l2 = vae({"a": x["a"], "b": x["b"]}, avail).loss
    assert torch.equal(l1, l2)


# ------------------------------------------------------------------ configuration
def test_objective_config_and_errors():
    obj = ELBO(kl="mc", combine="sum", reconstruct="members", stratify=True)
    again = make_objective(obj.config())
    assert type(again) is ELBO and again.config() == obj.config()
    assert isinstance(make_objective(None), ELBO) and make_objective(obj) is obj
    with pytest.raises(InputError, match="unknown objective 'bogus'"):
        make_objective("bogus")
    with pytest.raises(InputError, match="kl"):
        ELBO(kl="sampled")
    with pytest.raises(InputError, match="combine"):
        ELBO(combine="product")


def test_beta_lives_on_the_objective_and_old_configs_still_load():
    """beta is the objective's (the model's `beta=` only sets it); a 0.1 config with a model-level beta rebuilds."""
    vae = build_vae(aggregator="mopoe", private_dim=2, beta=0.3)
    cfg = vae.config()
    assert vae.objective.beta == vae.beta == 0.3 and "beta" not in cfg and cfg["objective"]["beta"] == 0.3
    old = {**cfg, "beta": 0.7, "objective": {k: v for k, v in cfg["objective"].items() if k != "beta"}}
    assert MultimodalVAE.from_config(old).beta == 0.7
    assert MultimodalVAE.from_config(cfg).beta == 0.3
    x, avail = vae.check(*_batch())
    torch.manual_seed(3)
    out = ELBO(beta=2.0)(vae, x, avail)
    nll = sum(v for k, v in out.terms.items() if k.startswith("nll/"))
    kl = out.terms["kl/shared"] + sum(v for k, v in out.terms.items() if k.startswith("kl/private/"))
    torch.testing.assert_close(out.loss, nll + 2.0 * kl, rtol=1e-6, atol=1e-6)
