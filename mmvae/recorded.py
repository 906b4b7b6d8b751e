"""The base of the ready-made networks: a module that records its constructor's arguments, and an MLP stack."""
from __future__ import annotations

from torch import nn


class Recorded(nn.Module):
    """Keeps the constructor's arguments as a JSON-able `spec` ({"type": class name, **arguments}), which
    `networks.build_network` rebuilds."""

    def _record(self, **kwargs):
        self.spec = {"type": type(self).__name__,
                     **{k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}}


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers of these sizes with SiLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.SiLU()]
    return nn.Sequential(*layers[:-1])
