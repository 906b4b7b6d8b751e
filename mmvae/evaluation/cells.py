"""Per-cell results of the conditional evaluators: a cell is a pair (subset S, target modality m not in S).

`CellSums` accumulates, for every subset k of a [K, M] table and every modality j, a sum of per-row values and a
count of the rows that scored the cell, from batches of (subset, tuple) rows laid out by `subset_batches`; its
`means()` are the "S->m" dicts every conditional metric reports, and `summarise` averages them by subset size.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from .subset_batches import pair_key


class CellSums:
    """Sums and counts [K, M] of named per-row statistics, one cell per (subset k, modality j)."""

    def __init__(self, subsets: Tensor, names: list[str], stats: tuple[str, ...], dtype=torch.float64):
        self.subsets, self.names, self.stats = subsets, list(names), tuple(stats)  # subsets [K, M] bool
        K, M = subsets.shape
        self.sums = torch.zeros(len(self.stats), K, M, dtype=dtype)  # [S, K, M]
        self.counts = torch.zeros(K, M, dtype=dtype)  # [K, M]

    def add(self, k: Tensor, use: Tensor, **values: Tensor) -> None:
        """Add rows to their cells: row r counts for (k[r], j) where use[r, j].

        k [R] subset index, use [R, M] bool, values: one [R, M] tensor per stat (entries outside `use` are ignored,
        NaN included).
        """
        use = use.cpu()
        for i, stat in enumerate(self.stats):
            v = values[stat].to("cpu", self.sums.dtype)  # [R, M]
            self.sums[i].index_add_(0, k, torch.where(use, v, 0.0))
        self.counts.index_add_(0, k, use.to(self.counts.dtype))

    def _cells(self, scored: bool) -> tuple[Tensor, Tensor, list[str]]:
        """The cells with m not in S (and, if scored, at least one row): (k [C], j [C], "S->m" keys), (k, j) order."""
        keep = ~self.subsets if not scored else (~self.subsets) & (self.counts > 0)  # [K, M]
        k, j = keep.nonzero(as_tuple=True)  # [C], [C]
        keys = [pair_key(self.subsets[a], self.names[b], self.names) for a, b in zip(k.tolist(), j.tolist())]
        return k, j, keys

    def items(self) -> Iterator[tuple[str, str, dict[str, float]]]:
        """("S->m", m, {stat: sum / count}) for every scored cell (m not in S, count > 0), in (k, j) order."""
        k, j, keys = self._cells(scored=True)
        means = (self.sums[:, k, j] / self.counts[k, j]).T.tolist()  # [C, S]
        for key, b, row in zip(keys, j.tolist(), means):
            yield key, self.names[b], dict(zip(self.stats, row))

    def means(self) -> dict[str, dict[str, float]]:
        """"S->m" -> {stat: sum / count} for every scored cell (m not in S, count > 0)."""
        return {key: v for key, _, v in self.items()}

    def row_counts(self) -> dict[str, int]:
        """"S->m" -> the number of rows that scored the cell, for every cell with m not in S (0 included)."""
        k, j, keys = self._cells(scored=False)
        return dict(zip(keys, [int(c) for c in self.counts[k, j].tolist()]))


def summarise(matrix: dict[str, float]) -> dict:
    """{"matrix", "per_size": {|S|: mean over its (S, m) cells}, "mean": mean over all cells} from "S->m" keys."""
    by_size: dict[int, list[float]] = {}
    for key, v in matrix.items():
        by_size.setdefault(key.split("->")[0].count("+") + 1, []).append(v)
    per_size = {str(s): sum(v) / len(v) for s, v in sorted(by_size.items())}
    values = list(matrix.values())
    return {"matrix": matrix, "per_size": per_size, "mean": sum(values) / len(values) if values else float("nan")}
