"""Shared and private latents: every aggregator takes private latents (with either prior on the shared part), and
on SharedPrivateToy a model with private latents puts the shared factor in the shared block and each private factor
in its own private block, measured by the held-out R^2 of a linear regression from each block to each factor.

The training runs are ~5 s each on 2 CPU cores (2000 tuples, 40 epochs of 8 steps); seeds fixed. Thresholds were
set from runs at seeds 0-2, where the diagonal R^2 is 0.83-0.97 and the off-pattern R^2 at most 0.07.
"""
import pytest
import torch

from mmvae import Modality, MultimodalVAE
from mmvae.datasets import SharedPrivateToy
from mmvae.evaluation.disentanglement import latent_disentanglement
from mmvae.gaussian import kl_std_normal
from mmvae.models import PRESETS
from mmvae.networks import MLPDecoder, MLPEncoder

AGGREGATORS = ["poe", "moe", "mopoe", "avg", "none", {"name": "poe", "subsets": "joint+unimodal"}]


def mlp_modalities(names, latent, obs_dim=20, scale=0.1):
    return {n: Modality(MLPEncoder((obs_dim,), 2 * latent, hidden=(64, 64)),
                        MLPDecoder(latent, (obs_dim,), hidden=(64, 64)), {"name": "gaussian", "scale": scale})
            for n in names}


@pytest.mark.parametrize("prior", ["normal", "mmvamp"])
@pytest.mark.parametrize("aggregator", AGGREGATORS, ids=str)
def test_any_aggregator_takes_private_latents_with_a_standard_normal_private_prior(aggregator, prior):
    torch.manual_seed(0)
    data = SharedPrivateToy("train", n=16).drop(0.3, seed=1)
    x, avail, _ = next(data.batches(16))
    model = MultimodalVAE(mlp_modalities(data.modalities, 6), shared_dim=4, private_dim=2, aggregator=aggregator,
                          prior=prior)
    out = model(x, avail)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    enc = model.encode(*model.check(x, avail))
    for i, n in enumerate(model.names):  # private parts keep KL(q(w_m | x_m) || N(0, I)), 0 where x_m is missing
        want = torch.where(avail[:, i], kl_std_normal(*enc.private[n]), 0.0).mean()
        torch.testing.assert_close(out.terms[f"kl/private/{n}"], want)
    emb = model.embed({n: torch.nan_to_num(x[n]) for n in model.names[:2]})
    assert emb["shared"].shape == (16, 4) and set(emb["private"]) == set(model.names[:2])


SETTINGS = {  # preset -> latent sizes; the no-private MoPoE gets the same total size, 2 + 3 * 2
    "mmvaeplus": dict(shared_dim=2, private_dim=2, K=2),
    "dmvae": dict(shared_dim=2, private_dim=2),
    "mopoe": dict(shared_dim=8),
}


def train_r2(preset, seed=0, epochs=40):
    """Train a preset on SharedPrivateToy with Adam and return its R^2 table {block: {factor: R^2}}."""
    torch.manual_seed(seed)
    train, test = SharedPrivateToy("train", n=2000), SharedPrivateToy("test", n=1000)
    kw = SETTINGS[preset]
    model = PRESETS[preset](mlp_modalities(train.modalities, kw["shared_dim"] + kw.get("private_dim", 0)), **kw)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for x, avail, _ in train.batches(256, shuffle=True, generator=g):
            opt.zero_grad()
            model(x, avail).loss.backward()
            opt.step()
    return latent_disentanglement(model.eval(), train, test)["r2"]


@pytest.mark.parametrize("preset", ["mmvaeplus", "dmvae"])
def test_private_latents_separate_shared_from_private_factors(preset):
    r2 = train_r2(preset)
    privates = ["m0", "m1", "m2"]
    assert r2["shared"]["shared"] > 0.85
    assert all(r2["shared"][m] < 0.15 for m in privates)
    for m in privates:
        block = r2[f"private/{m}"]
        assert block[m] > 0.7
        assert block["shared"] < 0.25
        assert all(block[o] < 0.15 for o in privates if o != m)


def test_without_private_latents_the_shared_block_holds_every_factor():
    """The contrast that shows the R^2 table can tell: one 8-d block takes the shared and the private factors."""
    r2 = train_r2("mopoe")
    assert set(r2) == {"shared"}
    assert r2["shared"]["shared"] > 0.85
    assert all(r2["shared"][m] > 0.5 for m in ("m0", "m1", "m2"))
