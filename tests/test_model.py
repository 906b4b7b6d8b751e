"""MultimodalVAE verbs (mmvae/model.py): impute, embed, sample, config round-trip, every configuration trains.

Seeds: models are built under torch.manual_seed(seed) in `build`; losses compared for equality are computed after
the same torch.manual_seed. Equalities are exact (torch.equal) where the same computation runs twice.
"""
import json

import pytest
import torch
from torch import nn

from mmvae import InputError, Modality, MultimodalVAE
from mmvae.aggregators import AGGREGATORS
from mmvae.likelihoods import LIKELIHOODS
from mmvae.networks import MLPDecoder, MLPEncoder

B, L, C = 5, 4, 7  # batch, token length, token classes
AVAIL = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 0], [0, 0, 1], [1, 1, 0]], dtype=torch.bool)


def _modality(lik, d, shape=(6,)):
    if lik == "categorical":
        return Modality(MLPEncoder((L,), 2 * d, hidden=(16,), num_classes=C, embed_dim=4),
                        MLPDecoder(d, (L,), hidden=(16,), num_classes=C), {"name": "categorical", "num_classes": C})
    return Modality(MLPEncoder(shape, 2 * d, hidden=(16,)), MLPDecoder(d, shape, hidden=(16,)), lik)


def build(aggregator="mopoe", private_dim=0, liks=("gaussian", "bernoulli", "categorical"), shared_dim=3, seed=0,
          **kw):
    torch.manual_seed(seed)
    names = [f"m{i}" for i in range(len(liks))]
    pd = {n: (private_dim.get(n, 0) if isinstance(private_dim, dict) else private_dim) for n in names}
    mods = {n: _modality(lik, shared_dim + pd[n]) for n, lik in zip(names, liks)}
    return MultimodalVAE(mods, shared_dim, private_dim=private_dim, aggregator=aggregator, **kw)


def data(liks=("gaussian", "bernoulli", "categorical"), seed=1, n=B):
    g = torch.Generator().manual_seed(seed)
    x = {}
    for i, lik in enumerate(liks):
        if lik == "categorical":
            x[f"m{i}"] = torch.randint(C, (n, L), generator=g)
        elif lik in ("bernoulli",):
            x[f"m{i}"] = (torch.rand(n, 6, generator=g) > 0.5).float()
        elif lik == "continuous_bernoulli":
            x[f"m{i}"] = torch.rand(n, 6, generator=g)
        elif lik in ("poisson", "negative_binomial"):
            x[f"m{i}"] = torch.poisson(torch.full((n, 6), 2.0), generator=g)
        else:
            x[f"m{i}"] = torch.randn(n, 6, generator=g)
    return x


# ------------------------------------------------------------------ every configuration trains
@pytest.mark.parametrize("aggregator", sorted(AGGREGATORS) + [{"name": "poe", "subsets": "joint+unimodal"}])
@pytest.mark.parametrize("private_dim", [0, 3])
@pytest.mark.parametrize("lik", sorted(LIKELIHOODS))
def test_forward_backward_finite(aggregator, private_dim, lik):
    liks = (lik, "gaussian")
    vae = build(aggregator, private_dim, liks)
    avail = AVAIL[:, :2].clone()
    avail[~avail.any(1), 0] = True
    torch.manual_seed(0)
    out = vae(data(liks), avail)
    assert out.loss.dim() == 0 and bool(torch.isfinite(out.loss))
    assert all(bool(torch.isfinite(t)) for t in out.terms.values())
    out.loss.backward()
    grads = [p.grad for p in vae.parameters() if p.requires_grad]
    assert all(g is None or bool(torch.isfinite(g).all()) for g in grads)
    # both modalities are observed somewhere, so both encoders receive a gradient
    for name in vae.names:
        enc = [p.grad for p in vae.modalities[name].encoder.parameters()]
        assert any(g is not None and bool((g != 0).any()) for g in enc), name


# ------------------------------------------------------------------ impute / embed / sample
@pytest.mark.parametrize("aggregator", ["poe", "moe", "mopoe"])
@pytest.mark.parametrize("private_dim", [0, 2])
def test_impute_shapes_and_default_targets(aggregator, private_dim):
    vae = build(aggregator, private_dim)
    x = data()
    observed = {"m0": x["m0"]}
    out = vae.impute(observed)
    assert set(out) == {"m1", "m2"}  # default targets: what was not given
    assert out["m1"].shape == (B, 6) and out["m2"].shape == (B, L)
    assert out["m2"].dtype == torch.long and bool(((out["m2"] >= 0) & (out["m2"] < C)).all())
    assert bool(((out["m1"] >= 0) & (out["m1"] <= 1)).all())  # a Bernoulli mean
    many = vae.impute(observed, n_samples=3)
    assert many["m1"].shape == (3, B, 6) and many["m2"].shape == (3, B, L)
    both = vae.impute({"m0": x["m0"], "m2": x["m2"]}, targets=["m0", "m1"])
    assert set(both) == {"m0", "m1"} and both["m0"].shape == (B, 6)
    # a per-sample mask: sample 1 has only m2
    avail = torch.tensor([[1, 0, 1], [0, 0, 1], [1, 0, 0], [1, 0, 1], [0, 0, 1]], dtype=torch.bool)
    part = vae.impute({"m0": x["m0"], "m2": x["m2"]}, avail=avail)
    assert set(part) == {"m1"} and part["m1"].shape == (B, 6)


