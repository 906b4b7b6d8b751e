"""Imputation quality: how close x_m imputed from x_S is to the real x_m, how unsure the model is, and an
importance-sampled estimate of the conditional log-likelihood log p(x_m | x_S).

Estimator: with z_k ~ q(z | x_S), w_s,k ~ q(w_s | x_s) for s in S, w_m,k ~ p(w_m) = N(0, I), and importance weights
v_k = p(z_k) prod_{s in S} p(x_s | z_k, w_s,k) p(w_s,k) / q(w_s,k | x_s) / q(z_k | x_S),
    log p(x_m | x_S) ~= log sum_k v_k p(x_m | z_k, w_m,k) - log sum_k v_k,
a self-normalised estimate of E_{p(z, w | x_S)}[p(x_m | z, w_m)] = p(x_m | x_S): the ratio of the importance-
sampled p(x_m, x_S) and p(x_S) on the same K draws; consistent as K grows (for small K it is not a bound).
p(z) is the model's prior: for a data-dependent prior (MM-VAMP) that is h(z | x_S), so read those numbers as the
model's own predictive score rather than a likelihood under a fixed generative model.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..gaussian import log_normal
from .coherence import summarise
from .subset_batches import (as_eval_data, gather_rows, model_device, pair_key, row_chunks, subset_rows,
                             subsets_by_size)


def _error(imputed: Tensor, true: Tensor, discrete: bool, event_dims: int) -> Tensor:
    """Per-row error: mean squared error per dim, or the token mismatch rate for discrete data.  -> [..., B]"""
    dims = tuple(range(-event_dims, 0))
    if discrete:
        wrong = (imputed != true).float()
        return wrong.mean(dims) if dims else wrong
    sq = (imputed.float() - true.float()).pow(2)
    return sq.mean(dims) if dims else sq


def _is_discrete(model, name: str) -> bool:
    mods = getattr(model, "modalities", None)
    return bool(mods is not None and getattr(mods[name].likelihood, "discrete", False))


@torch.no_grad()
def imputation_error(model, dataset, n_samples: int = 10, batch_size: int | None = 20_000) -> dict:
    """For every subset S and every observed m not in S: the error of n_samples imputations of x_m from x_S.

    Per cell "S->m": "error" (mean over samples of the per-dim MSE, or the mismatch rate for tokens),
    "error_of_mean" (error of the average imputation), "spread" (the model's uncertainty: per-dim standard deviation
    across the n samples, averaged). Also per-size and overall means of "error" and "spread".
    """
    names = list(model.names)
    data = as_eval_data(dataset, names)
    M, dev = len(names), model_device(model)
    stats = ("error", "error_of_mean", "spread")
    cells: dict[str, dict[str, float]] = {}
    for size, subsets in subsets_by_size(M, range(1, M)).items():
        rows, sub = subset_rows(data.avail, subsets)
        sums = torch.zeros(len(stats), len(subsets), M, dtype=torch.float64)
        counts = torch.zeros(len(subsets), M, dtype=torch.float64)
        for c in row_chunks(len(rows), batch_size and max(1, batch_size // n_samples)):
            r, k = rows[c], sub[c]
            x = gather_rows(data.data, r, dev)
            gen = model.impute(x, targets=names, n_samples=n_samples, avail=subsets[k].to(dev))
            for j, m in enumerate(names):
                use = (~subsets[k, j]) & data.avail[r, j]  # m not in S, and its real value known
                if not bool(use.any()):
                    continue
                out = gen[m] if n_samples > 1 else gen[m][None]  # [n, R, *shape]
                true = x[m]
                disc = _is_discrete(model, m) or not true.is_floating_point()
                err = _error(out, true[None], disc, true.dim() - 1).mean(0)  # [R]
                if disc:
                    mean_imp = out.float().mode(0).values.to(true.dtype)
                    spread = (out != out[:1]).float().flatten(2).mean((0, 2))  # disagreement with the first draw
                else:
                    mean_imp = out.float().mean(0)
                    spread = out.float().std(0, unbiased=False).flatten(1).mean(1) if n_samples > 1 else \
                        torch.zeros(out.shape[1], device=out.device)
                err_mean = _error(mean_imp, true, disc, true.dim() - 1)
                kk = k[use]
                for s, v in enumerate((err, err_mean, spread)):
                    sums[s, :, j].index_add_(0, kk, v[use.to(v.device)].double().cpu())
                counts[:, j].index_add_(0, kk, torch.ones(len(kk), dtype=torch.float64))
        for kk, s in enumerate(subsets):
            for j, m in enumerate(names):
                if not s[j] and counts[kk, j] > 0:
                    cells[pair_key(s, m, names)] = {st: float(sums[i, kk, j] / counts[kk, j])
                                                    for i, st in enumerate(stats)}
    out = {"matrix": cells}
    for st in ("error", "spread"):
        summary = summarise({key: v[st] for key, v in cells.items()})
        out[f"{st}_per_size"], out[f"{st}_mean"] = summary["per_size"], summary["mean"]
    out.update(n_samples=n_samples, n_tuples=len(data),
               error_metric={m: ("mismatch_rate" if _is_discrete(model, m) else "mse_per_dim") for m in names})
    return out


def _mixture_log_q(z: Tensor, post) -> Tensor:
    """log q(z | x_S) under the subset posterior's mixture.  z [K, B, D] -> [K, B]"""
    lw = torch.log(post.weight.clamp_min(1e-30))  # [Ks, B]
    comp = torch.stack([log_normal(z, post.mu[s], post.logvar[s]) for s in range(post.mu.shape[0])], 1)  # [K,Ks,B]
    comp = torch.where(post.valid[None], comp + lw[None], -math.inf)
    return torch.logsumexp(comp, 1)


