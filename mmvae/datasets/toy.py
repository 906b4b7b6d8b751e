"""SharedPrivateToy: modalities generated from one shared factor and one private factor each.

s ~ N(0, I_ds), p_m ~ N(0, I_dp), x_m = f_m([s, p_m]) + noise * eps, with f_m a fixed random tanh MLP.
The maps depend on `seed` only; the samples on `seed` and the split.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .base import MultimodalDataset

SPLITS = ("train", "test")
HIDDEN = 32


@dataclass(frozen=True)
class TanhMLP:
    """f(z) = W2 tanh(W1 z + b1) + b2: one modality's fixed generative map."""

    w1: Tensor  # [H, d_in]
    b1: Tensor  # [H]
    w2: Tensor  # [d_out, H]
    b2: Tensor  # [d_out]

    @classmethod
    def random(cls, rng: np.random.Generator, d_in: int, d_out: int, hidden: int = HIDDEN) -> TanhMLP:
        """Weights with fan-in scaling; gain 1.5 on the first layer so tanh bends the map visibly."""
        def t(a):
            return torch.from_numpy(a.astype(np.float32))
        return cls(w1=t(1.5 * rng.standard_normal((hidden, d_in)) / np.sqrt(d_in)),
                   b1=t(0.5 * rng.standard_normal(hidden)),
                   w2=t(rng.standard_normal((d_out, hidden)) / np.sqrt(hidden)),
                   b2=t(0.1 * rng.standard_normal(d_out)))

    def __call__(self, z: Tensor) -> Tensor:
        """z [..., d_in] -> [..., d_out]"""
        return torch.tanh(z @ self.w1.T + self.b1) @ self.w2.T + self.b2


def make_maps(seed: int, num_modalities: int, shared_dim: int, private_dim: int, obs_dim: int) -> list[TanhMLP]:
    """The fixed maps f_0 .. f_{M-1} for `seed`, identical across splits."""
    rng = np.random.default_rng([seed, 0x70F])
    return [TanhMLP.random(rng, shared_dim + private_dim, obs_dim) for _ in range(num_modalities)]


def quadrant(s: Tensor) -> Tensor:
    """Class of a shared factor by its sign pattern: sum_j [s_j > 0] 2^j.  s [N, ds] -> [N] in [0, 2^ds)"""
    return ((s > 0).long() << torch.arange(s.shape[1])).sum(1)


class SharedPrivateToy(MultimodalDataset):
    """Gaussian toy data with known shared and private factors.

    targets: `{"shared": [N, ds], "m0": [N, dp], ...}`; `.labels` the quadrant of the shared factor, 2^ds classes;
    `.maps[m]` the generative map of modality m, so `maps[m](cat([s, p_m], -1))` is x_m without noise.
    """

    def __init__(self, split: str = "train", n: int | None = None, num_modalities: int = 3, shared_dim: int = 2,
                 private_dim: int = 2, obs_dim: int = 20, noise: float = 0.05, seed: int = 0,
                 drop_rate: float = 0.0):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        n = n if n is not None else (4000 if split == "train" else 1000)
        self.maps = make_maps(seed, num_modalities, shared_dim, private_dim, obs_dim)
        rng = np.random.default_rng([seed, 1 + SPLITS.index(split)])
        s = torch.from_numpy(rng.standard_normal((n, shared_dim)).astype(np.float32))  # [N, ds]
        p = torch.from_numpy(rng.standard_normal((num_modalities, n, private_dim)).astype(np.float32))  # [M, N, dp]
        eps = torch.from_numpy(rng.standard_normal((num_modalities, n, obs_dim)).astype(np.float32))  # [M, N, do]
        names = [f"m{m}" for m in range(num_modalities)]
        data = {name: f(torch.cat([s, p[m]], 1)) + noise * eps[m] for m, (name, f) in enumerate(zip(names, self.maps))}
        targets = {"shared": s, **{name: p[m] for m, name in enumerate(names)}}
        gaussian = {"name": "gaussian", "scale": 0.1}  # about the noise level: reconstruction outweighs the KL
        super().__init__(data, targets=targets, likelihoods={name: dict(gaussian) for name in names},
                         labels=quadrant(s), num_classes=2 ** shared_dim)
        self.split, self.seed, self.noise = split, seed, noise
        if drop_rate:
            dropped = self.drop(drop_rate, seed=seed)
            self.data, self.avail = dropped.data, dropped.avail
