"""Objectives: turn a model's encodings into a loss with typed terms.

The ELBO here covers the published training objectives as settings of one estimator:
mixture ELBO over subsets (MoE/MMVAE stratified, MoPoE one subset drawn per sample), and sums of subset ELBOs
(MVAE's joint + unimodal terms, independent VAEs). Importance-weighted bounds are their own small classes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .errors import InputError
from .registry import from_spec
from .gaussian import SubsetPosterior, kl_std_normal, log_normal, rsample


@dataclass
class ModelOutput:
    """What a model's forward returns: the scalar loss to minimise and named scalar terms for logging."""

    loss: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)


def draw_subsets(post: SubsetPosterior, stratify: bool) -> SubsetPosterior:
    """Either every subset (stratified), or one subset k ~ weight drawn per sample, as a [1, B, ...] posterior."""
    if stratify:
        return post
    k = torch.multinomial(post.weight.T, 1).T  # [1, B]
    D, M = post.mu.shape[-1], post.members.shape[-1]
    pick = lambda t, n: torch.gather(t, 0, k[..., None].expand(1, k.shape[1], n))  # noqa: E731
    return SubsetPosterior(pick(post.mu, D), pick(post.logvar, D), pick(post.members, M),
                           torch.ones_like(k, dtype=post.weight.dtype), subsets=None)


def log_likelihoods(model, enc, x: dict[str, Tensor], z: Tensor, post: SubsetPosterior,
                    members_only: bool, record: dict | None = None) -> Tensor:
    """lambda_m log p(x_m | z, w_m) for every sample of z and every modality; 0 where x_m is not observed.

    z [S, K, B, Ds] -> [S, K, B, M]. With members_only, modality m is decoded only from the subsets that contain it
    (MVAE, independent VAEs), and scores 0 elsewhere. `record`, if given, receives the private codes decoded:
    name -> (rows [K'], in_subset [K', B], w [S, K', B, Dm]) (importance-weighted bounds score them).
    """
    S, K, B, _ = z.shape
    avail = enc.experts.avail  # [B, M]
    subsets = model.aggregator.mask(len(model.names)) if members_only and post.subsets is not None else None
    out = z.new_zeros(S, K, B, len(model.names))
    for i, name in enumerate(model.names):
        if name not in x or not enc.observed[i]:
            continue
        if subsets is None:  # every subset decodes m: no gather
            rows, zr, in_subset = torch.arange(K, device=z.device), z, post.members[:, :, i]
        else:  # only the subsets that contain m (a constant of the aggregator, on the host)
            rows = subsets[:, i].nonzero().squeeze(1).to(z.device)
            zr, in_subset = z[:, rows], post.members[rows, :, i]  # [S, K', B, D], [K', B]
        w = model.private_sample(name, enc, in_subset, S)  # [S, K', B, Dp]
        if record is not None and w is not None:
            record[name] = (rows, in_subset, w)
        params = model.decode(name, zr, w)  # [S, K', B, *out]
        lp = model.modalities[name].likelihood.log_prob(params, x[name])  # [S, K', B]
        lp = torch.where(avail[:, i], lp, 0.0) * model.modalities[name].weight
        if members_only:
            lp = torch.where(in_subset, lp, 0.0)
        if subsets is None:
            out[..., i] = lp
        else:
            out[:, rows, :, i] = lp
    return out


def private_kl(model, enc) -> dict[str, Tensor]:
    """KL(q(w_m | x_m) || N(0, I)) per modality with a private latent, 0 where x_m is missing.  # name -> [B]"""
    avail = enc.experts.avail
    return {name: torch.where(avail[:, i], kl_std_normal(*enc.private[name]), 0.0)
            for i, name in enumerate(model.names) if model.private_dims[name] > 0}


class Objective:
    """An objective maps (model, x, avail) to a ModelOutput; `config()` round-trips through JSON."""

    name = "base"

    def __call__(self, model, x: dict[str, Tensor], avail: Tensor) -> ModelOutput:
        raise NotImplementedError

    def config(self) -> dict:
        return {"name": self.name}


