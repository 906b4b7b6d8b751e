"""Count modalities: Poisson / negative binomial likelihoods, bits per spike, and the synthetic spikes dataset."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats as st
import torch
import torch.nn.functional as F

import mmvae
from mmvae import Modality, MultimodalVAE, Trainer
from mmvae.datasets import DATASETS, SyntheticSpikes, get_dataset
from mmvae.errors import InputError
from mmvae.evaluation.counts import bits_per_spike, count_bits_per_spike, null_rates, poisson_loglik
from mmvae.likelihoods import NegativeBinomial, Poisson, make_likelihood
from mmvae.models import build
from mmvae.models.presets import default_modalities

pytestmark = pytest.mark.usefixtures("one_thread")


def counts_and_params(seed=0, shape=(6, 3, 5)):
    g = torch.Generator().manual_seed(seed)
    params = 3 * torch.randn(*shape, generator=g, dtype=torch.float64)  # [B, T, C]
    return torch.poisson(4 * torch.rand(*shape, generator=g, dtype=torch.float64), generator=g), params


# ---------------------------------------------------------------------------- likelihoods
def test_poisson_log_prob_matches_scipy():
    x, params = counts_and_params()
    rate = F.softplus(params)
    ref = st.poisson.logpmf(x.numpy(), rate.numpy()).sum((1, 2))
    np.testing.assert_allclose(Poisson().log_prob(params, x).numpy(), ref, rtol=1e-10)
    np.testing.assert_allclose(Poisson().mean(params).numpy(), rate.numpy())


def test_negative_binomial_log_prob_matches_scipy_with_per_feature_dispersion():
    x, params = counts_and_params(1)
    nb = NegativeBinomial(features=5).double()
    r = torch.tensor([0.3, 1.0, 2.5, 10.0, 100.0], dtype=torch.float64)
    with torch.no_grad():
        nb.log_dispersion.copy_(r.log())
    mu = F.softplus(params).numpy()
    ref = st.nbinom.logpmf(x.numpy(), r.numpy(), r.numpy() / (r.numpy() + mu)).sum((1, 2))  # scipy: n = r, p
    np.testing.assert_allclose(nb.log_prob(params, x).detach().numpy(), ref, rtol=1e-8)
    np.testing.assert_allclose(nb.mean(params).numpy(), mu)


def test_mask_zeroes_missing_rows_and_draws_are_counts_with_the_rate_as_mean():
    x, params = counts_and_params()
    mask = torch.tensor([True, False] * 3)
    lp = Poisson().log_prob(params, x, mask=mask)
    assert (lp[~mask] == 0).all() and (lp[mask] < 0).all()
    params = torch.full((20_000, 2), 1.0)  # rate softplus(1) = 1.3133
    for lik in (Poisson(), NegativeBinomial(features=2, dispersion=2.0)):
        draws = lik.draw(params)
        assert draws.shape == params.shape and (draws == draws.round()).all() and (draws >= 0).all()
        assert abs(float(draws.mean()) - math.log1p(math.e)) < 0.05  # sd of the mean < 0.012


def test_count_likelihoods_round_trip_their_config_and_keep_the_dispersion_in_the_state_dict():
    for lik in (Poisson(), NegativeBinomial(features=7, dispersion=3.0), NegativeBinomial(learn_dispersion=False)):
        again = make_likelihood(lik.config())
        assert type(again) is type(lik) and again.config() == lik.config()
    nb = make_likelihood({"name": "negative_binomial", "features": 7})
    assert isinstance(nb.log_dispersion, torch.nn.Parameter) and nb.log_dispersion.shape == (7,)
    assert list(nb.state_dict()) == ["log_dispersion"]
    with pytest.raises(InputError, match="dispersion must be > 0"):
        make_likelihood({"name": "negative_binomial", "dispersion": 0.0})


def test_softplus_link_keeps_large_and_very_negative_outputs_finite():
    params = torch.tensor([[-200.0, 0.0, 500.0]], requires_grad=True)
    x = torch.tensor([[1.0, 0.0, 500.0]])
    for lik in (Poisson(), NegativeBinomial(features=3)):
        lp = lik.log_prob(params, x)
        (g,) = torch.autograd.grad(lp.sum(), params)
        assert torch.isfinite(lp).all() and torch.isfinite(g).all()


@pytest.mark.parametrize("bad, problem", [(0.5, "non-integer"), (-1.0, "negative")])
@pytest.mark.parametrize("lik", ["poisson", "negative_binomial"])
def test_non_count_data_is_an_error_naming_the_modality(lik, bad, problem):
    mods = {"cortex": Modality(shape=(4,), likelihood=lik), "other": Modality(shape=(4,), likelihood="poisson")}
    model = MultimodalVAE(mods, shared_dim=2)
    x = torch.ones(3, 4)
    x[1, 2] = bad
    with pytest.raises(InputError, match=rf"modality 'cortex': {lik} likelihood expects non-negative integer "
                                         rf"counts, got 1 {problem} value"):
        model(x={"cortex": x, "other": torch.ones(3, 4)})
    counts = torch.randint(0, 5, (3, 4))  # integer counts are taken as they are (cast to float)
    torch.manual_seed(0)
    as_int = model(x={"cortex": counts}).loss
    torch.manual_seed(0)
    assert torch.equal(as_int, model(x={"cortex": counts.float()}).loss)
    with pytest.raises(InputError, match="modality 'cortex'.*negative"):
        model(x={"cortex": counts - 3})
    x[1, 2] = float("inf")  # the model's own check names it first; the likelihood's check too
    with pytest.raises(InputError, match="modality 'cortex'.*(Inf in observed|non-finite)"):
        model(x={"cortex": x})
    with pytest.raises(InputError, match=f"modality 'cortex': {lik} .* 1 non-finite value"):
        make_likelihood(lik).check(x, "cortex")


# ---------------------------------------------------------------------------- bits per spike
def test_bits_per_spike_of_the_null_models_own_rates_is_zero():
    x, _ = counts_and_params()
    assert bits_per_spike(x, null_rates(x).expand(x.shape)) == pytest.approx(0.0, abs=1e-12)


def test_bits_per_spike_by_hand():
    # one neuron, two bins: counts 0 and 2, model rates 0.5 and 1.5; null rate 1 (the mean)
    x, r = torch.tensor([[0.0], [2.0]]), torch.tensor([[0.5], [1.5]])
    ll_model = (-0.5) + (2 * math.log(1.5) - 1.5 - math.log(2))
    ll_null = (-1.0) + (2 * math.log(1.0) - 1.0 - math.log(2))
    assert float(poisson_loglik(x, r)) == pytest.approx(ll_model)
    assert bits_per_spike(x, r) == pytest.approx((ll_model - ll_null) / (2 * math.log(2)))
    # a given null (e.g. the training means), NaN counts ignored, no spikes -> NaN
    assert bits_per_spike(x, r, null=torch.tensor([0.5])) == pytest.approx(
        (ll_model - (-0.5 + 2 * math.log(0.5) - 0.5 - math.log(2))) / (2 * math.log(2)))
    xn = torch.tensor([[0.0], [2.0], [float("nan")]])
    assert bits_per_spike(xn, torch.tensor([[0.5], [1.5], [7.0]])) == pytest.approx(bits_per_spike(x, r))
    assert math.isnan(bits_per_spike(torch.zeros(3, 2), torch.ones(3, 2)))


@pytest.fixture(scope="module")
def spikes():
    return SyntheticSpikes("train", n=600, seed=0)


def test_bits_per_spike_of_a_simulated_populations_true_rates_is_positive(spikes):
    for name, rates in spikes.true_rates().items():
        bps = bits_per_spike(spikes.data[name], rates)
        assert 0.1 < bps < 1.5, (name, bps)
        shuffled = rates[torch.randperm(len(rates), generator=torch.Generator().manual_seed(0))]
        assert bits_per_spike(spikes.data[name], shuffled) < 0  # another trial's rates are worse than the mean


# ---------------------------------------------------------------------------- the spikes dataset
def test_spikes_layout_labels_factors_and_registration(spikes):
    assert spikes.modalities == [f"rat{m}" for m in range(5)]
    assert [spikes.shapes[n] for n in spikes.modalities] == [(20, k) for k in (24, 32, 40, 28, 36)]
    assert set(spikes.likelihoods.values()) == {"poisson"} and spikes.num_classes == 4
    assert set(spikes.targets) == {"shared", *spikes.modalities} and spikes.targets["shared"].shape == (600, 2)
    assert spikes.labels.shape == (600,) and set(spikes.labels.tolist()) == {0, 1, 2, 3}
    zeros = float(torch.cat([x.flatten() for x in spikes.data.values()]).eq(0).float().mean())
    assert 0.6 < zeros < 0.9  # sparse, like binned spikes
    assert "spikes" in DATASETS
    again = get_dataset("spikes", "train", seed=0, n_train=600)
    assert all(torch.equal(again.data[n], spikes.data[n]) for n in spikes.modalities)
    other = get_dataset("spikes", "test", seed=0, n_test=50)
    assert len(other) == 50 and not torch.equal(other.data["rat0"][:50], spikes.data["rat0"][:50])
    assert all(isinstance(m.likelihood, Poisson) for m in default_modalities(spikes).values())


def test_spike_rates_follow_the_latent(spikes):
    s, w = spikes.trajectories()  # [N, T, ds], name -> [N, T, dp]
    for name, f, rates in zip(spikes.modalities, spikes.maps, spikes.true_rates().values()):
        torch.testing.assert_close(rates.log(), f.b + s @ f.C.T + w[name] @ f.D.T)
        x = spikes.data[name]
        z = float((x - rates).sum() / rates.sum().sqrt())  # counts are Poisson(rates): z ~ N(0, 1)
        assert abs(z) < 4, (name, z)
        corr = float(torch.corrcoef(torch.stack([x.flatten(), rates.flatten()]))[0, 1])
        expected = math.sqrt(float(rates.var() / (rates.var() + rates.mean())))  # Poisson noise on top of the rates
        assert corr > 0.3 and abs(corr - expected) < 0.03, (name, corr, expected)


def nearest_centroid_accuracy(train_x, train_y, test_x, test_y, k):
    centres = torch.stack([train_x[train_y == c].mean(0) for c in range(k)])  # [K, d]
    return float((torch.cdist(test_x, centres).argmin(1) == test_y).float().mean())


def test_condition_is_decodable_from_the_shared_factor_only(spikes):
    test = SyntheticSpikes("test", n=300, seed=0)
    args = lambda key: (spikes.targets[key], spikes.labels, test.targets[key], test.labels, 4)  # noqa: E731
    assert nearest_centroid_accuracy(*args("shared")) > 0.9
    assert nearest_centroid_accuracy(*args("rat0")) < 0.4  # chance is 0.25


# ---------------------------------------------------------------------------- a model on spikes
def test_a_count_model_trains_on_spikes_and_its_checkpoint_reloads(tmp_path):
    kw = dict(neurons=(6, 8, 5), n_bins=5, seed=0)
    train, test = get_dataset("spikes", "train", n_train=96, **kw), get_dataset("spikes", "test", n_test=32, **kw)
    train.likelihoods["rat1"] = "negative_binomial"
    torch.manual_seed(0)
    model = build("mopoe", train, shared_dim=3, private_dim=1)
    assert isinstance(model.modalities["rat1"].likelihood, NegativeBinomial)
    before = model.modalities["rat1"].likelihood.log_dispersion.detach().clone()
    spec = {"name": "spikes", "n_train": 96, "n_test": 32, **kw}
    Trainer(model, max_epochs=2, batch_size=32, lr=1e-2, device="cpu", out=tmp_path, progress=False,
            extra_config={"dataset": spec, "preset": "mopoe"}).fit(train)
    model.eval()
    loaded = mmvae.load(tmp_path)
    disp = loaded.modalities["rat1"].likelihood.log_dispersion
    assert not torch.equal(disp, before) and torch.equal(disp, model.modalities["rat1"].likelihood.log_dispersion)
    x = {n: test.data[n] for n in test.modalities}

    def outputs(m):
        torch.manual_seed(1)
        return m(x).loss, m.embed(x)["shared"], m.impute({"rat0": x["rat0"]}, n_samples=2)
    (loss, emb, imp), (loss2, emb2, imp2) = outputs(model), outputs(loaded)
    assert torch.equal(loss, loss2) and torch.equal(emb, emb2)
    assert all(torch.equal(imp[k], imp2[k]) for k in ("rat1", "rat2"))
    assert (imp2["rat1"] > 0).all()  # rates
    res = count_bits_per_spike(loaded, test, n_samples=2)
    assert set(res["self"]) == set(res["cross"]) == {"rat0", "rat1", "rat2"}
    assert all(math.isfinite(v) for v in [*res["self"].values(), *res["cross"].values()])
