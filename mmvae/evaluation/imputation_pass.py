"""Both imputation metrics from one importance pass: the conditional log-likelihood's K draws z_k ~ q(z | x_S) are
decoded for every modality anyway, so the first n of them, decoded at m not in S, are n imputations of x_m.

Same estimators as `imputation_error(n_samples=n)` and `conditional_loglik(K)` (imputation.py): z_1..z_n are iid
draws from q(z | x_S), and the private codes of modalities outside S come from N(0, I) in both, which is the
model's private prior whenever that prior is not learned (`shares_draws`). One posterior and K M decodes per (subset,
tuple) row instead of one posterior and n M decodes more for the imputations. With n = K and no private latents the
numbers equal the two separate calls under the same seed (tests/test_eval_shared.py).
"""
from __future__ import annotations

import torch

from ..devices import module_device
from .cells import CellSums
from .decoding import VERBS
from .imputation import (
    LOGLIK_STATS,
    STATS,
    _conditional_terms,
    importance_pass,
    imputation_summary,
    imputation_values,
    loglik_summary,
)
from .subset_batches import as_eval_data, conditioning_subsets, gather_rows, subset_batches


def shares_draws(model, n_samples: int, K: int) -> bool:
    """Whether n_samples imputations can be K draws' first n: n <= K, a model with a posterior and a prior, and every
    private prior r(w_m) equal to N(0, I) (not learned), the importance sampler's draw for w_m outside S."""
    if n_samples > K or not all(hasattr(model, a) for a in (*VERBS, "prior", "private_dims")):
        return False
    logvars = getattr(model, "private_prior_logvar", None) or {}
    return all(not bool(p.detach().any()) for p in logvars.values())


@torch.no_grad()
def imputation_with_loglik(model, dataset, n_samples: int = 10, K: int = 50, batch_size: int | None = 20_000
                           ) -> dict:
    """imputation_error(model, dataset, n_samples) with its "conditional_loglik" = conditional_loglik(model,
    dataset, K), from one pass (module docstring); needs shares_draws(model, n_samples, K)."""
    if not shares_draws(model, n_samples, K):
        raise ValueError("imputation_with_loglik: the imputations cannot share the log-likelihood's draws")
    names = list(model.names)
    data = as_eval_data(dataset, names)
    dev = module_device(model)
    subsets = conditioning_subsets(len(names))  # [K_S, M]
    imp, ll = CellSums(subsets, names, STATS), CellSums(subsets, names, LOGLIK_STATS)
    for r, k in subset_batches(data.avail, subsets, batch_size and max(1, batch_size // K)):  # [B], [B]
        x = gather_rows(data.data, r, dev)
        use = (~subsets[k]) & data.avail[r]  # [B, M]: m not in S, and its real value known
        log_v, lls, gen = importance_pass(model, x, subsets[k].to(dev), K, use.to(dev), n_samples)  # [L, B], ...
        cond, nll = _conditional_terms(log_v, lls)  # [B, M], [B, M]
        ll.add(k, use, loglik=cond, nll=nll)
        imp.add(k, use, **imputation_values(model, gen, x, use))
    out = imputation_summary(model, imp, n_samples, len(data))
    out["conditional_loglik"] = loglik_summary(model, ll, data, K)
    return out
