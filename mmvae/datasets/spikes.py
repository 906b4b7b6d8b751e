"""SyntheticSpikes: a multi-subject recording in the shape of the MMVM hippocampal experiment (Sutter et al.,
NeurIPS 2024: five rats as five modalities, trials of a few odour conditions, spike counts in time bins).

Each trial n has a condition c_n; its shared factor g_n ~ N(centre_{c_n}, sigma_g^2 I) sets a shared latent
trajectory s_n(t) = g_n * phi(t) (phi: one bump in time per latent dim), and subject m's private factor
p_{n,m} ~ N(0, I) a private trajectory w_{n,m}(t) = p_{n,m} * psi(t). Neuron i of subject m fires
x ~ Poisson(lambda), log lambda_{n,m}(t, i) = b_{m,i} + C_{m,i} . s_n(t) + D_{m,i} . w_{n,m}(t).
A modality is one subject's counts [T, neurons_m] (time bins first, neurons as channels: the `[T, C]` layout of
sequence modalities, which get temporal-convolution networks by default). The maps depend on `seed` only; the
trials on `seed` and the split.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .base import MultimodalDataset

SPLITS = ("train", "test")
NEURONS = (24, 32, 40, 28, 36)  # per subject, different on purpose (the rats' recordings differ in size)


def bumps(n_bins: int, k: int, width: float) -> Tensor:
    """k Gaussian bumps over the trial, centres spread evenly, `width` in bins.  -> [T, k], peak 1"""
    t = torch.arange(n_bins, dtype=torch.float32)[:, None]  # [T, 1]
    centres = (torch.arange(k, dtype=torch.float32) + 1) * n_bins / (k + 1)  # [k]
    return torch.exp(-0.5 * ((t - centres) / width) ** 2)


@dataclass(frozen=True)
class SubjectMap:
    """One subject's log-linear rate map: log lambda = b + C s(t) + D w(t)."""

    b: Tensor  # [neurons]
    C: Tensor  # [neurons, ds]
    D: Tensor  # [neurons, dp]

    def log_rates(self, s: Tensor, w: Tensor) -> Tensor:
        """s [N, T, ds], w [N, T, dp] -> [N, T, neurons]"""
        return self.b + s @ self.C.T + w @ self.D.T


def make_maps(seed: int, neurons, shared_dim: int, private_dim: int, base_rate: float, shared_gain: float,
              private_gain: float) -> list[SubjectMap]:
    """The fixed rate maps of every subject for `seed`, identical across splits."""
    rng = np.random.default_rng([seed, 0x5B1])

    def t(a):
        return torch.from_numpy(np.asarray(a, dtype=np.float32))
    return [SubjectMap(b=t(np.log(base_rate) + 0.3 * rng.standard_normal(n)),
                       C=t(shared_gain * rng.standard_normal((n, shared_dim)) / np.sqrt(shared_dim)),
                       D=t(private_gain * rng.standard_normal((n, private_dim)) / np.sqrt(private_dim)))
            for n in neurons]


def condition_centres(num_conditions: int, shared_dim: int, radius: float) -> Tensor:
    """Centres of the conditions' shared factors: evenly on a circle in the first two dims.  -> [C, ds]"""
    angle = 2 * np.pi * torch.arange(num_conditions, dtype=torch.float32) / num_conditions
    centres = torch.zeros(num_conditions, shared_dim)
    centres[:, 0] = radius * torch.cos(angle)
    if shared_dim > 1:
        centres[:, 1] = radius * torch.sin(angle)
    return centres


class SyntheticSpikes(MultimodalDataset):
    """Poisson spike counts of `len(neurons)` subjects (modalities "rat0", ...), each [n_bins, neurons_m].

    targets: `{"shared": g [N, ds], "rat0": p_0 [N, dp], ...}` (the trial factors, as SharedPrivateToy keeps them);
    `.labels` the condition [N] (`num_conditions` classes); `.true_rates()` the rates the counts were drawn from;
    `.maps[m]`, `.phi` [T, ds] and `.psi` [T, dp] the generative maps.
    """

    def __init__(self, split: str = "train", n: int | None = None, neurons=NEURONS, n_bins: int = 20,
                 num_conditions: int = 4, shared_dim: int = 2, private_dim: int = 2, base_rate: float = 0.2,
                 shared_gain: float = 0.7, private_gain: float = 0.6, radius: float = 1.5,
                 condition_noise: float = 0.4, seed: int = 0, drop_rate: float = 0.0):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        n = n if n is not None else (2000 if split == "train" else 500)
        neurons = tuple(int(k) for k in neurons)
        self.maps = make_maps(seed, neurons, shared_dim, private_dim, base_rate, shared_gain, private_gain)
        self.phi = bumps(n_bins, shared_dim, width=n_bins / 6)  # [T, ds]
        self.psi = bumps(n_bins, private_dim, width=n_bins / 4)  # [T, dp]
        self.subjects = [f"rat{m}" for m in range(len(neurons))]
        rng = np.random.default_rng([seed, 1 + SPLITS.index(split)])
        cond = torch.from_numpy(rng.integers(num_conditions, size=n))  # [N]
        eps = torch.from_numpy(rng.standard_normal((n, shared_dim)).astype(np.float32))
        g = condition_centres(num_conditions, shared_dim, radius)[cond] + condition_noise * eps  # [N, ds]
        p = torch.from_numpy(rng.standard_normal((len(neurons), n, private_dim)).astype(np.float32))  # [M, N, dp]
        self.targets = {"shared": g, **{name: p[m] for m, name in enumerate(self.subjects)}}
        gen = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
        data = {name: torch.poisson(lam, generator=gen) for name, lam in self.true_rates().items()}  # [N, T, n_m]
        super().__init__(data, targets=self.targets, likelihoods=dict.fromkeys(self.subjects, "poisson"),
                         labels=cond, num_classes=num_conditions)
        self.split, self.seed = split, seed
        if drop_rate:
            dropped = self.drop(drop_rate, seed=seed)
            self.data, self.avail = dropped.data, dropped.avail

    def trajectories(self) -> tuple[Tensor, dict[str, Tensor]]:
        """The shared trajectory s(t) [N, T, ds] and each subject's private one w_m(t) [N, T, dp], from the
        factors in `targets` (so a `subset` stays consistent)."""
        s = self.targets["shared"][:, None, :] * self.phi  # [N, T, ds]
        return s, {name: self.targets[name][:, None, :] * self.psi for name in self.subjects}

    def true_rates(self) -> dict[str, Tensor]:
        """The Poisson rates the counts were drawn from: name -> [N, T, neurons_m]."""
        s, w = self.trajectories()
        return {name: f.log_rates(s, w[name]).exp() for name, f in zip(self.subjects, self.maps)}
