"""The standard normal prior p(z) = N(0, I)."""
from __future__ import annotations

from torch import Tensor

from ..gaussian import Experts, SubsetPosterior, kl_std_normal, log_std_normal


class StandardNormal:
    """p(z) = N(0, I); its KL to a Gaussian posterior is closed form."""

    name = "normal"

    def kl(self, post: SubsetPosterior, experts: Experts) -> Tensor:
        """KL(q_k || N(0, I)) per subset and sample.  # [K, B]"""
        return kl_std_normal(post.mu, post.logvar)

    def log_prob(self, z: Tensor, experts: Experts) -> Tensor:
        """log N(z; 0, I).  z [..., B, D] -> [..., B]"""
        return log_std_normal(z)

    def config(self) -> dict:
        """The spec that rebuilds this prior (`make_prior(config())`)."""
        return {"name": self.name}
