"""Coherence: do generated modalities carry the label of what they were generated from?

Conditional (MoPoE / MMVAE+ / MultiVae protocol): for every non-empty subset S and every m not in S, impute x_m
from x_S, classify it with modality m's classifier, and compare with the tuple's label. Joint: decode every
modality from one prior draw and count how often all classifiers agree.
"""
from __future__ import annotations

import torch

from ..errors import InputError
from .classifiers import predict
from .subset_batches import (as_eval_data, gather_rows, model_device, pair_key, row_chunks, subset_rows,
                             subsets_by_size)


def _cell_means(sums: torch.Tensor, counts: torch.Tensor, subsets: torch.Tensor, names: list[str]) -> dict:
    """Per (S, m) means from sums/counts [K, M], for m not in S and counts > 0."""
    out = {}
    for k, s in enumerate(subsets):
        for j, m in enumerate(names):
            if not s[j] and counts[k, j] > 0:
                out[pair_key(s, m, names)] = float(sums[k, j] / counts[k, j])
    return out


def summarise(matrix: dict[str, float]) -> dict:
    """{"matrix", "per_size": {|S|: mean over its (S, m) cells}, "mean": mean over all cells} from "S->m" keys."""
    by_size: dict[int, list[float]] = {}
    for key, v in matrix.items():
        by_size.setdefault(key.split("->")[0].count("+") + 1, []).append(v)
    per_size = {str(s): sum(v) / len(v) for s, v in sorted(by_size.items())}
    values = list(matrix.values())
    return {"matrix": matrix, "per_size": per_size, "mean": sum(values) / len(values) if values else float("nan")}


def conditional_coherence(model, dataset, classifiers: dict, batch_size: int | None = 20_000,
                          n_samples: int = 1) -> dict:
    """Coherence of x_m ~ p(x_m | x_S) for every subset S (|S| = 1..M-1) and every m not in S.

    batch_size bounds the rows (tuples x subsets x samples) of one impute call; a test set of N tuples needs one call
    per subset size when C(M, s) * N * n_samples <= batch_size. Tuples count for the subsets they observe. Returns
    {"matrix": {"m0+m2->m1": acc}, "per_size": {"1": mean, ...}, "mean" (over all cells), "counts": {"m0+m2->m1":
    tuples scored}, "n_tuples", "n_samples"}.
    """
    names = list(model.names)
    data = as_eval_data(dataset, names)
    if data.labels is None:
        raise InputError("conditional coherence needs class labels, and the dataset has none")
    missing = [m for m in names if m not in classifiers]
    if missing:
        raise InputError(f"no coherence classifier for modality {missing[0]!r}")
    M, dev = len(names), model_device(model)
    keep = data.labels >= 0
    if not bool(keep.all()):
        data = data.take(keep.nonzero().squeeze(1))
    matrix, n_cell = {}, {}
    for size, subsets in subsets_by_size(M, range(1, M)).items():
        rows, sub = subset_rows(data.avail, subsets)  # [R], [R]
        sums = torch.zeros(len(subsets), M)
        counts = torch.zeros(len(subsets), M)
        for c in row_chunks(len(rows), batch_size and max(1, batch_size // n_samples)):
            r, k = rows[c], sub[c]
            x = gather_rows(data.data, r, dev)
            mask = subsets[k].to(dev)  # [R, M]: each row observes its own subset
            gen = model.impute(x, targets=names, n_samples=n_samples, avail=mask)
            y = data.labels[r]
            for j, m in enumerate(names):
                target = ~subsets[k, j]  # [R]: m is not in the row's S
                if not bool(target.any()):
                    continue
                out = gen[m] if n_samples > 1 else gen[m][None]  # [n, R, *shape]
                out = out[:, target.to(out.device)]  # [n, R', *shape]: only the rows that generate m
                pred = predict(classifiers[m], out.reshape(-1, *out.shape[2:])).view(n_samples, -1).cpu()
                hit = (pred == y[target]).float().mean(0)  # [R']
                sums[:, j].index_add_(0, k[target], hit)
                counts[:, j].index_add_(0, k[target], torch.ones(len(hit)))
        matrix.update(_cell_means(sums, counts, subsets, names))
        n_cell.update({key: int(v) for key, v in _cell_means(counts, torch.ones_like(counts), subsets, names).items()})
    out = summarise(matrix)
    out.update(n_tuples=len(data), n_samples=n_samples, counts=n_cell)
    return out


def joint_coherence(model, classifiers: dict, n: int = 1000, batch_size: int = 10_000, seed: int | None = None
                    ) -> dict:
    """Fraction of unconditional samples (z from the prior, every modality decoded) on which every modality's
    classifier predicts the same class.  -> {"joint": fraction, "n": n}"""
    names = list(model.names)
    if seed is not None:
        torch.manual_seed(seed)
    agree = 0
    for c in row_chunks(n, batch_size):
        gen = model.sample(c.stop - c.start)
        preds = torch.stack([predict(classifiers[m], gen[m]).cpu() for m in names])  # [M, B]
        agree += int((preds == preds[:1]).all(0).sum())
    return {"joint": agree / n if n else float("nan"), "n": n}
