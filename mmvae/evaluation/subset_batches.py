"""Tensors for evaluation, and every (subset, tuple) pair of a subset size laid out as rows of one batch.

Evaluators never loop over samples: for a subset size s, the C(M, s) subsets and the N tuples become one batch of
[C(M, s) * N] rows (the tuples repeated once per subset), each row with its own availability mask, so a single
call of a model verb (`impute`, `embed`, `posterior`) handles every subset of that size at once. `max_rows` only
splits that batch into chunks to bound memory; `subset_batches` walks every size's chunks.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..aggregators import all_subsets, subset_names
from ..errors import InputError


@dataclass
class EvalData:
    """What the evaluators read from a dataset, in the model's modality order."""

    data: dict[str, Tensor]  # name -> [N, *shape]
    avail: Tensor  # [N, M] bool
    names: list[str]
    labels: Tensor | None = None  # [N] long, or None without class labels
    factors: dict[str, Tensor] | None = field(default=None)  # name -> [N, k] float, or None
    num_classes: int | None = None

    def __len__(self) -> int:
        return self.avail.shape[0]

    def take(self, idx: Tensor) -> EvalData:
        """The rows idx [n] as a new EvalData."""
        return EvalData({k: v[idx] for k, v in self.data.items()}, self.avail[idx], self.names,
                        None if self.labels is None else self.labels[idx],
                        None if self.factors is None else {k: v[idx] for k, v in self.factors.items()},
                        self.num_classes)


def read_dataset(dataset, names: list[str] | None = None, n: int | None = None, seed: int = 0,
                 batch_size: int = 256, num_workers: int = 0) -> EvalData:
    """A torch `Dataset` yielding `(x dict, avail [M], y)` read into memory through a DataLoader: all its samples,
    or n random ones. y: a class label (int or 0-d tensor; -1 = unlabelled), a dict of factors, or None."""
    from torch.utils.data import DataLoader, Subset

    if n is not None and n < len(dataset):
        dataset = Subset(dataset, torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n]
                         .sort().values.tolist())
    parts = list(DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate_none_labels,
                            generator=torch.Generator().manual_seed(seed)))  # its own: the global RNG untouched
    if not parts:
        raise InputError("the evaluation Dataset has no samples")
    keys = list(parts[0][0])
    names = list(names) if names is not None else keys
    missing = [m for m in names if m not in keys]
    if missing:
        raise InputError(f"the Dataset's samples have no modality {missing[0]!r} (they have {keys}); the model "
                         f"needs {names}")
    data = {m: torch.cat([p[0][m] for p in parts]) for m in names}
    avail = torch.cat([p[1] for p in parts]).bool()[:, [keys.index(m) for m in names]]  # [N, M]
    ys = [p[2] for p in parts]
    labels = factors = None
    if isinstance(ys[0], dict):
        factors = {k: torch.cat([y[k] for y in ys]).reshape(len(avail), -1).float() for k in ys[0]}
    elif ys[0] is not None:
        labels = torch.cat([torch.as_tensor(y).reshape(-1) for y in ys]).long()  # [N]
        labels = labels if int(labels.max()) >= 0 else None
    num_classes = int(labels.max()) + 1 if labels is not None else None
    return EvalData(data, avail, names, labels, factors, getattr(dataset, "num_classes", None) or num_classes)


def _collate_none_labels(batch):
    """default_collate, except that samples without a label (y None) give y None."""
    from torch.utils.data import default_collate

    if batch[0][2] is None:
        return (*default_collate([b[:2] for b in batch]), None)
    return default_collate(batch)


