"""Data larger than memory: any `torch.utils.data.Dataset` yielding `(x dict, avail [M], y)`, read through a
`DataLoader` (with workers) in the order `MultimodalDataset.batches` would visit, so the trainer sees one protocol.

The in-memory `MultimodalDataset` stays the fast path (slicing, no collation); this adapter pays a per-sample
`__getitem__` and collation, which workers hide when reading samples is the slow part.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from .base import Batch, MultimodalDataset


class LoaderDataset:
    """`dataset` in the batching protocol of `MultimodalDataset` (`batches`, `num_batches`, `order`, `len`).

    num_workers, pin_memory and any other DataLoader keyword go to the DataLoader of each epoch. The epoch's order
    is `MultimodalDataset.order` (one definition), so with the same generator both give the same batches.
    """

    order = MultimodalDataset.order
    num_batches = MultimodalDataset.num_batches

    def __init__(self, dataset: Dataset, num_workers: int = 0, **loader_kw):
        self.dataset = dataset
        self.num_workers = num_workers
        self.loader_kw = loader_kw

    def __len__(self) -> int:
        return len(self.dataset)

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
                start: int = 0, rank: int = 0, world: int = 1, drop_last: bool = False) -> Iterator[Batch]:
        """Yield `(x {name: [B, ...]}, avail [B, M], y)` batches of the epoch's order, skipping the first `start`."""
        idx = self.order(shuffle, generator, rank, world)  # [N // world]
        chunks = [idx[b * batch_size:(b + 1) * batch_size].tolist()
                  for b in range(start, self.num_batches(batch_size, world, drop_last))]
        if not chunks:
            return
        kw = {"generator": torch.Generator().manual_seed(start), **self.loader_kw}  # worker seeds: not the global RNG
        loader = DataLoader(self.dataset, batch_sampler=chunks, num_workers=self.num_workers, **kw)
        yield from loader


def as_batches(data):
    """`data` itself when it has `.batches` (a `MultimodalDataset`), else a `LoaderDataset` of it; None stays None."""
    return data if data is None or hasattr(data, "batches") else LoaderDataset(data)
