"""The standard normal prior p(z) = N(0, I)."""
from __future__ import annotations

import torch
from torch import Tensor

from ..gaussian import Experts, SubsetPosterior, kl_std_normal, log_normal


class StandardNormal:
    """p(z) = N(0, I); its KL to a Gaussian posterior is closed form."""

    name = "normal"
    data_dependent = False

    def kl(self, post: SubsetPosterior, experts: Experts) -> Tensor:
        """KL(q_k || N(0, I)) per subset and sample.  # [K, B]"""
        return kl_std_normal(post.mu, post.logvar)

    def log_prob(self, z: Tensor, experts: Experts) -> Tensor:
        """log N(z; 0, I).  z [..., B, D] -> [..., B]"""
        return log_normal(z, torch.zeros_like(z), torch.zeros_like(z))

    def sample(self, n: int, dim: int, device=None) -> Tensor:
        return torch.randn(n, dim, device=device)

    def config(self) -> dict:
        return {"name": self.name}
