"""Sequence modalities in evaluation: per-sample [T, C] floats, time first, variable length as NaN padding at the end
(a padded step has every channel NaN).

What is here: which modalities are sequences, the valid-step mask, the temporal conv classifier that coherence uses
for them, and the imputation error per time step,

    mse_t(S -> m) = sum_{n, i, c} v_itc (x^n_itc - x_itc)^2 / (n sum_{i, c} v_itc),   v_itc = [x_itc is not NaN],

over the n imputations x^n of the rows i that score the cell; the whole-sequence error pools every valid entry.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..devices import module_device
from .decoding import impute_cells
from .subset_batches import as_eval_data, conditioning_subsets, gather_rows, pair_key, subset_batches

MIN_STEPS = 8  # a [T, C] modality with T >= MIN_STEPS is a sequence; shorter 2-d ones stay vectors for the MLP


def is_sequence(shape) -> bool:
    """Whether a per-sample shape is a sequence [T, C] (T >= MIN_STEPS); images are [C, H, W], vectors [D]."""
    return len(shape) == 2 and int(shape[0]) >= MIN_STEPS


def sequence_modalities(data) -> list[str]:
    """The float sequence modalities [T, C] of an EvalData (or anything `as_eval_data` reads), in its order."""
    data = as_eval_data(data)
    return [m for m in data.names if data.data[m].is_floating_point() and is_sequence(data.data[m].shape[1:])]


def valid_steps(x: Tensor) -> Tensor:
    """The steps that are not padding (some channel not NaN).  x [..., T, C] -> [..., T] bool"""
    return ~x.isnan().all(-1)


class TemporalNet(nn.Module):
    """Sequences [B, T, C] -> zero-filled padding, a stack of dilated Conv1d over time (channels = C) with the padded
    steps zeroed again after every layer (so the logits do not depend on how much padding follows), mean and max
    pooled over the valid steps only, a linear head.  -> logits [B, num_classes]"""

    def __init__(self, in_channels: int, hidden: int, num_classes: int, width: int = 5, layers: int = 3):
        super().__init__()
        convs: list[nn.Module] = []
        for i in range(layers):
            d = 2 ** i  # receptive field 1 + (width - 1)(2^layers - 1) steps
            convs += [nn.Conv1d(in_channels if i == 0 else hidden, hidden, width, padding=d * (width // 2),
                                dilation=d), nn.ReLU()]
        self.convs = nn.Sequential(*convs)
        self.head = nn.Linear(2 * hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """x [B, T, C] float (NaN-padded) -> logits [B, num_classes]."""
        keep = valid_steps(x)  # [B, T]
        w = keep[:, None, :].to(x.dtype)  # [B, 1, T]
        h = torch.nan_to_num(x).transpose(1, 2)  # [B, C, T]
        for layer in self.convs:
            h = layer(h) * w if isinstance(layer, nn.Conv1d) else layer(h)  # [B, hidden, T], padding zero
        mean = (h * w).sum(-1) / w.sum(-1).clamp_min(1)  # [B, hidden]
        top = h.masked_fill(~keep[:, None, :], float("-inf")).amax(-1)  # [B, hidden]
        top = torch.where(keep.any(1, keepdim=True), top, torch.zeros_like(top))  # an all-padding row: zeros
        return self.head(F.relu(torch.cat([mean, top], 1)))


def step_error_sums(imputed: Tensor, true: Tensor) -> tuple[Tensor, Tensor]:
    """Squared error summed over samples and channels per row and step, and how many entries it sums (NaN entries
    of `true` excluded).  imputed [n, R, T, C], true [R, T, C] -> (sum [R, T], count [R, T]) float64"""
    keep = ~true.isnan()  # [R, T, C]
    sq = torch.where(keep[None], (imputed.double() - torch.nan_to_num(true).double()) ** 2, 0.0)  # [n, R, T, C]
    return sq.sum((0, 3)), keep.double().sum(-1) * imputed.shape[0]


@torch.no_grad()
def sequence_imputation_error(model, dataset, n_samples: int = 10, batch_size: int | None = 20_000,
                              modalities: list[str] | None = None) -> dict:
    """The imputation MSE per time step (module docstring) of every sequence modality m from every subset S not
    holding it.  -> {"matrix": {"S->m": {"per_step": [T], "mse": whole-sequence}}, "per_step_per_size":
    {m: {|S|: mean curve over its cells}}, "mse_per_size": {m: {|S|: ...}}, "n_samples", "n_tuples"}; a step no
    row reaches (all padding) is NaN."""
    names = list(model.names)
    data = as_eval_data(dataset, names)
    seqs = sequence_modalities(data) if modalities is None else list(modalities)
    dev = module_device(model)
    subsets = conditioning_subsets(len(names))  # [K, M]
    cols = torch.tensor([names.index(m) for m in seqs], dtype=torch.long)
    sums = {m: torch.zeros(len(subsets), data.data[m].shape[1], dtype=torch.float64) for m in seqs}  # [K, T]
    counts = {m: torch.zeros_like(s) for m, s in sums.items()}
    for r, k in subset_batches(data.avail, subsets, batch_size and max(1, batch_size // n_samples)):  # [R], [R]
        use = torch.zeros_like(data.avail[r])  # [R, M]: sequence m not in S, and its real value known
        use[:, cols] = (~subsets[k][:, cols]) & data.avail[r][:, cols]
        if not bool(use.any()):
            continue
        x = gather_rows(data.data, r, dev)
        gen = impute_cells(model, x, subsets[k].to(dev), use.to(dev), n_samples)  # name -> [n, R_m, T, C]
        for m in seqs:
            rows = use[:, names.index(m)]  # [R]
            if gen.get(m) is None:
                continue
            s, c = step_error_sums(gen[m].cpu(), x[m][rows.to(x[m].device)].cpu())  # [R_m, T] each
            sums[m].index_add_(0, k[rows], s)
            counts[m].index_add_(0, k[rows], c)
    return _summary(subsets, names, sums, counts, n_samples, len(data))


def _summary(subsets: Tensor, names: list[str], sums: dict, counts: dict, n_samples: int, n_tuples: int) -> dict:
    """sequence_imputation_error's dict from its [K, T] sums and counts per modality."""
    matrix, per_size, mse_size = {}, {}, {}
    for m in sums:
        scored = counts[m].sum(1) > 0  # [K]
        curves = sums[m] / counts[m]  # [K, T], NaN where no entry
        whole = sums[m].sum(1) / counts[m].sum(1)  # [K]
        by_size: dict[str, list] = {}
        for k in scored.nonzero().squeeze(1).tolist():
            matrix[pair_key(subsets[k], m, names)] = {"per_step": curves[k].tolist(), "mse": float(whole[k])}
            by_size.setdefault(str(int(subsets[k].sum())), []).append(k)
        per_size[m] = {s: curves[ks].mean(0).tolist() for s, ks in by_size.items()}
        mse_size[m] = {s: float(whole[ks].mean()) for s, ks in by_size.items()}
    return {"matrix": matrix, "per_step_per_size": per_size, "mse_per_size": mse_size, "n_samples": n_samples,
            "n_tuples": n_tuples}