def test_impute_decodes_the_posterior_mean():
    """With a near-deterministic posterior (encoder logvar driven to the soft bound -12, sd 2.5e-3), impute returns
    the decoded mean at the posterior mean: sigmoid(decoder(E[z | x_m0])) for a Bernoulli target (atol 1e-2)."""
    vae = build("poe")
    x = data()
    with torch.no_grad():
        last = vae.modalities["m0"].encoder.net[-1]  # outputs [mu (3), raw logvar (3)]
        last.weight[3:] = 0.0
        last.bias[3:] = -1e4
    torch.manual_seed(0)
    out = vae.impute({"m0": x["m0"]}, targets=["m1"])
    post, _ = vae.posterior({"m0": x["m0"]})
    assert bool((post.logvar < -11).all())
    ref = torch.sigmoid(vae.decode("m1", post.mean()))
    torch.testing.assert_close(out["m1"], ref, rtol=0, atol=1e-2)
    assert not torch.allclose(ref, torch.sigmoid(vae.decode("m1", post.mean() + 1.0)), rtol=0, atol=1e-2)


@pytest.mark.parametrize("aggregator", ["poe", "moe", "mopoe", "avg"])
def test_embed(aggregator):
    vae = build(aggregator, private_dim={"m0": 2, "m2": 4})
    x = data()
    emb = vae.embed({"m0": x["m0"], "m2": x["m2"]})
    assert set(emb) == {"shared", "private"}
    assert emb["shared"].shape == (B, 3)
    assert set(emb["private"]) == {"m0", "m2"}
    assert emb["private"]["m0"].shape == (B, 2) and emb["private"]["m2"].shape == (B, 4)
    # the shared embedding is the mixture mean of the posterior; private ones are q(w_m | x_m) means
    post, enc = vae.posterior({"m0": x["m0"], "m2": x["m2"]})
    torch.testing.assert_close(emb["shared"], post.mean())
    mu0 = vae.modalities["m0"].encode(x["m0"])[0][:, 3:]
    torch.testing.assert_close(emb["private"]["m0"], mu0)
    if aggregator == "moe":  # mean of a uniform mixture of the two experts
        mu2 = vae.modalities["m2"].encode(x["m2"])[0][:, :3]
        torch.testing.assert_close(emb["shared"], 0.5 * (vae.modalities["m0"].encode(x["m0"])[0][:, :3] + mu2))
    assert set(vae.embed({"m1": x["m1"]})["private"]) == set()


def test_sample():
    vae = build("mopoe", private_dim=2)
    out = vae.sample(7)
    assert set(out) == set(vae.names)
    assert out["m0"].shape == (7, 6) and out["m1"].shape == (7, 6) and out["m2"].shape == (7, L)
    assert bool(((out["m1"] >= 0) & (out["m1"] <= 1)).all())
    assert out["m2"].dtype == torch.long
    torch.manual_seed(1)
    a = vae.sample(7)
    torch.manual_seed(1)
    b = vae.sample(7)
    assert all(torch.equal(a[n], b[n]) for n in vae.names)


def test_decode_keeps_leading_dims():
    vae = build("poe", private_dim=2)
    z, w = torch.randn(3, B, 3), torch.randn(3, B, 2)
    assert vae.decode("m0", z, w).shape == (3, B, 6)
    assert vae.decode("m2", z, w).shape == (3, B, L, C)
    # decoding a stack is decoding each slice
    torch.testing.assert_close(vae.decode("m0", z, w)[1], vae.decode("m0", z[1], w[1]))


def test_encode_only_reads_observed_rows():
    """encode: missing rows are zeros and never pass through an encoder (so NaN there cannot leak)."""
    vae = build("poe")
    x, avail = vae.check(data(), AVAIL)
    enc = vae.encode(x, avail)
    assert enc.experts.mu.shape == (3, B, 3) and torch.equal(enc.experts.avail, avail)
    assert bool((enc.experts.mu[~avail.T] == 0).all())
    mu0, _ = vae.modalities["m0"].encode(x["m0"])
    torch.testing.assert_close(enc.experts.mu[0, avail[:, 0]], mu0[avail[:, 0]])


# ------------------------------------------------------------------ config round-trip
CONFIGS = [
    dict(aggregator="mopoe", private_dim=0),
    dict(aggregator={"name": "poe", "prior_expert": False, "subsets": "joint+unimodal"}, private_dim=3, beta=0.5),
    dict(aggregator="moe", private_dim={"m0": 2, "m2": 1}, cross_private="posterior", learn_private_prior=True,
         objective={"name": "elbo", "kl": "mc"}),
    dict(aggregator="avg", private_dim=1, objective="elbo"),
    dict(aggregator="none", private_dim=0),
]


