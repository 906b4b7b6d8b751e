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

from ..devices import module_device
from ..gaussian import log_normal, log_std_normal, rsample
from ..validation import fill_gaps, gaps
from .cells import CellSums, summarise
from .decoding import impute_cells
from .subset_batches import as_eval_data, conditioning_subsets, gather_rows, subset_batches


def row_error(imputed: Tensor, true: Tensor, discrete: bool, event_dims: int) -> Tensor:
    """Per-row error: mean squared error per dim over the entries where `true` is not NaN (a sequence's padding),
    or the token mismatch rate for discrete data over the tokens that are not padding (-1).  -> [..., B]"""
    dims = tuple(range(-event_dims, 0))
    if discrete:
        wrong = (imputed != true).float()
        return wrong.masked_fill(true < 0, float("nan")).nanmean(dims) if dims else wrong
    sq = (imputed.float() - true.float()).pow(2)
    return sq.nanmean(dims) if dims else sq


def _is_discrete(model, name: str) -> bool:
    mods = getattr(model, "modalities", None)
    return bool(mods is not None and getattr(mods[name].likelihood, "discrete", False))


def _sample_stats(out: Tensor, true: Tensor, disc: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Error, error of the average imputation, and spread of n imputations of one modality.

    out [n, R, *shape], true [R, *shape] -> three [R]: mean error over the samples; the error of their mean (the
    mode for tokens); the per-dim standard deviation across samples (for tokens: disagreement with the first draw).
    """
    event_dims = true.dim() - 1
    err = row_error(out, true[None], disc, event_dims).mean(0)  # [R]
    if disc:
        mean_imp = out.float().mode(0).values.to(true.dtype)
        spread = (out != out[:1]).float().flatten(2).mean((0, 2))
    else:
        mean_imp = out.float().mean(0)
        spread = out.float().std(0, unbiased=False).flatten(1).mean(1) if out.shape[0] > 1 else \
            torch.zeros(out.shape[1], device=out.device)
    return err, row_error(mean_imp, true, disc, event_dims), spread


def _summaries(cells: dict, stats: tuple[str, ...]) -> dict:
    """{f"{stat}_per_size", f"{stat}_mean"} for each stat, from "S->m" -> {stat: value} cells."""
    out = {}
    for st in stats:
        summary = summarise({key: v[st] for key, v in cells.items()})
        out[f"{st}_per_size"], out[f"{st}_mean"] = summary["per_size"], summary["mean"]
    return out


STATS = ("error", "error_of_mean", "spread")


@torch.no_grad()
def imputation_error(model, dataset, n_samples: int = 10, batch_size: int | None = 20_000) -> dict:
    """For every subset S and every observed m not in S: the error of n_samples imputations of x_m from x_S.

    Per cell "S->m": "error" (mean over samples of the per-dim MSE, or the mismatch rate for tokens),
    "error_of_mean" (error of the average imputation), "spread" (the model's uncertainty: per-dim standard deviation
    across the n samples, averaged). Also per-size and overall means of "error" and "spread".
    """
    names = list(model.names)
    data = as_eval_data(dataset, names)
    dev = module_device(model)
    subsets = conditioning_subsets(len(names))  # [K, M]
    sums = CellSums(subsets, names, STATS)
    for r, k in subset_batches(data.avail, subsets, batch_size and max(1, batch_size // n_samples)):  # [R], [R]
        x = gather_rows(data.data, r, dev)
        use = (~subsets[k]) & data.avail[r]  # [R, M]: m not in S, and its real value known
        gen = impute_cells(model, x, subsets[k].to(dev), use.to(dev), n_samples)  # name -> [n, R_m, *shape]
        sums.add(k, use, **imputation_values(model, gen, x, use))
    return imputation_summary(model, sums, n_samples, len(data))


def imputation_values(model, gen: dict[str, Tensor | None], x: dict[str, Tensor], use: Tensor) -> dict[str, Tensor]:
    """Per-row STATS of the imputations gen (name -> [n, R_m, *shape] for the rows use[:, m], or None), against
    the real x (name -> [R, *shape]).  -> stat -> [R, M] float64, 0 outside `use`"""
    values = {st: torch.zeros(use.shape, dtype=torch.float64) for st in STATS}  # stat -> [R, M]
    for j, m in enumerate(model.names):
        rows = use[:, j]  # [R]
        if gen.get(m) is None or not bool(rows.any()):
            continue
        true = x[m][rows.to(x[m].device)]  # [R_m, *shape]
        disc = _is_discrete(model, m) or not true.is_floating_point()
        for st, v in zip(STATS, _sample_stats(gen[m], true, disc)):
            values[st][rows, j] = v.double().cpu()
    return values


def imputation_summary(model, sums: CellSums, n_samples: int, n_tuples: int) -> dict:
    """imputation_error's dict from its cell sums."""
    cells = sums.means()
    out = {"matrix": cells, **_summaries(cells, ("error", "spread"))}
    out.update(n_samples=n_samples, n_tuples=n_tuples,
               error_metric={m: ("mismatch_rate" if _is_discrete(model, m) else "mse_per_dim") for m in model.names})
    return out


@torch.no_grad()
def importance_terms(model, x: dict[str, Tensor], mask: Tensor, K: int) -> tuple[Tensor, Tensor]:
    """One importance-sampling pass with L = K draws for rows observing `mask` [B, M].

    -> (log v [L, B]: the weights of the module docstring; log p(x_j | z_l, w_j,l) [L, B, M] for every modality j,
    with w_j,l from q(w_j | x_j) for members of the row's subset and from p(w_j) = N(0, I) otherwise). Entries of
    modalities a row does not have are finite but meaningless.
    """
    log_v, ll, _ = importance_pass(model, x, mask, K)
    return log_v, ll


@torch.no_grad()
def importance_pass(model, x: dict[str, Tensor], mask: Tensor, K: int, keep: Tensor | None = None, n_keep: int = 0
                    ) -> tuple[Tensor, Tensor, dict[str, Tensor | None]]:
    """importance_terms, and the decoded means of the first n_keep draws at the cells keep [B, M] (the imputations
    that `conditional_loglik`'s decodes already hold).  -> (log v [L, B], ll [L, B, M], name -> [n_keep, B_m, *shape]
    for the B_m rows with keep[:, m], or None)"""
    post, enc = model.posterior(x, mask)  # gaps (NaN / -1 entries) reach the encoders as gaps
    holes = {n: gaps(t) for n, t in x.items()}
    gappy = torch.stack([h.any() for h in holes.values()]).tolist()  # one host sync
    present = {n: ~h if g else None for (n, h), g in zip(holes.items(), gappy)}  # [B, *shape] scored, or None
    x = {n: fill_gaps(t) if t.is_floating_point() or model.modalities[n].likelihood.discrete else
         fill_gaps(t).float() for n, t in x.items()}  # integer counts are scored as floats
    z = post.sample_component(K)  # [L, B, Ds]
    log_v = model.prior.log_prob(z, enc.experts) - post.log_prob(z)  # [L, B]
    lls, ratios, kept = [], [], {}  # [L, B] per modality
    for j, name in enumerate(model.names):
        w, log_ratio = _private_code(enc, name, mask[:, j], model.private_dims[name], K)
        params = model.decode(name, z, w)  # [L, B, *out]
        lik = model.modalities[name].likelihood
        lls.append(lik.log_prob(params, x[name], present=present[name]))  # [L, B]
        ratios.append(torch.zeros_like(log_v) if log_ratio is None else log_ratio)
        rows = None if keep is None or n_keep == 0 else keep[:, j].nonzero().squeeze(1)  # [B_m]
        kept[name] = lik.mean(params[:n_keep, rows]) if rows is not None and rows.numel() else None
    ll, ratio = torch.stack(lls, -1), torch.stack(ratios, -1)  # [L, B, M]
    log_v = log_v + torch.where(mask[None], ll + ratio, 0.0).sum(-1)
    return log_v, ll, kept


def _private_code(enc, name: str, member: Tensor, d: int, L: int) -> tuple[Tensor | None, Tensor | None]:
    """w_j for rows where j is in the subset (member [B]): w ~ q(w_j | x_j), weighted by p(w) / q(w); elsewhere
    w ~ p(w) = N(0, I) with weight 1. -> (w [L, B, d] or None without a private latent, log weight [L, B] or None)"""
    if d == 0:
        return None, None
    w_prior = torch.randn(L, member.shape[0], d, device=member.device)
    if name not in enc.private:
        return w_prior, None
    mu, lv = enc.private[name]  # [B, d]
    w = torch.where(member[None, :, None], rsample(mu, lv, L), w_prior)
    return w, torch.where(member, log_std_normal(w) - log_normal(w, mu, lv), 0.0)


def _conditional_terms(log_v: Tensor, ll: Tensor) -> tuple[Tensor, Tensor]:
    """log p(x_m | x_S) (module docstring) and the expected NLL of x_m under q, from one importance pass.

    log_v [L, B], ll [L, B, M] -> ([B, M] log sum_l v_l p(x_m | z_l, w_m,l) - log sum_l v_l, [B, M] -mean_l ll)
    """
    log_norm = torch.logsumexp(log_v, 0)  # [B]
    cond = torch.logsumexp(log_v[..., None] + ll, 0) - log_norm[..., None]  # [B, M]
    return cond, -ll.mean(0)


@torch.no_grad()
def conditional_loglik(model, dataset, K: int = 100, batch_size: int | None = 20_000) -> dict:
    """Importance-sampled log p(x_m | x_S) (module docstring) for every subset S and observed m not in S, with K
    samples; per cell "S->m": "loglik" (nats per tuple), "loglik_per_dim", and "nll_per_dim" (the expected
    negative log-likelihood per dim of x_m under z ~ q(z | x_S): the cross-reconstruction error as a likelihood).
    """
    names = list(model.names)
    data = as_eval_data(dataset, names)
    dev = module_device(model)
    subsets = conditioning_subsets(len(names))  # [K, M]
    sums = CellSums(subsets, names, LOGLIK_STATS)
    for r, k in subset_batches(data.avail, subsets, batch_size and max(1, batch_size // K)):  # [B], [B]
        x = gather_rows(data.data, r, dev)
        log_v, ll = importance_terms(model, x, subsets[k].to(dev), K)  # [L, B], [L, B, M] with L = K samples
        cond, nll = _conditional_terms(log_v, ll)  # [B, M], [B, M]
        sums.add(k, (~subsets[k]) & data.avail[r], loglik=cond, nll=nll)  # m not in S, and its real value known
    return loglik_summary(model, sums, data, K)


LOGLIK_STATS = ("loglik", "nll")


def loglik_summary(model, sums: CellSums, data, K: int) -> dict:
    """conditional_loglik's dict from its cell sums: per cell loglik, loglik_per_dim, nll_per_dim; their means."""
    dims = {m: max(1, math.prod(model.modalities[m].shape or data.data[m].shape[1:])) for m in model.names}
    cells = {key: {"loglik": v["loglik"], "loglik_per_dim": v["loglik"] / dims[m], "nll_per_dim": v["nll"] / dims[m]}
             for key, m, v in sums.items()}
    out = {"matrix": cells, **_summaries(cells, ("loglik_per_dim", "nll_per_dim"))}
    out.update(K=K, n_tuples=len(data))
    return out
