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


def sample_index(weight: Tensor) -> Tensor:
    """k ~ Categorical(weight[:, b]) for every column b, by inverting the cumulative weights.  [K, B] -> [1, B]"""
    cdf = weight.cumsum(0)  # [K, B]
    u = torch.rand(weight.shape[1], dtype=weight.dtype, device=weight.device) * cdf[-1]  # [B]
    k = (cdf < u).sum(0, keepdim=True)  # [1, B]: the first k with cdf_k >= u (a zero weight is never drawn)
    return k.clamp_max_(weight.shape[0] - 1)


def _sum_log(p: Tensor, D: int) -> Tensor:
    """sum_d log p_d over consecutive groups of D, as logs of pairwise products (half the logs): any p in
    [1e-8, 1e19] keeps each product a normal float32.  p [n, G*D] -> [n*G]"""
    if D % 2:
        return p.log().view(-1, D).sum(-1)
    q = p.view(-1, 2)
    return (q[:, 0] * q[:, 1]).log_().view(-1, D // 2).sum(-1)


class _PoEKL(torch.autograd.Function):
    """kl[k, b] = 1/2 sum_d (n^2 / p^2 + 1/p - 1 + log p), p = max(c + S_k . prec_m, 1e-8), n = S_k . num_m.

    KL(q_k || N(0, I)) of every product of experts without keeping [K, B, D]: computed in chunks of subsets, and
    the backward recomputes p and n chunk by chunk (d kl/dn = n/p^2, d kl/dp = (1 - 1/p - 2 n^2/p^2) / 2p).
    """

    @staticmethod
    def forward(ctx, S, prec_m, num_m, c, chunk, clamps):  # S [K, M]; prec_m, num_m [M, B, D]
        ctx.save_for_backward(S, prec_m, num_m)
        ctx.c, ctx.chunk, ctx.clamps = c, chunk, clamps
        K, (M, B, D) = S.shape[0], prec_m.shape
        P, N = prec_m.reshape(M, B * D), num_m.reshape(M, B * D)
        out, ones = prec_m.new_empty(K, B), prec_m.new_ones(D)
        for s in range(0, K, chunk):
            p = torch.mm(S[s:s + chunk], P)  # [k, B*D]: the subsets' precisions
            if c:
                p.add_(c)
            r = p.clamp_min_(1e-8).reciprocal()
            m = torch.mm(S[s:s + chunk], N).mul_(r)  # [k, B*D]: the subsets' means
            val = torch.addcmul(r, m, m)  # mu^2 + var
            kl = torch.mv(val.view(-1, D), ones).add_(_sum_log(p, D)).sub_(D).mul_(0.5)  # [k*B]: - logvar = log p
            out[s:s + chunk] = kl.view(-1, B)
        return out

    @staticmethod
    def backward(ctx, g):  # g [K, B]
        S, prec_m, num_m = ctx.saved_tensors
        c, chunk = ctx.c, ctx.chunk
        K, (M, B, D) = S.shape[0], prec_m.shape
        P, N = prec_m.reshape(M, B * D), num_m.reshape(M, B * D)
        gp, gn = torch.zeros_like(P), torch.zeros_like(N)
        for s in range(0, K, chunk):
            Sk, gk = S[s:s + chunk], g[s:s + chunk, :, None]  # [k, M], [k, B, 1]
            p = torch.mm(Sk, P)  # [k, B*D]
            if c:
                p.add_(c)
            live = p > 1e-8 if ctx.clamps else None  # the clamp's gradient, where some p can be below it
            r = p.clamp_min_(1e-8).reciprocal_()  # 1/p
            m = torch.mm(Sk, N).mul_(r)  # n/p
            dn = (m * r).view(-1, B, D).mul_(gk)  # g n/p^2
            dp = torch.addcmul(1.0 - r, m, m, value=-2.0).mul_(r).view(-1, B, D).mul_(0.5 * gk)
            if live is not None:
                dp.mul_(live.view(-1, B, D))
            gn.addmm_(Sk.T, dn.view(-1, B * D))
            gp.addmm_(Sk.T, dp.view(-1, B * D))
        return None, gp.view_as(prec_m), gn.view_as(num_m), None, None, None


def poe_kl_std_normal(S: Tensor, prec_m: Tensor, num_m: Tensor, prior_expert: bool, chunk: int | None = None) -> Tensor:
    """KL(q_k || N(0, I)) of every product of experts q_k, precision c + sum_{m in S_k} prec_m and precision-weighted
    mean sum_{m in S_k} num_m (c = 1 with a prior expert), without materialising [K, B, D].  -> [K, B]"""
    M, B, D = prec_m.shape
    if chunk is None:  # about 512 KB of floats per chunk on the CPU (cache-sized), larger on accelerators
        budget = 2**17 if prec_m.device.type == "cpu" else 2**24
        chunk = max(1, budget // (B * D))
    c = 1.0 if prior_expert else 0.0
    clamps = not prior_expert and bool((prec_m < 1e-8).any())  # else every p >= 1e-8: the clamp does nothing
    return _PoEKL.apply(S.to(prec_m.dtype), prec_m, num_m, c, chunk, clamps)


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


class SubsetPosterior:
    """One Gaussian per subset of modalities, q(z | x_S) for S = 1..K, with mixture weights over subsets.

    Built eagerly from tensors, or lazily by an aggregator (`recipe`): then `members`, `mu` and `logvar` are
    computed on first use, `select` fuses only the subsets drawn and `kl_std_normal` may never build [K, B, D].
    """

    def __init__(self, mu: Tensor | None = None, logvar: Tensor | None = None, members: Tensor | None = None,
                 weight: Tensor | None = None, subsets: Tensor | None = None, recipe=None):
        self._mu, self._logvar, self._members = mu, logvar, members  # [K, B, D], [K, B, D], [K, B, M] bool
        self.weight = weight  # [K, B]: 0 for subsets not valid for a sample; sums to 1 over K
        self.subsets = subsets  # [K, M] bool: the aggregator's subset mask, before availability
        self.recipe = recipe  # an aggregator's lazy builder: .members(), .fuse(members), .kl_std_normal()

    @property
    def members(self) -> Tensor:  # [K, B, M] bool
        """Which observed modalities each subset used, per sample.  # [K, B, M] bool"""
        if self._members is None:
            self._members = self.recipe.members()
        return self._members

    @property
    def mu(self) -> Tensor:  # [K, B, D]
        """Each subset's mean.  # [K, B, D]"""
        if self._mu is None:
            self._mu, self._logvar = self.recipe.fuse(self.members)
        return self._mu

    @property
    def logvar(self) -> Tensor:  # [K, B, D]
        """Each subset's log-variance.  # [K, B, D]"""
        if self._logvar is None:
            self._mu, self._logvar = self.recipe.fuse(self.members)
        return self._logvar

    def select(self, k: Tensor) -> SubsetPosterior:
        """The subsets k [n, B] (one per row and sample), each with weight 1; lazily built ones fuse only these."""
        n, B = k.shape
        ones = torch.ones(n, B, dtype=self.weight.dtype, device=self.weight.device)
        picked = self.recipe.select(k) if self._mu is None and self.recipe is not None else None
        if picked is not None:
            return SubsetPosterior(*picked, ones)
        pick = lambda t: torch.gather(t, 0, k[..., None].expand(n, B, t.shape[-1]))  # noqa: E731
        return SubsetPosterior(pick(self.mu), pick(self.logvar), pick(self.members), ones)

    def kl_std_normal(self) -> Tensor:  # [K, B]
        """KL(q_k || N(0, I)) per subset and sample (by the recipe's fused form where it has one).  # [K, B]"""
        kl = self.recipe.kl_std_normal() if self._mu is None and self.recipe is not None else None
        return kl if kl is not None else kl_std_normal(self.mu, self.logvar)

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
        B, D = self.weight.shape[1], self.mu.shape[-1]
        draws = 1 if n is None else n
        k = torch.multinomial(self.weight.T, draws, replacement=True).T  # [n, B]
        idx = k[..., None].expand(draws, B, D)
        mu = torch.gather(self.mu, 0, idx)
        lv = torch.gather(self.logvar, 0, idx)
        z = rsample(mu, lv)  # [n, B, D]
        return z[0] if n is None else z
