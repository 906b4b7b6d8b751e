"""Fixtures shared by the test modules."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is faster, and on a busy 2-core machine far faster (no oversubscription)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="session")
def _private_user_cache(tmp_path_factory):
    """The suite's own user cache folder (built datasets, shared classifiers), never the user's ~/.cache/mmvae."""
    import os

    before = os.environ.get("MMVAE_CACHE")
    os.environ["MMVAE_CACHE"] = str(tmp_path_factory.mktemp("user_cache"))
    yield
    if before is None:
        os.environ.pop("MMVAE_CACHE", None)
    else:
        os.environ["MMVAE_CACHE"] = before


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory):
    """make(name, shared_dim, private_dim) -> a tiny run folder written by the real Trainer (MoPoE, 2 epochs) on
    the SharedPrivateToy dataset named in its config.json, so `evaluate_run` can rebuild both splits."""
    from mmvae import Modality, MultimodalVAE, Trainer
    from mmvae.datasets import get_dataset

    def make(name: str, shared_dim: int, private_dim: int):
        spec = {"name": "toy", "n": 240, "num_modalities": 3, "obs_dim": 6, "seed": 0}
        train = get_dataset("toy", "train", **{k: v for k, v in spec.items() if k != "name"})
        mods = {n: Modality(shape=train.shapes[n], likelihood="gaussian") for n in train.modalities}
        torch.manual_seed(0)
        model = MultimodalVAE(mods, shared_dim=shared_dim, private_dim=private_dim, aggregator="mopoe")
        out = tmp_path_factory.mktemp("runs") / name
        Trainer(model, max_epochs=2, batch_size=60, device="cpu", out=out, progress=False,
                extra_config={"dataset": spec, "preset": "mopoe"}).fit(train, val=train)
        return out

    return make
