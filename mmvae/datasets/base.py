"""In-memory multimodal datasets: whole tensors per modality, an availability mask and targets.

A batch is `(x, avail, y)`: `x` a dict of `[B, *shape_m]` tensors, `avail` a BoolTensor `[B, M]` whose column
order is `.modalities`, `y` labels `[B]` or a dict of factor tensors `{name: [B, k]}`.

The one missing-data rule (`missing_rows`): a row `[i, ...]` of a modality is missing when every entry is absent:
NaN in a float tensor, `MISSING_TOKEN` (-1) in an integer one, masked in a numpy masked array. A row with only some
absent entries (a dropped channel, a time gap, token padding) is observed, and its absent entries stay as they are.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

MISSING_TOKEN = -1  # an integer entry that is not observed: padding inside a row, or (a whole row of it) a missing row
Targets = Tensor | dict
Batch = tuple  # (dict[str, Tensor], Tensor, Targets)


def _default_likelihood(t: Tensor) -> str:
    """bool -> bernoulli, integer -> categorical, float -> gaussian."""
    if t.dtype == torch.bool:
        return "bernoulli"
    return "gaussian" if t.is_floating_point() else "categorical"


def absent_entries(t: Tensor | np.ndarray) -> Tensor | np.ndarray:
    """Entries that hold no observation: NaN (float), -1 (integer) or masked; none in bool data.  # [N, *shape]"""
    if isinstance(t, Tensor):
        if t.dtype == torch.bool:
            return torch.zeros_like(t)
        return t.isnan() if t.is_floating_point() else t == MISSING_TOKEN
    a = np.ma.getdata(t)
    if a.dtype.kind == "b":
        gone = np.zeros(a.shape, dtype=bool)
    else:
        gone = np.isnan(a) if a.dtype.kind in "fc" else a == MISSING_TOKEN
    return gone | np.ma.getmaskarray(t)


def missing_rows(t: Tensor | np.ndarray) -> Tensor | np.ndarray:
    """The one missing-data rule: row i is missing when all of `t[i]` is absent (`absent_entries`).  # [N] bool"""
    gone = absent_entries(t)
    return gone.reshape(gone.shape[0], -1).all(1)


def _take(targets: Targets, idx) -> Targets:
    """Rows `idx` of a label tensor or of every tensor in a factor dict."""
    if isinstance(targets, dict):
        return {k: v[idx] for k, v in targets.items()}
    return targets[idx]


