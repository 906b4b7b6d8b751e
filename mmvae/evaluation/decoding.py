"""Imputations decoded only where a metric reads them.

`model.impute(x, targets=names, avail=mask)` decodes every modality for every (subset, tuple) row, but a conditional
metric scores x_m only on the rows whose subset S leaves m out: sum_s C(M, s) (M - s) of the C(M, s) M decodes (75 of
150 at M = 5). `impute_cells` draws exactly what `impute` draws (same order, same seed, same numbers) and decodes
only the cells asked for.
"""
from __future__ import annotations

import torch
from torch import Tensor

VERBS = ("posterior", "decode", "private_sample", "modalities")


@torch.no_grad()
def impute_cells(model, x: dict[str, Tensor], mask: Tensor, need: Tensor, n_samples: int = 1
                 ) -> dict[str, Tensor | None]:
    """Means of p(x_m | z, w_m), z ~ q(z | x_S), for the cells need [R, M] of rows observing mask [R, M].

    -> name -> [n, R_m, *shape] for the R_m rows with need[:, m] (in row order), None where no row needs m; equal to
    model.impute(x, targets=names, n_samples, avail=mask)[m][..., need[:, m]] under the same seed. A model without
    the verbs posterior/decode/private_sample is asked through `impute` (and decodes every cell).
    """
    names = list(model.names)
    rows = [need[:, j].nonzero().squeeze(1) for j in range(len(names))]  # per modality: [R_m] row indices
    if not all(hasattr(model, a) for a in VERBS):
        gen = model.impute(x, targets=names, n_samples=n_samples, avail=mask)
        return {m: _lead(gen[m], n_samples)[:, r.to(gen[m].device)] if r.numel() else None
                for m, r in zip(names, rows)}
    post, enc = model.posterior(x, mask)
    z = post.sample_component(n_samples)  # [n, R, Ds]
    out = {}
    for j, name in enumerate(names):
        own = enc.experts.avail[:, j][None].expand(n_samples, -1)  # [n, R]: members decode from their own code
        draw = model.private_sample(name, enc, own, 1)  # drawn for every row, as impute does: the same RNG stream
        r = rows[j].to(z.device)
        if r.numel() == 0:
            out[name] = None
            continue
        w = None if draw is None else draw.w[0][:, r]  # [n, R_m, Dm]
        out[name] = model.modalities[name].likelihood.mean(model.decode(name, z[:, r], w))  # [n, R_m, *shape]
    return out


def _lead(t: Tensor, n_samples: int) -> Tensor:
    """impute's output with its sample axis: [n, R, *shape] (impute drops it when n_samples == 1)."""
    return t if n_samples > 1 else t[None]
