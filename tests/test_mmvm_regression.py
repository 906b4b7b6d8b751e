"""Regression guard for the MMVM preset (issue 13): trained briefly on PolyDigits next to MoPoE, MMVM must decode
each modality from its own posterior clearly better than MoPoE does.

Why this ordering: MMVM decodes every modality from its own unimodal posterior at every step, MoPoE only when a
draw picks that singleton subset, so MMVM's self-reconstruction is better from the first epochs on (20 epochs,
5 modalities: 0.0083 against 0.0112). The old preset, which started at alpha 0, sat on a broad, unaligned plateau
and lost this ordering (0.0148 at 20 epochs), at this size too.

Size (2 modalities of 16x16, 1024 tuples, 3 epochs of 16 = 192 steps): ~10 s per model on a busy 2-core machine.
Measured with `trained` and `scores` below, model seeds 0-3: MMVM / MoPoE error ratio 0.71-0.88 with the preset,
1.08-1.49 with the old defaults (`mmvm_paper` at shared_dim 16); the bound 0.95 leaves margin on both sides. The
unimodal probe is still close at this size (MMVM 0.84-0.87, MoPoE 0.82-0.85), so it only gets a floor against a
collapse (chance is 0.1). MMVAE_REGRESSION_SEED picks the model seed (default 0).
"""
import os

import pytest
import torch

from mmvae import Trainer
from mmvae.datasets import PolyDigits
from mmvae.evaluation.probe import latent_classification
from mmvae.models import build
from mmvae.study.reconstruction import self_reconstruction

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]  # tests/conftest.py

SEED = int(os.environ.get("MMVAE_REGRESSION_SEED", "0"))
EPOCHS, BATCH = 3, 16  # 192 steps: alpha reaches 0 at step 100


@pytest.fixture(scope="module")
def data():
    return PolyDigits("train", num_modalities=2, n_tuples=1024), PolyDigits("test", num_modalities=2)


def trained(name, train):
    torch.manual_seed(SEED)
    model = build(name, train, shared_dim=16)
    Trainer(model, max_epochs=EPOCHS, batch_size=BATCH, lr=1e-3, device="cpu", seed=SEED, progress=False).fit(train)
    return model.eval()


def scores(model, train, test):
    torch.manual_seed(0)
    rec = self_reconstruction(model, test)["mean"]
    probe = latent_classification(model, train, test, n_train=None)["per_size"]["1"]
    return rec, probe


def test_mmvm_reconstructs_from_its_own_posterior_clearly_better_than_mopoe(data):
    train, test = data
    mmvm_rec, mmvm_probe = scores(trained("mmvm", train), train, test)
    mopoe_rec, _ = scores(trained("mopoe", train), train, test)
    assert mmvm_rec < 0.95 * mopoe_rec, (mmvm_rec, mopoe_rec)
    assert mmvm_probe > 0.6, mmvm_probe  # informative unimodal posteriors (collapsed ones: ~0.1-0.5)
