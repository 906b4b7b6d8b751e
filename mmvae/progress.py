"""How far an epoch has got: batch-weighted sums of the loss and its terms, and the progress bar that shows them."""
from __future__ import annotations

import sys

import torch
from tqdm.auto import tqdm

from . import distributed
from .distributed import Ranks


class EpochSums:
    """Batch-size-weighted sums of the loss and each term: mean = sum_b n_b * value_b / sum_b n_b."""

    def __init__(self, state: dict | None = None):
        state = state or {}
        self.n, self.loss = state.get("n", 0.0), state.get("loss", 0.0)
        self.terms: dict[str, float] = dict(state.get("terms", {}))

    def add(self, loss: float, terms: dict[str, float], b: int) -> None:
        """Count one batch of `b` rows with mean loss `loss` and mean terms `terms`."""
        self.n += b
        self.loss += loss * b
        for k, v in terms.items():
            self.terms[k] = self.terms.get(k, 0.0) + v * b

    def state(self) -> dict:
        """The sums as JSON-able values (what a checkpoint keeps of an unfinished epoch)."""
        return {"n": self.n, "loss": self.loss, "terms": dict(self.terms)}

    def means(self, prefix: str, ranks: Ranks, device: torch.device) -> dict[str, float]:
        """{prefix + "loss": mean, prefix + term: mean}, summed over all ranks (a collective)."""
        keys = sorted(self.terms)  # every rank sees the same term names
        n, loss, *terms = distributed.all_sum([self.n, self.loss] + [self.terms[k] for k in keys], ranks, device)
        n = n or float("nan")
        return {f"{prefix}loss": loss / n, **{f"{prefix}{k}": v / n for k, v in zip(keys, terms)}}


def step_scalars(out) -> tuple[float, dict[str, float]]:
    """The loss and the terms of a forward output as Python floats (means over any batch axis), one device sync."""
    names = list(out.terms)
    vals = torch.stack([out.loss.detach().float().mean()] + [out.terms[k].detach().float().mean() for k in names])
    loss, *terms = vals.cpu().tolist()  # vals: [1 + len(names)]
    return loss, dict(zip(names, terms))


class EpochBar:
    """The progress bar of one epoch on stderr (hidden when `show` is false), with the running mean loss."""

    def __init__(self, total: int | None, done: int, desc: str, show: bool, refresh_every: int):
        self.bar = tqdm(total=total, initial=done, disable=None if show else True, leave=False, desc=desc,
                        file=sys.stderr)
        self.refresh_every = max(1, refresh_every)

    def update(self, step_in_epoch: int, sums: EpochSums) -> None:
        """One more batch; every `refresh_every` batches the mean loss so far."""
        self.bar.update(1)
        if step_in_epoch % self.refresh_every == 0 and sums.n:
            self.bar.set_postfix(loss=f"{sums.loss / sums.n:.4g}")

    def close(self) -> None:
        """Remove the bar."""
        self.bar.close()


def print_epoch(entry: dict) -> None:
    """One line of an epoch's means on stderr, above any progress bar: "epoch 3  train/loss 12.5 ..."."""
    tqdm.write("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in entry.items()),
               file=sys.stderr)