def as_eval_data(dataset, names: list[str] | None = None, n: int | None = None, seed: int = 0) -> EvalData:
    """An EvalData from a `MultimodalDataset`, an EvalData, or any torch `Dataset` of `(x dict, avail, y)` samples
    (read into memory by `read_dataset`), columns in `names` order; with n, n random rows.

    Labels: `dataset.labels` (or integer `targets`); rows labelled -1 count as unlabelled. Factors: dict `targets`.
    """
    if isinstance(getattr(dataset, "dataset", None), Dataset) and hasattr(dataset, "batches"):
        dataset = dataset.dataset  # a LoaderDataset: the Dataset it reads
    if isinstance(dataset, EvalData):
        out = dataset
    elif isinstance(dataset, Dataset) and not all(hasattr(dataset, a) for a in ("data", "avail", "modalities")):
        out = read_dataset(dataset, names, n, seed)
        n = None
    else:
        mods = list(dataset.modalities)
        names = list(names) if names is not None else mods
        missing = [m for m in names if m not in mods]
        if missing:
            raise InputError(f"the dataset has no modality {missing[0]!r} (it has {mods}); the model needs {names}")
        cols = torch.tensor([mods.index(m) for m in names], dtype=torch.long)
        targets = getattr(dataset, "targets", None)
        labels = getattr(dataset, "labels", None)
        if labels is None and isinstance(targets, Tensor) and not targets.is_floating_point():
            labels = targets
        if labels is not None and (labels.numel() == 0 or int(labels.max()) < 0):
            labels = None
        factors = {k: (v if v.dim() == 2 else v.reshape(v.shape[0], -1)).float()
                   for k, v in targets.items()} if isinstance(targets, dict) else None
        num_classes = getattr(dataset, "num_classes", None)
        if labels is not None and num_classes is None:
            num_classes = int(labels.max()) + 1
        out = EvalData({m: dataset.data[m] for m in names}, dataset.avail[:, cols].bool(), names,
                       None if labels is None else labels.long(), factors, num_classes)
    if names is not None and list(names) != out.names:
        raise InputError(f"evaluation data has modalities {out.names}, the model {list(names)}")
    rows = {k: v.shape[0] for k, v in out.data.items()}
    if out.avail.dim() != 2 or out.avail.shape[1] != len(out.names) or set(rows.values()) - {out.avail.shape[0]}:
        raise InputError(f"evaluation data: the availability mask must be [N, M] with M = {len(out.names)} "
                         f"(modalities {out.names}) and N the rows of every modality {rows}; got "
                         f"{list(out.avail.shape)}")
    if n is not None and n < len(out):
        g = torch.Generator().manual_seed(seed)
        out = out.take(torch.randperm(len(out), generator=g)[:n].sort().values)
    return out


def subsets_by_size(M: int, sizes=None) -> dict[int, Tensor]:
    """size s -> the [C(M, s), M] bool mask of all subsets of that size (all_subsets' order)."""
    subsets = all_subsets(M)
    sizes = range(1, M + 1) if sizes is None else sizes
    return {s: subsets[subsets.sum(1) == s] for s in sizes}


def subset_key(subset: Tensor, names: list[str]) -> str:
    """[M] mask -> "m0+m2"."""
    return "+".join(subset_names(subset[None], names)[0])


def pair_key(subset: Tensor, target: str, names: list[str]) -> str:
    """The key of a conditional metric: "m0+m2->m1"."""
    return f"{subset_key(subset, names)}->{target}"


def subset_rows(avail: Tensor, subsets: Tensor) -> tuple[Tensor, Tensor]:
    """Rows for every (subset, tuple) pair whose subset the tuple has observed, subset-major.

    avail [N, M], subsets [K, M] -> (tuple index [R], subset index [R]), R <= K * N.
    """
    ok = (subsets[:, None, :] <= avail[None]).all(-1)  # [K, N]: S within what tuple i observed
    k, i = ok.nonzero(as_tuple=True)
    return i, k


def row_chunks(n_rows: int, max_rows: int | None) -> Iterator[slice]:
    """Slices of at most max_rows rows covering range(n_rows) (one slice when max_rows is None)."""
    step = n_rows if not max_rows else max(1, int(max_rows))
    for lo in range(0, n_rows, max(step, 1)):
        yield slice(lo, min(lo + step, n_rows))


def conditioning_subsets(M: int) -> Tensor:
    """Every subset S with 1 <= |S| <= M - 1 (those that leave a modality to generate), in all_subsets' order (by
    size, so the same order as subsets_by_size(M, range(1, M)) concatenated).  -> [K, M] bool"""
    subsets = all_subsets(M)
    return subsets[subsets.sum(1) < M]


def subset_batches(avail: Tensor, subsets: Tensor, max_rows: int | None) -> Iterator[tuple[Tensor, Tensor]]:
    """The (subset, tuple) rows of every subset size in turn (ascending), in chunks of at most max_rows rows.

    avail [N, M], subsets [K, M] -> yields (tuple index [R], subset index [R] into `subsets`): for each size s, the
    rows of subset_rows(avail, subsets of size s) (subset-major), split by row_chunks; a chunk never mixes sizes.
    """
    sizes = subsets.sum(1)  # [K]
    for size in sizes.unique(sorted=True).tolist():
        index = (sizes == size).nonzero().squeeze(1)  # [K_s]: which of `subsets` have this size
        rows, sub = subset_rows(avail, subsets[index])  # [R], [R] (indices into subsets[index])
        for c in row_chunks(len(rows), max_rows):
            yield rows[c], index[sub[c]]


def gather_rows(data: dict[str, Tensor], rows: Tensor, device) -> dict[str, Tensor]:
    """data[name][rows] on `device` for every modality.  -> name -> [R, *shape]"""
    return {k: v[rows].to(device, non_blocking=True) for k, v in data.items()}