@torch.no_grad()
def importance_terms(model, x: dict[str, Tensor], mask: Tensor, K: int) -> tuple[Tensor, Tensor]:
    """One importance-sampling pass for rows observing `mask` [B, M].

    -> (log v [K, B]: the weights of the module docstring; log p(x_j | z_k, w_j,k) [K, B, M] for every modality j,
    with w_j,k from q(w_j | x_j) for members of the row's subset and from p(w_j) otherwise). Entries of modalities a
    row does not have are finite but meaningless.
    """
    x = {n: torch.nan_to_num(t) if t.is_floating_point() else t for n, t in x.items()}
    post, enc = model.posterior(x, mask)
    z = post.sample_component(K)  # [K, B, Ds]
    log_v = model.prior.log_prob(z, enc.experts) - _mixture_log_q(z, post)  # [K, B]
    lls, ratios = [], []  # [K, B] per modality
    for j, name in enumerate(model.names):
        member = mask[:, j]  # [B]
        d = model.private_dims[name]
        w, log_ratio = None, torch.zeros_like(log_v)
        if d > 0:  # members: w ~ q(w | x_j) with weight p(w) / q(w); others: w ~ p(w) = N(0, I), weight 1
            w_prior = torch.randn(K, mask.shape[0], d, device=z.device)
            if name in enc.private:
                mu, lv = enc.private[name]
                w_post = mu + (0.5 * lv).exp() * torch.randn_like(w_prior)
                w = torch.where(member[None, :, None], w_post, w_prior)
                log_ratio = torch.where(member, log_normal(w, 0 * w, 0 * w) - log_normal(w, mu, lv), 0.0)
            else:
                w = w_prior
        params = model.decode(name, z, w)  # [K, B, *out]
        ll = model.modalities[name].likelihood.log_prob(params, x[name])  # [K, B]
        lls.append(ll)
        ratios.append(log_ratio)
    ll, ratio = torch.stack(lls, -1), torch.stack(ratios, -1)  # [K, B, M]
    log_v = log_v + torch.where(mask[None], ll + ratio, 0.0).sum(-1)
    return log_v, ll


@torch.no_grad()
def conditional_loglik(model, dataset, K: int = 100, batch_size: int | None = 20_000) -> dict:
    """Importance-sampled log p(x_m | x_S) (module docstring) for every subset S and observed m not in S, with K
    samples; per cell "S->m": "loglik" (nats per tuple), "loglik_per_dim", and "nll_per_dim" (the expected
    negative log-likelihood per dim of x_m under z ~ q(z | x_S): the cross-reconstruction error as a likelihood).
    """
    names = list(model.names)
    data = as_eval_data(dataset, names)
    M, dev = len(names), model_device(model)
    dims = {m: max(1, math.prod(model.modalities[m].shape or data.data[m].shape[1:])) for m in names}
    cells = {}
    for size, subsets in subsets_by_size(M, range(1, M)).items():
        rows, sub = subset_rows(data.avail, subsets)
        sums = torch.zeros(2, len(subsets), M, dtype=torch.float64)
        counts = torch.zeros(len(subsets), M, dtype=torch.float64)
        for c in row_chunks(len(rows), batch_size and max(1, batch_size // K)):
            r, k = rows[c], sub[c]
            x = gather_rows(data.data, r, dev)
            mask = subsets[k].to(dev)
            log_v, ll = importance_terms(model, x, mask, K)  # [K, B], [K, B, M]
            log_norm = torch.logsumexp(log_v, 0)  # [B]
            cond = torch.logsumexp(log_v[..., None] + ll, 0) - log_norm[..., None]  # [B, M]
            nll = -ll.mean(0)  # [B, M]
            use = (~subsets[k]) & data.avail[r]  # [B, M]: m not in S, and its real value known
            sums[0].index_add_(0, k, torch.where(use, cond.double().cpu(), 0.0))
            sums[1].index_add_(0, k, torch.where(use, nll.double().cpu(), 0.0))
            counts.index_add_(0, k, use.double())
        for kk, s in enumerate(subsets):
            for j, m in enumerate(names):
                if not s[j] and counts[kk, j] > 0:
                    ll = float(sums[0, kk, j] / counts[kk, j])
                    cells[pair_key(s, m, names)] = {"loglik": ll, "loglik_per_dim": ll / dims[m],
                                                    "nll_per_dim": float(sums[1, kk, j] / counts[kk, j]) / dims[m]}
    out = {"matrix": cells}
    for st in ("loglik_per_dim", "nll_per_dim"):
        summary = summarise({key: v[st] for key, v in cells.items()})
        out[f"{st}_per_size"], out[f"{st}_mean"] = summary["per_size"], summary["mean"]
    out.update(K=K, n_tuples=len(data))
    return out
