"""Presets (mmvae/models): each builds, trains a few steps on PolyDigits (complete and with 30% of modalities
dropped), imputes every missing modality from every subset, and round-trips through its config.

Small on purpose: 3 modalities of 16x16 images, 96 tuples, batch 32; importance-weighted presets use K=2.
Seeds fixed; each test takes about a second on 2 CPU cores.
"""
import itertools
import json

import pytest
import torch

from mmvae import InputError, MultimodalVAE
from mmvae.cli import main as cli_main
from mmvae.datasets import PolyDigits
from mmvae.models import PRESETS, build
from mmvae.objectives import DReG
from mmvae.priors import MMVAMP

NAMES = ["mvae", "mmvae", "mopoe", "mmvm", "mmvm_paper", "mmvaeplus", "dmvae", "independent", "avg"]
SMALL = {"mmvae": {"K": 2}, "mmvaeplus": {"K": 2}}


@pytest.fixture(scope="module")
def data():
    return PolyDigits("train", num_modalities=3, n_tuples=96, seed=0)


def make(name, data, **kw):
    torch.manual_seed(0)
    return build(name, data, shared_dim=8, **{**SMALL.get(name, {}), **kw})


def train_steps(model, data, steps=6, batch_size=32):
    """A few Adam steps; returns the losses (all must be finite)."""
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses, g = [], torch.Generator().manual_seed(0)
    while len(losses) < steps:
        for x, avail, _ in data.batches(batch_size, shuffle=True, generator=g):
            opt.zero_grad()
            out = model(x, avail)
            out.loss.backward()
            assert torch.isfinite(out.loss), out.terms
            assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
            opt.step()
            losses.append(out.loss.item())
            if len(losses) == steps:
                break
    return losses


def test_every_published_model_is_a_preset_with_a_cited_docstring():
    assert sorted(PRESETS) == sorted(NAMES)
    for name, fn in PRESETS.items():
        doc = fn.__doc__ or ""
        assert "Objective:" in doc and any(str(y) in doc for y in range(2013, 2026)), name
    with pytest.raises(InputError, match="unknown model"):
        build("vae", PolyDigits("train", num_modalities=2, n_tuples=4))


def test_presets_choose_their_parts(data):
    assert make("mmvm", data).aggregator.name == "none" and isinstance(make("mmvm", data).prior, MMVAMP)
    plus = make("mmvaeplus", data)
    assert plus.aggregator.name == "moe" and isinstance(plus.objective, DReG) and plus.learn_private_prior
    assert plus.cross_private == "prior" and set(plus.private_dims.values()) == {8}
    dm = make("dmvae", data)
    assert dm.cross_private == "posterior" and dm.objective.config()["reconstruct"] == "all"
    assert make("mopoe", data, private_dim=4).private_dims["m0"] == 4  # any preset takes private latents
    assert make("independent", data, beta=2.0).beta == 2.0


@pytest.mark.parametrize("name", NAMES)
def test_preset_trains_and_imputes_every_missing_modality_from_every_subset(name, data):
    model = make(name, data)
    losses = train_steps(model, data)
    assert min(losses[-2:]) < losses[0]
    model.eval()
    x, _, _ = next(data.batches(8))
    names = list(model.names)
    for k in range(1, len(names)):
        for observed in itertools.combinations(names, k):
            out = model.impute({n: x[n] for n in observed})
            assert set(out) == set(names) - set(observed)
            for img in out.values():
                assert img.shape == (8, 3, 16, 16) and torch.isfinite(img).all()
    many = model.impute({"m0": x["m0"]}, n_samples=3)
    assert many["m1"].shape == (3, 8, 3, 16, 16)


@pytest.mark.parametrize("name", NAMES)
def test_preset_trains_with_missing_modalities(name, data):
    dropped = data.drop(0.3, seed=1)
    assert not dropped.avail.all() and dropped.avail.any(1).all()
    model = make(name, dropped)
    train_steps(model, dropped, steps=4)


@pytest.mark.parametrize("name", NAMES)
def test_preset_round_trips_through_its_config(name, data):
    model = make(name, data)
    again = MultimodalVAE.from_config(json.dumps(model.config()))
    again.load_state_dict(model.state_dict())
    x, avail, _ = next(data.batches(8))
    torch.manual_seed(1)
    a = model(x, avail).loss
    torch.manual_seed(1)
    b = again(x, avail).loss
    torch.testing.assert_close(a, b)


def test_cli_train_accepts_every_preset_name(monkeypatch, tmp_path):
    """`mmvae train --model NAME` reaches `build` with the name for each preset (training itself stubbed out)."""
    import mmvae.trainer

    built = []

    class StopAfterBuild:
        def __init__(self, model, **kw):
            built.append(model)

        def fit(self, train, val=None):
            return []

    monkeypatch.setattr(mmvae.trainer, "Trainer", StopAfterBuild)
    monkeypatch.setattr("mmvae.datasets.DATASETS", {"polydigits": lambda split, seed=0: PolyDigits(
        split, num_modalities=2, n_tuples=8, seed=seed)})
    for name in NAMES:
        assert cli_main(["train", "--model", name, "--out", str(tmp_path / name), "--quiet"]) == 0
    assert len(built) == len(NAMES)
