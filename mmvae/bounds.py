"""Importance-weighted bounds for any model: IWAE (Burda et al. 2016) and the DReG gradient (Tucker et al. 2019).

Stratified over subsets as in MMVAE (Shi et al. 2019): every valid subset k draws S samples z ~ q_k, and

    log w = sum_m lambda_m log p(x_m | z, w_m) + beta [log p(z) - log q(z) + sum_m (log p(w_m) - log q(w_m | x_m))]
    L_S   = sum_k pi_k [logsumexp_s log w_ks - log S]

with q the mixture sum_k pi_k q_k (combine="mixture") or the subset's own q_k (combine="sum"), and private terms
only for codes drawn from their posterior (MMVAE+ scores codes drawn from the auxiliary prior r(w_m) with none).
With S = 1 this is the Monte-Carlo ELBO of the same samples; L_S grows with S towards log p(X).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import InputError
from .gaussian import log_normal, rsample
from .objectives import ELBO, ModelOutput, Objective, draw_subsets, log_likelihoods


@dataclass
class LogWeights:
    """Everything an importance-weighted objective needs from one batch."""

    lw: Tensor  # [S, K', B] log importance weights
    pi: Tensor  # [K', B] weight of each drawn subset (0 where invalid)
    rec: Tensor  # [S, K', B, M] lambda_m log p(x_m | z, w_m)
    log_pq: Tensor  # [S, K', B] log p(z) - log q(z)
    private: Tensor  # [S, K', B] sum_m log p(w_m) - log q(w_m | x_m) over posterior-drawn codes
    samples: list  # (tensor [S, K', B, D], mask [S|1, K', B] or None): the reparameterised draws


def _log_std_normal(z: Tensor) -> Tensor:
    """log N(z; 0, I) summed over the last dim."""
    return -0.5 * (math.log(2 * math.pi) + z.pow(2)).sum(-1)


class IWAE(Objective):
    """-L_K: the importance-weighted bound with K samples per subset, stratified over the subsets.

    combine / reconstruct / stratify as in `ELBO` (None: the aggregator's default); stratify=True (default) scores
    every subset, False draws one subset per sample (cheaper for MoPoE with many modalities).
    """

    name = "iwae"

    def __init__(self, K: int = 10, combine: str | None = None, reconstruct: str | None = None,
                 stratify: bool | None = True):
        if int(K) < 1:
            raise InputError(f"{self.name} needs K >= 1 importance samples, got {K}")
        self.K = int(K)
        self._elbo = ELBO(combine=combine, reconstruct=reconstruct, stratify=stratify)  # shares its settings

    def log_weights(self, model, x, avail, detach_q: bool = False) -> LogWeights:
        """log w for K samples of every drawn subset; detach_q evaluates log q with stopped parameters (DReG)."""
        combine, reconstruct, stratify = self._elbo.settings(model)
        enc = model.encode(x, avail)
        post = model.aggregator(enc.experts)  # [K, B, D]
        drawn = draw_subsets(post, stratify)  # [K', B, D]
        pi = drawn.weight if combine == "mixture" else drawn.valid.to(drawn.mu.dtype)  # [K', B]
        z = rsample(drawn.mu, drawn.logvar, self.K)  # [S, K', B, D]
        record: dict = {}
        rec = log_likelihoods(model, enc, x, z, drawn, reconstruct == "members", record)  # [S, K', B, M]
        stop = (lambda t: t.detach()) if detach_q else (lambda t: t)  # noqa: E731
        if combine == "mixture":
            lq = log_normal(z[:, :, None], stop(post.mu), stop(post.logvar))  # [S, K', K, B]
            log_pi = torch.where(post.valid, post.weight.clamp_min(1e-30).log(), -math.inf)  # [K, B]
            lq = torch.logsumexp(lq + log_pi, dim=2)  # [S, K', B]
        else:
            lq = log_normal(z, stop(drawn.mu), stop(drawn.logvar))  # [S, K', B]: each subset's own q_k
        log_pq = model.prior.log_prob(z, enc.experts) - lq  # [S, K', B]
        private = torch.zeros_like(lq)
        samples = [(z, None)]
        for name, (rows, in_subset, w) in record.items():
            obs = enc.experts.avail[:, model.names.index(name)]  # [B]
            # codes from q(w_m | x_m): in the subset (MMVAE+), or whenever observed (DMVAE); see private_sample
            use = (in_subset | obs if model.cross_private == "posterior" else in_subset) & obs  # [K'', B]
            mu, lv = enc.private[name]  # [B, Dm]
            ratio = _log_std_normal(w) - log_normal(w, stop(mu), stop(lv))  # [S, K'', B]
            private = private.index_add(1, rows, torch.where(use, ratio, 0.0))
            samples.append((w, (rows, use)))
        lw = rec.sum(-1) + model.beta * (log_pq + private)  # [S, K', B]
        return LogWeights(lw, pi, rec, log_pq, private, samples)

    def bound(self, lws: LogWeights) -> Tensor:
        """sum_k pi_k [logsumexp_s log w_ks - log S].  # [B]"""
        return (lws.pi * (torch.logsumexp(lws.lw, 0) - math.log(self.K))).sum(0)

    def _output(self, model, lws: LogWeights, loss: Tensor, bound: Tensor) -> ModelOutput:
        """Loss plus diagnostic terms: sample-averaged nll per modality and MC KLs, the bound itself."""
        pi = lws.pi[None]  # [1, K', B]
        terms = {f"nll/{n}": -(pi * lws.rec[..., i]).sum(1).mean() for i, n in enumerate(model.names)}
        terms["kl/shared"] = -(pi * lws.log_pq).sum(1).mean()
        terms["kl/private"] = -(pi * lws.private).sum(1).mean()
        terms[f"{self.name}/bound"] = bound.mean()
        return ModelOutput(loss, terms)

    def __call__(self, model, x, avail):
        lws = self.log_weights(model, x, avail)
        bound = self.bound(lws)
        return self._output(model, lws, -bound.mean(), bound.detach())

    def config(self):
        e = self._elbo
        return {"name": self.name, "K": self.K, "combine": e.combine, "reconstruct": e.reconstruct,
                "stratify": e.stratify}


class DReG(IWAE):
    """The IWAE bound with doubly-reparameterised gradients (Tucker et al. 2019).

    Decoder and prior parameters get sum_s w~_s grad log w_s; the encoder, through the reparameterised samples only
    (log q with stopped parameters), gets sum_s w~_s^2 (d log w_s / dz_s) (dz_s / dphi), w~ = softmax_s log w.
    Done by a gradient hook multiplying dL/dz_s by w~_s, and the surrogate -sum_s w~_s.detach() log w_s.
    For mixture proposals this is MMVAE's stratified extension; for a single Gaussian it is unbiased for grad L_S.
    The loss value is the IWAE bound's; only its gradient differs.
    """

    name = "dreg"

    def __call__(self, model, x, avail):
        lws = self.log_weights(model, x, avail, detach_q=True)
        with torch.no_grad():
            wn = torch.softmax(lws.lw, 0)  # [S, K', B] normalised within each subset
        for t, where in lws.samples:
            if not t.requires_grad:
                continue
            if where is None:
                scale = wn[..., None]
            else:  # private codes: reweight only those drawn from the posterior (prior draws keep factor 1)
                rows, use = where
                scale = torch.where(use[..., None], wn[:, rows, :, None], 1.0)
            t.register_hook(lambda g, s=scale: g * s)
        bound = self.bound(lws)  # [B]
        surrogate = (lws.pi * (wn * lws.lw).sum(0)).sum(0)  # [B]
        loss = -(bound.detach() + surrogate - surrogate.detach()).mean()
        return self._output(model, lws, loss, bound.detach())
