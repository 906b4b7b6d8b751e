"""Coherence: do generated modalities carry the label of what they were generated from?

Conditional (MoPoE / MMVAE+ / MultiVae protocol): for every non-empty subset S and every m not in S, impute x_m
from x_S, classify it with modality m's classifier, and compare with the tuple's label. Joint: decode every
modality from one prior draw and count how often all classifiers agree.
"""
from __future__ import annotations

import torch

from ..devices import module_device
from ..errors import InputError
from .cells import CellSums, summarise
from .classifiers import check_accuracy, predict
from .decoding import impute_cells
from .subset_batches import as_eval_data, conditioning_subsets, gather_rows, row_chunks, subset_batches


def conditional_coherence(model, dataset, classifiers: dict, batch_size: int | None = 20_000,
                          n_samples: int = 1, min_accuracy: float | None = 0.8) -> dict:
    """Coherence of x_m ~ p(x_m | x_S) for every subset S (|S| = 1..M-1) and every m not in S.

    batch_size bounds the rows (tuples x subsets x samples) of one impute call; a test set of N tuples needs one call
    per subset size when C(M, s) * N * n_samples <= batch_size. Tuples count for the subsets they observe. Returns
    {"matrix": {"m0+m2->m1": acc}, "per_size": {"1": mean, ...}, "mean" (over all cells), "counts": {"m0+m2->m1":
    tuples scored}, "n_tuples", "n_samples"}. A classifier whose recorded test accuracy is below min_accuracy is
    refused (InputError naming the modality: a weak classifier can score a *higher* coherence than a good one);
    None scores with any.
    """
    names = list(model.names)
    data = as_eval_data(dataset, names)
    if data.labels is None:
        raise InputError("conditional coherence needs class labels, and the dataset has none")
    missing = [m for m in names if m not in classifiers]
    if missing:
        raise InputError(f"no coherence classifier for modality {missing[0]!r}")
    if min_accuracy is not None:
        check_accuracy({m: classifiers[m] for m in names}, min_accuracy)
    dev = module_device(model)
    keep = data.labels >= 0
    if not bool(keep.all()):
        data = data.take(keep.nonzero().squeeze(1))
    subsets = conditioning_subsets(len(names))  # [K, M]
    sums = CellSums(subsets, names, ("hit",), dtype=torch.float32)  # float32 as ever: same numbers
    for r, k in subset_batches(data.avail, subsets, batch_size and max(1, batch_size // n_samples)):  # [R], [R]
        mask = subsets[k]  # [R, M]: each row observes its own subset
        gen = impute_cells(model, gather_rows(data.data, r, dev), mask.to(dev), ~mask.to(dev), n_samples)
        sums.add(k, ~mask, hit=_hits(gen, ~mask, data.labels[r], classifiers, names, n_samples))
    matrix = {key: v["hit"] for key, v in sums.means().items()}
    out = summarise(matrix)
    out.update(n_tuples=len(data), n_samples=n_samples, counts=sums.row_counts())
    return out


def _hits(gen: dict, target: torch.Tensor, y: torch.Tensor, classifiers: dict, names: list[str], n_samples: int
          ) -> torch.Tensor:
    """Fraction of a row's n_samples generations of m that modality m's classifier labels y.

    gen: name -> [n, R', *shape], the generations of the R' rows with target[:, m] (`impute_cells`); target [R, M]
    bool: the cells to score; y [R].  -> [R, M] float, 0 outside `target`
    """
    hits = torch.zeros(target.shape, dtype=torch.float32)  # [R, M]
    for j, m in enumerate(names):
        rows = target[:, j]  # [R]: m is not in the row's S
        if not bool(rows.any()):
            continue
        out = gen[m]  # [n, R', *shape]: only the rows that generate m
        pred = predict(classifiers[m], out.reshape(-1, *out.shape[2:])).view(n_samples, -1).cpu()  # [n, R']
        hits[rows, j] = (pred == y[rows]).float().mean(0)  # [R']
    return hits


def joint_coherence(model, classifiers: dict, n: int = 1000, batch_size: int = 10_000, seed: int | None = None,
                    min_accuracy: float | None = 0.8) -> dict:
    """Fraction of unconditional samples (z from the prior, every modality decoded) on which every modality's
    classifier predicts the same class, and the largest share of the samples that one class takes (by the first
    modality's classifier): agreement means little when most samples fall in one class.
    -> {"joint": fraction, "top_class_share": fraction, "n": n}"""
    names = list(model.names)
    if min_accuracy is not None:
        check_accuracy({m: classifiers[m] for m in names}, min_accuracy)
    if seed is not None:
        torch.manual_seed(seed)
    agree, counts = 0, torch.zeros(0, dtype=torch.long)
    for c in row_chunks(n, batch_size):
        gen = model.sample(c.stop - c.start)
        preds = torch.stack([predict(classifiers[m], gen[m]).cpu() for m in names])  # [M, B]
        agree += int((preds == preds[:1]).all(0).sum())
        hist = torch.bincount(preds[0])
        counts = torch.nn.functional.pad(counts, (0, max(0, len(hist) - len(counts)))) + \
            torch.nn.functional.pad(hist, (0, max(0, len(counts) - len(hist))))
    top = int(counts.max()) / n if n and len(counts) else float("nan")
    return {"joint": agree / n if n else float("nan"), "top_class_share": top, "n": n}
