"""Importance-weighted bounds for any model: IWAE (Burda, Grosse & Salakhutdinov, ICLR 2016) and the DReG gradient
(Tucker, Lawson, Gu & Maddison, ICLR 2019).

Stratified over subsets as in MMVAE (Shi, Siddharth, Paige & Torr, NeurIPS 2019): every valid subset k draws L
samples z ~ q_k, and

    log w = sum_m lambda_m log p(x_m | z, w_m) + beta [log p(z) - log q(z) + sum_m (log p(w_m) - log q(w_m | x_m))]
    L_L   = sum_k pi_k [logsumexp_l log w_kl - log L]

with q the mixture sum_k pi_k q_k (combine="mixture") or the subset's own q_k (combine="sum"), and private terms
only for codes drawn from their posterior (MMVAE+ scores codes drawn from the auxiliary prior r(w_m) with none).
With L = 1 this is the Monte-Carlo ELBO of the same samples; L_L grows with L towards log p(X).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import InputError
from ..gaussian import log_normal, log_std_normal
from .base import Draws, ModelOutput, SubsetObjective


@dataclass
class LogWeights:
    """Everything an importance-weighted objective needs from one batch."""

    lw: Tensor  # [L, K', B] log importance weights
    pi: Tensor  # [K', B] weight of each drawn subset (0 where invalid)
    rec: Tensor  # [L, K', B, M] lambda_m log p(x_m | z, w_m)
    log_pq: Tensor  # [L, K', B] log p(z) - log q(z)
    private: Tensor  # [L, K', B] sum_m log p(w_m) - log q(w_m | x_m) over posterior-drawn codes
    samples: list  # (tensor [L, K', B, D], (rows, posterior mask) or None): the reparameterised draws


class IWAE(SubsetObjective):
    """-L_L: the importance-weighted bound with L = K samples per subset, stratified over the subsets.

    K (the IWAE paper's name) is the number of samples per subset. combine / reconstruct / stratify as in `ELBO`
    (None: the aggregator's default); stratify=True (default) scores every subset, False draws one subset per
    sample (cheaper for MoPoE with many modalities).
    """

    name = "iwae"

    def __init__(self, K: int = 10, combine: str | None = None, reconstruct: str | None = None,
                 stratify: bool | None = True, beta: float = 1.0):
        if int(K) < 1:
            raise InputError(f"{self.name} needs K >= 1 importance samples, got {K}")
        super().__init__(beta, combine, reconstruct, stratify)
        self.n_samples = int(K)

    @property
    def K(self) -> int:
        """Samples per subset (the IWAE paper's K; L in this package's shape comments)."""
        return self.n_samples

    def log_weights(self, model, x, avail, detach_q: bool = False) -> LogWeights:
        """log w for L samples of every drawn subset; detach_q evaluates log q with stopped parameters (DReG)."""
        return self.weights_of(self.draw(model, x, avail), model.prior, detach_q)

    def weights_of(self, d: Draws, prior, detach_q: bool = False) -> LogWeights:
        """The log importance weights of the prologue's draws.  # [L, K', B]"""
        stop = (lambda t: t.detach()) if detach_q else (lambda t: t)  # noqa: E731
        if d.settings.combine == "mixture":
            lq = d.post.log_prob(d.z, detach=detach_q)  # [L, K', B]
        else:
            lq = log_normal(d.z, stop(d.drawn.mu), stop(d.drawn.logvar))  # [L, K', B]: each subset's own q_k
        log_pq = prior.log_prob(d.z, d.enc.experts) - lq  # [L, K', B]
        private = torch.zeros_like(lq)
        samples = [(d.z, None)]
        for name, draw in d.rec.private.items():
            mu, lv = d.enc.private[name]  # [B, Dm]
            ratio = log_std_normal(draw.w) - log_normal(draw.w, stop(mu), stop(lv))  # [L, K'', B]
            private = private.index_add(1, draw.rows, torch.where(draw.posterior, ratio, 0.0))
            samples.append((draw.w, (draw.rows, draw.posterior)))
        lw = d.rec.log_lik.sum(-1) + self.beta * (log_pq + private)  # [L, K', B]
        return LogWeights(lw, d.pi, d.rec.log_lik, log_pq, private, samples)

    def bound(self, lws: LogWeights) -> Tensor:
        """sum_k pi_k [logsumexp_l log w_kl - log L].  # [B]"""
        return (lws.pi * (torch.logsumexp(lws.lw, 0) - math.log(self.n_samples))).sum(0)

    def _output(self, model, lws: LogWeights, loss: Tensor, bound: Tensor) -> ModelOutput:
        """Loss plus diagnostic terms: sample-averaged nll per modality and MC KLs, the bound itself."""
        pi = lws.pi[None]  # [1, K', B]
        terms = {f"nll/{n}": -(pi * lws.rec[..., i]).sum(1).mean() for i, n in enumerate(model.names)}
        terms["kl/shared"] = -(pi * lws.log_pq).sum(1).mean()
        terms["kl/private"] = -(pi * lws.private).sum(1).mean()
        terms[f"{self.name}/bound"] = bound.mean()
        return ModelOutput(loss, terms)

    def loss(self, d: Draws, model) -> ModelOutput:
        """-L_L averaged over the batch; its gradient is the plain reparameterised one."""
        lws = self.weights_of(d, model.prior)
        bound = self.bound(lws)
        return self._output(model, lws, -bound.mean(), bound.detach())

    def config(self):
        """The spec that rebuilds this objective (`make_objective(config())`)."""
        return {**super().config(), "K": self.n_samples}


class DReG(IWAE):
    """The IWAE bound with doubly-reparameterised gradients (Tucker et al. 2019).

    Decoder and prior parameters get sum_l w~_l grad log w_l; the encoder, through the reparameterised samples only
    (log q with stopped parameters), gets sum_l w~_l^2 (d log w_l / dz_l) (dz_l / dphi), w~ = softmax_l log w.
    Done by a gradient hook multiplying dL/dz_l by w~_l, and the surrogate -sum_l w~_l.detach() log w_l.
    For mixture proposals this is MMVAE's stratified extension; for a single Gaussian it is unbiased for grad L_L.
    The loss value is the IWAE bound's; only its gradient differs.
    """

    name = "dreg"

    def loss(self, d: Draws, model) -> ModelOutput:
        """-L_L averaged over the batch, with the DReG gradient (class docstring)."""
        lws = self.weights_of(d, model.prior, detach_q=True)
        with torch.no_grad():
            wn = torch.softmax(lws.lw, 0)  # [L, K', B] normalised within each subset
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