class ELBO(Objective):
    """-ELBO = sum_k pi_k [ -E_{q_k} sum_m lambda_m log p(x_m | z, w_m) + beta KL(q_k || p) ] + beta sum_m KL(q(w_m) || p).

    combine="mixture": pi_k uniform over the valid subsets (q is the mixture sum_k pi_k q_k; its KL is bounded by
    the average KL, or estimated by Monte Carlo with kl="mc"). combine="sum": pi_k = 1 for every valid subset
    (a sum of subset ELBOs). reconstruct="all" decodes every observed modality from each subset's z; "members"
    only the subset's own modalities. stratify=True decodes every subset; False draws one subset per sample.
    None means "the aggregator's default".
    """

    name = "elbo"

    def __init__(self, kl: str = "closed", combine: str | None = None, reconstruct: str | None = None,
                 stratify: bool | None = None):
        if kl not in ("closed", "mc"):
            raise InputError(f"ELBO kl must be 'closed' or 'mc', got {kl!r}")
        if combine not in (None, "mixture", "sum") or reconstruct not in (None, "all", "members"):
            raise InputError(f"ELBO combine must be 'mixture'/'sum' and reconstruct 'all'/'members'; got "
                             f"{combine!r}, {reconstruct!r}")
        self.kl, self.combine, self.reconstruct, self.stratify = kl, combine, reconstruct, stratify

    def settings(self, model) -> tuple[str, str, bool]:
        agg = model.aggregator
        separate = agg.name == "none" or getattr(agg, "which", "") == "joint+unimodal"
        combine = self.combine or ("sum" if separate else "mixture")
        reconstruct = self.reconstruct or ("members" if separate else "all")
        stratify = agg.stratify if self.stratify is None else self.stratify
        return combine, reconstruct, stratify or combine == "sum"

    def __call__(self, model, x, avail):
        combine, reconstruct, stratify = self.settings(model)
        enc = model.encode(x, avail)
        post = model.aggregator(enc.experts)  # [K, B, D]
        drawn = draw_subsets(post, stratify)  # [K', B, D]
        pi = drawn.weight if combine == "mixture" else drawn.valid.to(drawn.mu.dtype)  # [K', B]
        z = rsample(drawn.mu, drawn.logvar)[None]  # [1, K', B, D]
        rec = log_likelihoods(model, enc, x, z, drawn, reconstruct == "members")[0]  # [K', B, M]
        if self.kl == "closed":
            kl_k = model.prior.kl(post, enc.experts)  # [K, B]
            kl = (kl_k * (post.weight if combine == "mixture" else post.valid.to(kl_k.dtype))).sum(0)  # [B]
        else:
            log_q = log_normal(z[0, :, None], post.mu[None], post.logvar[None])  # [K', K, B]
            if combine == "mixture":
                log_q = torch.logsumexp(log_q + torch.log(post.weight.clamp_min(1e-30))[None], dim=1)  # [K', B]
            else:
                log_q = torch.diagonal(log_q, dim1=0, dim2=1).T  # [K, B]: each subset's own q
            kl = (pi * (log_q - model.prior.log_prob(z[0], enc.experts))).sum(0)
        priv = private_kl(model, enc)
        nll = -(pi[..., None] * rec).sum(0)  # [B, M]
        kl_private = sum(priv.values()) if priv else torch.zeros_like(kl)
        loss = nll.sum(-1) + model.beta * (kl + kl_private)  # [B]
        terms = {f"nll/{n}": nll[:, i].mean() for i, n in enumerate(model.names)}
        terms["kl/shared"] = kl.mean()
        terms.update({f"kl/private/{n}": v.mean() for n, v in priv.items()})
        return ModelOutput(loss.mean(), terms)

    def config(self):
        return {"name": self.name, "kl": self.kl, "combine": self.combine, "reconstruct": self.reconstruct,
                "stratify": self.stratify}


from .bounds import IWAE, DReG  # noqa: E402  (bounds.py builds on the helpers above)

OBJECTIVES: dict[str, type] = {"elbo": ELBO, "iwae": IWAE, "dreg": DReG}


def make_objective(spec) -> Objective:
    """An objective from an instance, a name ("elbo", "iwae", "dreg") or a config dict; None is the ELBO."""
    return ELBO() if spec is None else from_spec(spec, OBJECTIVES, "objective")
