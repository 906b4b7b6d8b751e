"""Small real models and datasets for the reliability tests, and the counters behind the closing summary.

Everything here builds the library's own `MultimodalVAE`, `Trainer` and datasets, only smaller: MLPs with a
hidden layer of 16 and toy data of a few dozen samples, so that each test runs in seconds on a CPU.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from mmvae import Modality, MultimodalVAE
from mmvae.datasets import SharedPrivateToy
from mmvae.networks import MLPDecoder, MLPEncoder

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SMOKE = os.environ.get("MMVAE_SMOKE") == "1"

#: what the closing summary reports (conftest.py prints it)
COUNTS = {"bad_input_cases": 0, "bad_input_calls": 0, "kills": 0, "kills_mid_write": 0, "fuzz_examples": 0,
          "disk_full": 0, "write_faults": 0, "lock": 0, "corrupt_file": 0, "nonfinite_checkpoint": 0}
#: how the disk-full cases were made (a real size-limited filesystem, or a fault-injecting file object, and why)
METHODS: set[str] = set()


def count(key: str, n: int = 1) -> None:
    COUNTS[key] += n


def mixed_model(seed: int = 0, aggregator="mopoe", **kw) -> MultimodalVAE:
    """Three modalities with three likelihoods: img (Bernoulli, [1, 4, 4]), vec (Gaussian, [5]), tok (categorical
    tokens in [0, 7), [4]); shared latent 3, private latent 1 on vec."""
    torch.manual_seed(seed)
    ds, dp = 3, {"img": 0, "vec": 1, "tok": 0}
    mods = {
        "img": Modality(MLPEncoder((1, 4, 4), 2 * ds, hidden=(16,)), MLPDecoder(ds, (1, 4, 4), hidden=(16,)),
                        "bernoulli"),
        "vec": Modality(MLPEncoder((5,), 2 * (ds + 1), hidden=(16,)), MLPDecoder(ds + 1, (5,), hidden=(16,)),
                        "gaussian"),
        "tok": Modality(MLPEncoder((4,), 2 * ds, hidden=(16,), num_classes=7, embed_dim=3),
                        MLPDecoder(ds, (4,), hidden=(16,), num_classes=7), {"name": "categorical", "num_classes": 7}),
    }
    return MultimodalVAE(mods, ds, private_dim=dp, aggregator=aggregator, **kw)


def mixed_batch(n: int = 6, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"img": torch.rand(n, 1, 4, 4, generator=g), "vec": torch.randn(n, 5, generator=g),
            "tok": torch.randint(7, (n, 4), generator=g)}


def toy(n: int = 64, split: str = "train", num_modalities: int = 3, seed: int = 0) -> SharedPrivateToy:
    return SharedPrivateToy(split, n=n, num_modalities=num_modalities, obs_dim=6, seed=seed)


def toy_model(data, preset: str = "mopoe", seed: int = 0, shared_dim: int = 2, **kw) -> MultimodalVAE:
    """A preset (models.presets) with small MLPs for `data`'s vector modalities."""
    from mmvae.models import PRESETS

    torch.manual_seed(seed)
    private = kw.get("private_dim", 0) if preset not in ("mmvaeplus", "dmvae") else kw.get("private_dim", 1)
    kw = {**kw, "private_dim": private}
    latent = shared_dim + private
    mods = {m: Modality(MLPEncoder(data.shapes[m], 2 * latent, hidden=(16,)),
                        MLPDecoder(latent, data.shapes[m], hidden=(16,)), "gaussian") for m in data.modalities}
    if preset in ("mmvae", "mmvaeplus"):
        kw.setdefault("K", 2)
    return PRESETS[preset](mods, shared_dim=shared_dim, **kw)


def params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(p: dict, q: dict) -> bool:
    return p.keys() == q.keys() and all(torch.equal(p[k], q[k]) for k in p)


def subprocess_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def driver_command(*args: str) -> list[str]:
    """`python cli_driver.py ARGS`: the real `mmvae` command line with the small `tiny` dataset registered."""
    return [sys.executable, str(HERE / "cli_driver.py"), *args]
