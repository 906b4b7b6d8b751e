"""The ELBO, whose settings give the published training objectives: the mixture ELBO over subsets (MoE/MMVAE
stratified, MoPoE one subset drawn per sample) and sums of subset ELBOs (MVAE's joint + unimodal terms, DMVAE,
independent VAEs)."""
from __future__ import annotations

import torch

from ..errors import InputError
from ..priors import StandardNormal
from .base import Draws, ModelOutput, SubsetObjective, private_kl


def subset_kl(prior, post, experts) -> torch.Tensor:
    """KL(q_k || p) of every subset and sample; for N(0, I), the posterior's own closed form (fused over subsets
    for products of experts, without building every subset's Gaussian).  # [K, B]"""
    return post.kl_std_normal() if isinstance(prior, StandardNormal) else prior.kl(post, experts)


class ELBO(SubsetObjective):
    """-ELBO = sum_k pi_k [-E_{q_k} sum_m lambda_m log p(x_m | z, w_m) + beta KL(q_k || p)] + beta sum_m KL(q(w_m)||p).

    kl="closed": each subset's KL(q_k || p) from the prior (closed form, or the MM-VAMP bound), averaged with pi_k;
    under a mixture that bounds the mixture's KL. kl="mc": log q(z) - log p(z) at the sampled z, with q the mixture
    (combine="mixture") or the subset's own q_k (combine="sum").
    """

    name = "elbo"

    def __init__(self, kl: str = "closed", combine: str | None = None, reconstruct: str | None = None,
                 stratify: bool | None = None, beta: float = 1.0):
        if kl not in ("closed", "mc"):
            raise InputError(f"ELBO kl must be 'closed' or 'mc', got {kl!r}")
        super().__init__(beta, combine, reconstruct, stratify)
        self.kl = kl

    def shared_kl(self, d: Draws, prior) -> torch.Tensor:
        """The shared latent's KL term of each sample.  # [B]"""
        post, experts = d.post, d.enc.experts
        if self.kl == "closed":
            kl_k = subset_kl(prior, post, experts)  # [K, B]
            pk = post.weight if d.settings.combine == "mixture" else post.valid.to(kl_k.dtype)
            return (kl_k * pk).sum(0)
        z = d.z[0]  # [K', B, D]
        log_q = post.log_prob(z) if d.settings.combine == "mixture" else d.drawn.component_log_prob(z)  # [K', B]
        return (d.pi * (log_q - prior.log_prob(z, experts))).sum(0)

    def loss(self, d: Draws, model) -> ModelOutput:
        """-ELBO averaged over the batch, with nll/m, kl/shared and kl/private/m terms."""
        kl = self.shared_kl(d, model.prior)  # [B]
        priv = private_kl(d.enc, model.names)  # name -> [B]
        nll = -(d.pi[..., None] * d.rec.log_lik[0]).sum(0)  # [B, M]
        kl_private = sum(priv.values()) if priv else torch.zeros_like(kl)
        loss = nll.sum(-1) + self.beta * (kl + kl_private)  # [B]
        terms = {f"nll/{n}": nll[:, i].mean() for i, n in enumerate(model.names)}
        terms["kl/shared"] = kl.mean()
        terms.update({f"kl/private/{n}": v.mean() for n, v in priv.items()})
        return ModelOutput(loss.mean(), terms)

    def config(self):
        """The spec that rebuilds this objective (`make_objective(config())`)."""
        return {**super().config(), "kl": self.kl}
