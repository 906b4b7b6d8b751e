"""Diagonal Gaussians held as (mu, logvar) tensor pairs, and the closed forms we need on them."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

LOG_2PI = math.log(2 * math.pi)
LOGVAR_BOUND = 12.0


def soft_clamp_logvar(raw: Tensor, bound: float = LOGVAR_BOUND) -> Tensor:
    """logvar = bound * tanh(raw / bound): identity near 0, smooth and bounded in (-bound, bound)."""
    return bound * torch.tanh(raw / bound)


def kl_std_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, e^logvar) || N(0, I)) = 1/2 sum(mu^2 + e^logvar - 1 - logvar), summed over the last dim."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)


def kl_normal(mu1: Tensor, lv1: Tensor, mu2: Tensor, lv2: Tensor) -> Tensor:
    """KL(N1 || N2) = 1/2 sum(lv2 - lv1 + (e^lv1 + (mu1 - mu2)^2) / e^lv2 - 1), summed over the last dim."""
    return 0.5 * (lv2 - lv1 + (lv1.exp() + (mu1 - mu2).pow(2)) * torch.exp(-lv2) - 1.0).sum(-1)


def log_normal(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; mu, e^logvar), summed over the last dim."""
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar)).sum(-1)


def log_std_normal(z: Tensor) -> Tensor:
    """log N(z; 0, I) = -1/2 sum(log 2 pi + z^2), summed over the last dim."""
    return -0.5 * (LOG_2PI + z.pow(2)).sum(-1)


def rsample(mu: Tensor, logvar: Tensor, n: int | None = None) -> Tensor:
    """z = mu + e^(logvar/2) * eps; with n, a leading sample dim is added: [n, *mu.shape]."""
    shape = mu.shape if n is None else (n, *mu.shape)
    return mu + torch.exp(0.5 * logvar) * torch.randn(shape, dtype=mu.dtype, device=mu.device)


@dataclass
class Experts:
    """The unimodal posteriors of the shared latent: q(z | x_m) for every modality."""

    mu: Tensor  # [M, B, D]
    logvar: Tensor  # [M, B, D]
    avail: Tensor  # [B, M] bool

    @property
    def members(self) -> Tensor:  # [M, B, M]: expert m is the subset {m}
        """Expert m as the subset {m}, where observed.  # [M, B, M] bool"""
        M = self.mu.shape[0]
        eye = torch.eye(M, dtype=torch.bool, device=self.mu.device)
        return eye[:, None, :] & self.avail[None]


@dataclass
class SubsetPosterior:
    """One Gaussian per subset of modalities, q(z | x_S) for S = 1..K, with mixture weights over subsets."""

    mu: Tensor  # [K, B, D]
    logvar: Tensor  # [K, B, D]
    members: Tensor  # [K, B, M] bool: which observed modalities each subset used, per sample
    weight: Tensor  # [K, B]: 0 for subsets not valid for a sample; sums to 1 over K
    subsets: Tensor | None = None  # [K, M] bool: the aggregator's subset mask, before availability

    @property
    def valid(self) -> Tensor:  # [K, B]
        """Which subsets each sample can use.  # [K, B] bool"""
        return self.weight > 0

    def log_prob(self, z: Tensor, detach: bool = False) -> Tensor:
        """log q(z) = logsumexp_k [log w_k + log q_k(z)] under the mixture over valid subsets; detach stops gradients
        into the components' parameters.  z [..., B, D] -> [..., B]"""
        mu, lv = (self.mu.detach(), self.logvar.detach()) if detach else (self.mu, self.logvar)
        log_w = torch.where(self.valid, self.weight.clamp_min(1e-30).log(), -math.inf)  # [K, B]
        return torch.logsumexp(log_normal(z.unsqueeze(-3), mu, lv) + log_w, dim=-2)

    def component_log_prob(self, z: Tensor) -> Tensor:
        """log q_k(z_k): each subset's own density at its own samples.  z [..., K, B, D] -> [..., K, B]"""
        return log_normal(z, self.mu, self.logvar)

    def mean(self) -> Tensor:
        """The mixture's mean: sum_k w_k mu_k  # [B, D]."""
        return torch.einsum("kb,kbd->bd", self.weight, self.mu)

    def sample_component(self, n: int | None = None) -> Tensor:
        """z from the mixture: draw a subset k ~ weight per sample, then z ~ q_k.  # [B, D] or [n, B, D]"""
        K, B, D = self.mu.shape
        draws = 1 if n is None else n
        k = torch.multinomial(self.weight.T, draws, replacement=True).T  # [n, B]
        idx = k[..., None].expand(draws, B, D)
        mu = torch.gather(self.mu, 0, idx)
        lv = torch.gather(self.logvar, 0, idx)
        z = rsample(mu, lv)  # [n, B, D]
        return z[0] if n is None else z
