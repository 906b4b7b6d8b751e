"""Shared/private disentanglement on data with known factors: how much of each factor each latent block predicts.

R^2 of a least-squares linear regression (with intercept) from a block to a factor, fit on training rows and scored
on held-out rows; a multi-dimensional factor's R^2 is the mean over its dimensions (scikit-learn's
`r2_score(multioutput="uniform_average")`). A good model reaches R^2 near 1 from the shared block to the shared
factor and from block "private/m" to factor "m", and near 0 off that pattern.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..devices import module_device
from .subset_batches import as_eval_data, gather_rows, row_chunks


def _design(x: Tensor) -> Tensor:
    """[N, d] -> [N, d + 1] with a column of ones (the intercept)."""
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], 1)


def r2_score(x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, ridge: float = 1e-6) -> float:
    """Held-out R^2 of y [N, k] regressed linearly on x [N, d] (with intercept), averaged over y's dims.

    `ridge` (relative to the mean diagonal of X^T X) only keeps rank-deficient blocks solvable."""
    X, Y = _design(x_train.double()), y_train.double().reshape(len(y_train), -1)
    gram = X.T @ X
    gram = gram + ridge * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    beta = torch.linalg.solve(gram, X.T @ Y)  # [d + 1, k]
    Yt = y_test.double().reshape(len(y_test), -1)
    pred = _design(x_test.double()) @ beta
    ss_res = (Yt - pred).pow(2).sum(0)
    ss_tot = (Yt - Yt.mean(0)).pow(2).sum(0)
    r2 = torch.where(ss_tot > 0, 1 - ss_res / ss_tot.clamp_min(1e-300), torch.zeros_like(ss_tot))
    return float(r2.mean())


def r2_table(blocks: dict[str, Tensor], factors: dict[str, Tensor], test_blocks: dict[str, Tensor] | None = None,
             test_factors: dict[str, Tensor] | None = None, seed: int = 0) -> dict[str, dict[str, float]]:
    """R^2 from every latent block [N, d] to every factor [N, k]: table[block][factor].

    With test_blocks/test_factors, fit on (blocks, factors) and score on the test ones; otherwise fit on a random
    half of the rows and score on the other half."""
    if test_blocks is None:
        n = next(iter(blocks.values())).shape[0]
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        a, b = perm[: n // 2], perm[n // 2:]
        test_blocks = {k: v[b] for k, v in blocks.items()}
        test_factors = {k: v[b] for k, v in factors.items()}
        blocks = {k: v[a] for k, v in blocks.items()}
        factors = {k: v[a] for k, v in factors.items()}
    return {bname: {fname: r2_score(blocks[bname], f, test_blocks[bname], test_factors[fname])
                    for fname, f in factors.items()} for bname in blocks}


@torch.no_grad()
def latent_blocks(model, data, batch_size: int | None = 20_000) -> dict[str, Tensor]:
    """Posterior means from every observed modality: {"shared": [N, Ds], "private/m": [N, Dm]} (rows with all
    modalities observed only make sense here; the caller selects them)."""
    dev = module_device(model)
    out: dict[str, list[Tensor]] = {}
    for c in row_chunks(len(data), batch_size):
        emb = model.embed(gather_rows(data.data, torch.arange(c.start, c.stop), dev), avail=data.avail[c].to(dev))
        out.setdefault("shared", []).append(emb["shared"].float().cpu())
        for m, v in emb.get("private", {}).items():
            out.setdefault(f"private/{m}", []).append(v.float().cpu())
    return {k: torch.cat(v) for k, v in out.items()}


def latent_disentanglement(model, train, test, n_train: int | None = None, seed: int = 0) -> dict:
    """The R^2 table from the latent blocks (shared, private/m) to the dataset's factors, fit on the training
    tuples with every modality observed (n_train of them, None: all) and scored on the complete test tuples.

    -> {"r2": {block: {factor: R^2}}, "n_train", "n_test"}"""
    names = list(model.names)
    tr, te = as_eval_data(train, names), as_eval_data(test, names)
    if tr.factors is None or te.factors is None:
        raise ValueError("disentanglement needs a dataset with known factors (targets as a dict of tensors)")
    tr = tr.take(tr.avail.all(1).nonzero().squeeze(1))
    te = te.take(te.avail.all(1).nonzero().squeeze(1))
    tr = as_eval_data(tr, names, n=n_train, seed=seed)
    table = r2_table(latent_blocks(model, tr), tr.factors, latent_blocks(model, te), te.factors)
    return {"r2": table, "n_train": len(tr), "n_test": len(te)}
