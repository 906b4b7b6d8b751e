"""Learned fusion of Gaussian experts: input-dependent precision gates, and low-rank multimodal fusion.

The networks and fusion rules only; `aggregators.Gated` and `aggregators.LowRank` put them behind the subset-mask
mechanism. Each rule takes the members w [K, B, M] of K subsets and fuses all of them at once: no loop over subsets,
samples or modalities. Experts outside w (unobserved, or not in the subset) never reach a subset's posterior.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .gaussian import soft_clamp_logvar

GATE_BOUND = 8.0  # gate logits lie in (-8, 8): a softmax over any subset keeps every exp(g - max) >= e^-16


class GateNet(nn.Module):
    """Per-modality gate logits g_m = B * tanh((W2_m tanh(W1_m [mu_m, logvar_m] + b1_m) + b2_m) / B), B = 8.

    One two-layer network per modality, all M applied by one einsum. The last layer starts at zero, so every gate
    starts equal (the gated product starts as the plain product of experts).  [M, B, D] x 2 -> [M, B, D]
    """

    def __init__(self, M: int, D: int, hidden: int):
        super().__init__()
        bound = 1.0 / math.sqrt(2 * D)  # nn.Linear's default uniform range for 2D inputs
        self.w1 = nn.Parameter(torch.empty(M, 2 * D, hidden).uniform_(-bound, bound))  # [M, 2D, H]
        self.b1 = nn.Parameter(torch.zeros(M, hidden))  # [M, H]
        self.w2 = nn.Parameter(torch.zeros(M, hidden, D))  # [M, H, D]
        self.b2 = nn.Parameter(torch.zeros(M, D))  # [M, D]

    def forward(self, mu: Tensor, logvar: Tensor) -> Tensor:
        """Gate logits of every expert, bounded in (-8, 8).  mu, logvar [M, B, D] -> [M, B, D]"""
        x = torch.cat([mu, logvar], -1).to(self.w1.dtype)  # [M, B, 2D]
        h = torch.tanh(torch.einsum("mbi,mih->mbh", x, self.w1) + self.b1[:, None])  # [M, B, H]
        g = torch.einsum("mbh,mhd->mbd", h, self.w2) + self.b2[:, None]  # [M, B, D]
        return soft_clamp_logvar(g, GATE_BOUND).to(mu.dtype)


def gate_weights(w: Tensor, logits: Tensor, gate: str) -> Tensor:
    """Each member's precision gate a_km = |S_k| softmax_{m in S_k}(g_m) ("softmax") or 2 sigmoid(g_m) ("sigmoid"),
    exactly 0 outside S_k. Materialises [K, B, M, D]: for inspection and tests; `gated_poe` never builds it.
    w [K, B, M] bool, logits [M, B, D] -> [K, B, M, D]"""
    g = logits.permute(1, 0, 2)[None]  # [1, B, M, D]
    inside = w[..., None]  # [K, B, M, 1]
    if gate == "sigmoid":
        return torch.where(inside, 2.0 * torch.sigmoid(g), 0.0)
    e = torch.where(inside, torch.exp(g - g.amax(2, keepdim=True)), 0.0)  # [K, B, M, D]
    n = w.sum(-1, keepdim=True)[..., None].to(e.dtype)  # [K, B, 1, 1]
    return e * (n / e.sum(2, keepdim=True).clamp_min(1e-30))


def gated_poe(w: Tensor, mu: Tensor, logvar: Tensor, logits: Tensor, gate: str,
              prior_expert: bool) -> tuple[Tensor, Tensor]:
    """Product of experts with gated precisions: prec = [1] + sum_{m in S} a_m / var_m, mean = sum_{m in S} a_m mu_m /
    var_m / prec, a as in `gate_weights` (equal gates: a = 1, the plain product).
    w [K, B, M]; mu, logvar, logits [M, B, D] -> (mu, logvar) [K, B, D]"""
    wf = w.to(mu.dtype)  # [K, B, M]
    prec_m = torch.exp(-logvar)  # [M, B, D]
    if gate == "sigmoid":
        a = 2.0 * torch.sigmoid(logits)  # [M, B, D]
        scale = None
    else:  # |S| e_m / sum_{S} e: the normaliser and |S| per subset, by einsums over [K, B, M] x [M, B, D]
        a = torch.exp(logits - logits.amax(0))  # [M, B, D] in [e^-16, 1]: the logits are bounded
        n = wf.sum(-1, keepdim=True)  # [K, B, 1]
        scale = n / torch.einsum("kbm,mbd->kbd", wf, a).clamp_min(1e-30)  # [K, B, D]; 0 for an empty subset
    gp = a * prec_m  # [M, B, D]: gated precisions (up to the per-subset scale)
    prec = torch.einsum("kbm,mbd->kbd", wf, gp)  # [K, B, D]
    num = torch.einsum("kbm,mbd->kbd", wf, gp * mu)
    if scale is not None:
        prec, num = prec * scale, num * scale
    if prior_expert:
        prec = prec + 1.0
    prec = prec.clamp_min(1e-8)  # subsets with no expert (invalid for that sample) stay finite
    return num / prec, -torch.log(prec)


class LowRankFusion(nn.Module):
    """Low-rank multimodal fusion (Liu et al., ACL 2018): f_k = sum_i prod_m W_m^(i) h_m with h_m = [mu_m, logvar_m,
    1] for m in S_k and [0, ..., 0, 1] otherwise; then mu = A f + a, logvar = soft_clamp(C f + c).

    The factors [M, r, 2D + 1, H] start with their constant row at 1, so a modality outside S_k starts as a neutral
    factor of the product.  w [K, B, M], mu, logvar [M, B, D] -> (mu, logvar) [K, B, D]
    """

    def __init__(self, M: int, D: int, rank: int, hidden: int):
        super().__init__()
        factors = torch.randn(M, rank, 2 * D + 1, hidden) * (0.5 / math.sqrt(2 * D))
        factors[:, :, -1] = 1.0  # the appended constant's row
        self.factors = nn.Parameter(factors)  # [M, r, 2D + 1, H]
        self.mu_head, self.logvar_head = nn.Linear(hidden, D), nn.Linear(hidden, D)

    def forward(self, w: Tensor, mu: Tensor, logvar: Tensor) -> tuple[Tensor, Tensor]:
        """Every subset's fused (mu, logvar).  w [K, B, M] bool; mu, logvar [M, B, D] -> [K, B, D] x 2"""
        h = torch.cat([mu, logvar], -1).to(self.factors.dtype)  # [M, B, 2D]
        W, c = self.factors[:, :, :-1], self.factors[:, :, -1]  # [M, r, 2D, H], [M, r, H]
        proj = torch.einsum("mbi,mrih->bmrh", h, W) + c[None]  # [B, M, r, H]: W_m^(i) [h_m, 1]
        per = torch.where(w[..., None, None], proj[None], c[None, None])  # [K, B, M, r, H]: W_m^(i) [0, 1] outside
        f = per.prod(2).sum(2)  # [K, B, H]: sum over rank of the product over modalities
        out_mu, out_lv = self.mu_head(f), soft_clamp_logvar(self.logvar_head(f))
        return out_mu.to(mu.dtype), out_lv.to(mu.dtype)
