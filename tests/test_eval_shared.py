"""The evaluation's shortcuts against the straightforward computation they replace, under one seed on tiny models:
decoding only the scored cells (`impute_cells`) against `impute` decoding every cell, and the one importance pass
serving both imputation metrics (`imputation_with_loglik`) against the two separate evaluators."""
from __future__ import annotations

import pytest
import torch

from mmvae import Modality, MultimodalVAE
from mmvae.datasets import MultimodalDataset
from mmvae.evaluation import conditional_coherence, conditional_loglik, imputation_error
from mmvae.evaluation.decoding import impute_cells
from mmvae.evaluation.imputation_pass import imputation_with_loglik, shares_draws
from mmvae.networks import MLPDecoder, MLPEncoder

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
C = 3  # classes


def tiny(private: int = 0, **kw) -> MultimodalVAE:
    """MoPoE over four 5-d vector modalities, one hidden layer of 16."""
    torch.manual_seed(0)
    dims = dict.fromkeys(("a", "b", "c", "d"), 5)
    mods = {n: Modality(MLPEncoder((d,), 2 * (2 + private), hidden=(16,)), MLPDecoder(2 + private, (d,), hidden=(16,)),
                        likelihood={"name": "gaussian", "scale": 1.0}, shape=(d,)) for n, d in dims.items()}
    return MultimodalVAE(mods, shared_dim=2, private_dim=private, aggregator="mopoe", **kw).eval()


def data(n: int = 30, drop: float = 0.0) -> MultimodalDataset:
    """Random tuples with labels 0..C-1; with drop, that share of entries missing."""
    g = torch.Generator().manual_seed(1)
    ds = MultimodalDataset({m: torch.randn(n, 5, generator=g) for m in "abcd"}, targets=torch.arange(n) % C,
                           num_classes=C)
    return ds.drop(drop, seed=0) if drop else ds


class ImputeOnly:
    """The reference: a model seen only through `names` and `impute`, so every evaluator decodes every cell."""

    def __init__(self, model):
        self.model, self.names = model, model.names

    def impute(self, *args, **kw):
        return self.model.impute(*args, **kw)


def _seeded(fn, *args, **kw):
    torch.manual_seed(7)
    return fn(*args, **kw)


@pytest.mark.parametrize("kw", [{}, {"private": 2}, {"private": 2, "learn_private_prior": True},
                                {"private": 2, "cross_private": "posterior"}])
def test_impute_cells_equals_impute_on_the_cells_it_decodes(kw):
    model = tiny(**kw)
    if kw.get("learn_private_prior"):
        with torch.no_grad():
            for p in model.private_prior_logvar.values():
                p.fill_(-1.0)
    x = {m: torch.randn(12, 5) for m in "abcd"}
    mask = torch.rand(12, 4) < 0.5
    mask[:, 0] |= ~mask.any(1)  # every row observes something
    need = ~mask & (torch.rand(12, 4) < 0.8)
    ref = _seeded(model.impute, x, targets=list(model.names), n_samples=3, avail=mask)  # name -> [3, 12, 5]
    got = _seeded(impute_cells, model, x, mask, need, 3)
    for j, m in enumerate(model.names):
        if not need[:, j].any():
            assert got[m] is None
        else:
            torch.testing.assert_close(got[m], ref[m][:, need[:, j]])


@pytest.mark.parametrize("drop", [0.0, 0.3])
def test_coherence_and_imputation_equal_the_decode_everything_reference(drop):
    model, ds = tiny(private=1), data(drop=drop)
    clfs = {m: torch.nn.Linear(5, C) for m in "abcd"}
    for n in (1, 3):
        got = _seeded(conditional_coherence, model, ds, clfs, n_samples=n, batch_size=50)
        ref = _seeded(conditional_coherence, ImputeOnly(model), ds, clfs, n_samples=n, batch_size=50)
        assert got == ref
    got = _seeded(imputation_error, model, ds, n_samples=3, batch_size=50)
    ref = _seeded(imputation_error, ImputeOnly(model), ds, n_samples=3, batch_size=50)
    assert got["matrix"].keys() == ref["matrix"].keys()
    for key, cell in got["matrix"].items():
        assert cell == pytest.approx(ref["matrix"][key], rel=1e-6, abs=1e-9), key


@pytest.mark.parametrize("drop", [0.0, 0.3])
def test_one_pass_equals_the_two_evaluators_when_n_equals_K(drop):
    """With n_samples = K and no private latents both draw the same z: the numbers agree to rounding."""
    model, ds = tiny(), data(drop=drop)
    got = _seeded(imputation_with_loglik, model, ds, n_samples=4, K=4, batch_size=40)
    imp = _seeded(imputation_error, model, ds, n_samples=4, batch_size=40)
    ll = _seeded(conditional_loglik, model, ds, K=4, batch_size=40)
    for a, b in ((got, imp), (got["conditional_loglik"], ll)):
        assert a["matrix"].keys() == b["matrix"].keys() and a["n_tuples"] == b["n_tuples"]
        for key, cell in a["matrix"].items():
            assert cell == pytest.approx(b["matrix"][key], rel=1e-5, abs=1e-7), key


def test_one_pass_with_fewer_imputations_matches_within_monte_carlo_error():
    """n < K and private latents: the imputations are the first n of K draws, the same estimator as separate
    draws; on 400 tuples the mean difference over cells is within 5% of the metric's size (fixed seeds; the Monte-
    Carlo error of that mean is about 1%)."""
    model, ds = tiny(private=1), data(n=400)
    assert shares_draws(model, 3, 8) and not shares_draws(model, 9, 8)
    got = _seeded(imputation_with_loglik, model, ds, n_samples=3, K=8)
    torch.manual_seed(8)
    imp = imputation_error(model, ds, n_samples=3)
    ll = conditional_loglik(model, ds, K=8)
    pairs = [(got, imp, "error"), (got, imp, "spread")]
    pairs += [(got["conditional_loglik"], ll, stat) for stat in ("loglik_per_dim", "nll_per_dim")]
    for a, b, stat in pairs:
        diffs = torch.tensor([v[stat] - b["matrix"][k][stat] for k, v in a["matrix"].items()])
        scale = torch.tensor([abs(v[stat]) for v in b["matrix"].values()]).mean()
        assert abs(float(diffs.mean())) < 0.05 * float(scale), stat


def test_learned_private_prior_does_not_share_draws():
    model = tiny(private=1, learn_private_prior=True)
    assert shares_draws(model, 3, 8)  # still N(0, I) at initialisation
    with torch.no_grad():
        model.private_prior_logvar["a"].fill_(-2.0)
    assert not shares_draws(model, 3, 8)
    with pytest.raises(ValueError):
        imputation_with_loglik(model, data(), n_samples=3, K=8)