class MultimodalDataset:
    """Per-modality tensors `data[name]: [N, ...]`, availability `avail: Bool[N, M]` and `targets`.

    targets: LongTensor `[N]` of class labels, or a dict of float tensors `{name: [N, k]}` (generative factors);
    None stands for "no labels" and is stored as a LongTensor of -1.
    avail None: derived from the data by the missing-data rule, `avail[:, m] = ~missing_rows(data[name_m])`.
    Missing entries (`avail[i, m]` False) hold arbitrary values (NaN / 0 after `drop`) and must never be read.
    """

    #: names of extra per-sample tensor attributes `[N, ...]` that `subset` must index alongside the data
    per_sample: tuple[str, ...] = ("labels",)

    def __init__(self, data: dict[str, Tensor], avail: Tensor | None = None, targets: Targets | None = None, *,
                 likelihoods: dict[str, str | dict] | None = None, num_classes: int | None = None,
                 labels: Tensor | None = None):
        if not data:
            raise ValueError("MultimodalDataset needs at least one modality")
        self.data = dict(data)
        self.modalities = list(self.data)
        n = next(iter(self.data.values())).shape[0]
        for name, t in self.data.items():
            if t.shape[0] != n:
                raise ValueError(f"modality {name!r} has {t.shape[0]} samples, expected {n}")
        m = len(self.modalities)
        if avail is None:
            avail = torch.stack([~missing_rows(t) for t in self.data.values()], 1) if n else torch.ones(0, m)
        self.avail = torch.as_tensor(avail).to(torch.bool)  # [N, M]
        if tuple(self.avail.shape) != (n, m):
            raise ValueError(f"avail has shape {tuple(self.avail.shape)}, expected ({n}, {m})")
        if targets is None:
            targets = torch.full((n,), -1, dtype=torch.long)
        for name, t in (targets.items() if isinstance(targets, dict) else [("targets", targets)]):
            if t.shape[0] != n:
                raise ValueError(f"{name} has {t.shape[0]} rows, expected {n}")
        self.targets = targets
        self.shapes = {k: tuple(v.shape[1:]) for k, v in self.data.items()}
        self.likelihoods = {k: _default_likelihood(v) for k, v in self.data.items()}
        self.likelihoods.update(likelihoods or {})
        is_labels = isinstance(targets, Tensor) and not targets.is_floating_point()
        self.labels = labels if labels is not None else (targets if is_labels else None)  # [N] or None
        if num_classes is None and self.labels is not None and n and int(self.labels.max()) >= 0:
            num_classes = int(self.labels.max()) + 1
        self.num_classes = num_classes

    # ----- indexing -----
    def __len__(self) -> int:
        return self.avail.shape[0]

    def __getitem__(self, i: int) -> Batch:
        """One sample `(x_i, avail_i [M], y_i)`; a DataLoader with default collate stacks these into batches."""
        return {k: v[i] for k, v in self.data.items()}, self.avail[i], _take(self.targets, i)

    def _batch(self, idx) -> Batch:
        return {k: v[idx] for k, v in self.data.items()}, self.avail[idx], _take(self.targets, idx)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {list(s)}" for k, s in self.shapes.items())
        frac = float(self.avail.float().mean()) if len(self) else 1.0
        return f"{type(self).__name__}(N={len(self)}, {{{shapes}}}, available={frac:.2f})"

    # ----- batching -----
    def order(self, shuffle: bool = False, generator: torch.Generator | None = None, rank: int = 0,
              world: int = 1) -> Tensor:
        """The indices one rank visits in an epoch: every `world`-th of the (shuffled) order, N // world of them."""
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} out of range for world size {world}")
        n = len(self)
        perm = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)  # [N]
        return perm[rank:(n // world) * world:world]  # [N // world]

    def num_batches(self, batch_size: int, world: int = 1, drop_last: bool = False) -> int:
        """Batches per epoch on one rank: ceil (or floor with drop_last) of (N // world) / batch_size."""
        per_rank = len(self) // world
        return per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
                start: int = 0, rank: int = 0, world: int = 1, drop_last: bool = False) -> Iterator[Batch]:
        """Yield `(x {name: [B, ...]}, avail [B, M], y)` by index slicing, skipping the first `start` batches.

        With `shuffle`, the epoch's order is `torch.randperm(N, generator=generator)`: a resumed run that re-seeds
        the generator as the interrupted one did and passes `start` continues the epoch exactly.
        """
        idx = self.order(shuffle, generator, rank, world)  # [N // world]
        contiguous = not shuffle and world == 1
        for b in range(start, self.num_batches(batch_size, world, drop_last)):
            lo, hi = b * batch_size, min((b + 1) * batch_size, idx.shape[0])
            yield self._batch(slice(lo, hi) if contiguous else idx[lo:hi])

    # ----- copies -----
    def subset(self, indices: Sequence[int] | Tensor | slice) -> MultimodalDataset:
        """A copy holding only the rows `indices` (index tensor, list, slice or boolean mask)."""
        if not isinstance(indices, slice):
            indices = torch.as_tensor(indices)
            if indices.dtype == torch.bool:
                indices = indices.nonzero().squeeze(1)
        out = copy.copy(self)
        out.data = {k: v[indices] for k, v in self.data.items()}
        out.avail = self.avail[indices]
        out.targets = _take(self.targets, indices)
        for name in self.per_sample:
            value = getattr(self, name, None)
            if isinstance(value, Tensor):
                setattr(out, name, value[indices])
        if isinstance(self.targets, Tensor) and self.labels is self.targets:
            out.labels = out.targets
        return out

    def drop(self, rate: float, seed: int = 0) -> MultimodalDataset:
        """A copy where each (sample, modality) entry goes missing with probability `rate`, one kept per sample.

        Samples that lose every modality get one random originally-available modality back. Dropped entries of
        float data become NaN (integer data -1, bool False) in the copy, so a model that reads them shows it;
        `avail` (not the values) says what is missing.
        """
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"drop rate must be in [0, 1], got {rate}")
        g = torch.Generator().manual_seed(seed)
        keep = (torch.rand(self.avail.shape, generator=g) >= rate) & self.avail  # [N, M]
        empty = ~keep.any(1) & self.avail.any(1)  # [N]
        if empty.any():
            pick = torch.multinomial(self.avail[empty].float(), 1, generator=g).squeeze(1)  # [E]
            keep[empty.nonzero().squeeze(1), pick] = True
        out = copy.copy(self)
        out.avail = keep
        out.data = {}
        for j, (name, t) in enumerate(self.data.items()):
            t = t.clone()
            t[~keep[:, j]] = float("nan") if t.is_floating_point() else False if t.dtype == torch.bool else -1
            out.data[name] = t
        return out