@pytest.mark.parametrize("i", range(len(CONFIGS)))
def test_config_round_trip(i):
    vae = build(**CONFIGS[i])
    vae.modalities["m0"].weight = 1.5
    cfg = json.loads(json.dumps(vae.config()))
    again = MultimodalVAE.from_config(cfg)
    assert again.config() == vae.config()
    s1, s2 = vae.state_dict(), again.state_dict()
    assert list(s1) == list(s2)
    assert all(s1[k].shape == s2[k].shape for k in s1)
    assert MultimodalVAE.from_config(json.dumps(vae.config())).config() == vae.config()  # JSON string too
    again.load_state_dict(s1)
    x = data()
    torch.manual_seed(5)
    l1 = vae(x, AVAIL)
    torch.manual_seed(5)
    l2 = again(x, AVAIL)
    assert torch.equal(l1.loss, l2.loss)
    assert l1.terms.keys() == l2.terms.keys()


def test_custom_networks_need_modalities_to_rebuild():
    class Enc(nn.Module):  # no recorded `spec`
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(6, 6)

        def forward(self, x):
            return self.lin(x)

    mods = {"a": Modality(Enc(), MLPDecoder(3, (6,), hidden=(8,)), "gaussian", shape=(6,))}
    vae = MultimodalVAE(mods, 3, aggregator="poe")
    cfg = json.loads(json.dumps(vae.config()))
    with pytest.raises(InputError, match="custom networks"):
        MultimodalVAE.from_config(cfg)
    mods2 = {"a": Modality(Enc(), MLPDecoder(3, (6,), hidden=(8,)), "gaussian", shape=(6,))}
    again = MultimodalVAE.from_config(cfg, modalities=mods2)
    assert list(again.state_dict()) == list(vae.state_dict())


def test_default_networks_from_shape():
    mods = {"img": Modality(likelihood="bernoulli", shape=(1, 8, 8)), "vec": Modality(shape=(5,)),
            "tok": Modality(likelihood={"name": "categorical", "num_classes": C}, shape=(L,))}
    vae = MultimodalVAE(mods, 4, private_dim={"img": 2}, aggregator="mopoe")
    x = {"img": (torch.rand(3, 1, 8, 8) > 0.5).float(), "vec": torch.randn(3, 5), "tok": torch.randint(C, (3, L))}
    torch.manual_seed(0)
    out = vae(x)
    assert bool(torch.isfinite(out.loss))
    again = MultimodalVAE.from_config(json.loads(json.dumps(vae.config())))
    again.load_state_dict(vae.state_dict())
    torch.manual_seed(0)
    assert torch.equal(again(x).loss, out.loss)


# ------------------------------------------------------------------ determinism
@pytest.mark.parametrize("aggregator", ["mopoe", "moe", "poe"])
def test_loss_is_deterministic_under_a_seed(aggregator):
    vae = build(aggregator, private_dim=2)
    x = data()
    losses = []
    for seed in (11, 11, 12):
        torch.manual_seed(seed)
        losses.append(vae(x, AVAIL).loss)
    assert torch.equal(losses[0], losses[1])
    assert not torch.equal(losses[0], losses[2])  # the loss is random: the test above could fail


def test_model_level_errors():
    with pytest.raises(InputError, match="at least one modality"):
        MultimodalVAE({}, 3)
    with pytest.raises(InputError, match="cross_private"):
        build(cross_private="sometimes")
    with pytest.raises(InputError, match="unknown modality 'zz'"):
        build(private_dim={"zz": 2})
    with pytest.raises(InputError, match="unknown aggregator 'bogus'"):
        build(aggregator="bogus")
    with pytest.raises(InputError, match="unknown prior 'bogus'"):
        build(prior="bogus")
    with pytest.raises(InputError, match="unknown objective 'bogus'"):
        build(objective="bogus")
    with pytest.raises(InputError, match="unknown likelihood 'bogus'"):
        Modality(MLPEncoder((6,), 6), MLPDecoder(3, (6,)), likelihood="bogus")
    with pytest.raises(InputError, match="'v'.*shape"):
        MultimodalVAE({"v": Modality()}, 3)
    # an encoder whose output does not match shared_dim + private_dim
    torch.manual_seed(0)
    mods = {"a": Modality(MLPEncoder((6,), 2 * 5, hidden=(8,)), MLPDecoder(3, (6,), hidden=(8,)))}
    vae = MultimodalVAE(mods, 3)
    with pytest.raises(InputError, match="'a'.*encoder gives 5"):
        vae({"a": torch.randn(2, 6)})
    # the same when only some samples observe the modality (the encoder sees a subset of rows)
    mods = {"a": Modality(MLPEncoder((6,), 2 * 5, hidden=(8,)), MLPDecoder(3, (6,), hidden=(8,))),
            "b": Modality(shape=(2,))}
    vae = MultimodalVAE(mods, 3)
    with pytest.raises(InputError, match="'a'.*encoder gives 5"):
        vae({"a": torch.randn(2, 6), "b": torch.randn(2, 2)}, torch.tensor([[1, 1], [0, 1]]))
