"""Ready-made encoders and decoders for common shapes: MLPs for vectors and tokens, small convnets for images.

Each network records the arguments it was built with (`spec`), so a checkpoint can rebuild it.
"""
from __future__ import annotations

import math

from torch import Tensor, nn


class _Recorded(nn.Module):
    """Keeps the constructor's arguments as a JSON-able `spec`."""

    def _record(self, **kwargs):
        self.spec = {"type": type(self).__name__,
                     **{k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}}


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.SiLU()]
    return nn.Sequential(*layers[:-1])


class MLPEncoder(_Recorded):
    """x [B, *in_shape] -> [B, out_dim] (flattened; tokens are embedded first when `num_classes` is given)."""

    def __init__(self, in_shape, out_dim: int, hidden=(256, 256), num_classes: int | None = None, embed_dim: int = 16):
        super().__init__()
        self._record(in_shape=tuple(in_shape), out_dim=out_dim, hidden=tuple(hidden), num_classes=num_classes,
                     embed_dim=embed_dim)
        self.in_shape, self.out_dim = tuple(in_shape), out_dim
        self.embed = nn.Embedding(num_classes, embed_dim) if num_classes else None
        n_in = math.prod(self.in_shape) * (embed_dim if num_classes else 1)
        self.net = _mlp([n_in, *hidden, out_dim])

    def forward(self, x: Tensor) -> Tensor:
        """x [B, *in_shape] (tokens embedded first) -> [B, out_dim]."""
        if self.embed is not None:
            x = self.embed(x)  # [B, L, E]
        return self.net(x.flatten(1))


class MLPDecoder(_Recorded):
    """z [B, in_dim] -> [B, *out_shape] (with a trailing class dim when `num_classes` is given)."""

    def __init__(self, in_dim: int, out_shape, hidden=(256, 256), num_classes: int | None = None):
        super().__init__()
        self._record(in_dim=in_dim, out_shape=tuple(out_shape), hidden=tuple(hidden), num_classes=num_classes)
        self.out_shape = tuple(out_shape) + ((num_classes,) if num_classes else ())
        self.net = _mlp([in_dim, *hidden, math.prod(self.out_shape)])

    def forward(self, z: Tensor) -> Tensor:
        """z [B, in_dim] -> [B, *out_shape]."""
        return self.net(z).view(-1, *self.out_shape)


class ConvEncoder(_Recorded):
    """Image [B, C, H, W] (H, W divisible by 4) -> [B, out_dim]: two stride-2 convs and a linear head."""

    def __init__(self, in_shape, out_dim: int, channels=(32, 64), hidden: int = 256):
        super().__init__()
        self._record(in_shape=tuple(in_shape), out_dim=out_dim, channels=tuple(channels), hidden=hidden)
        C, H, W = in_shape
        if H % 4 or W % 4:
            raise ValueError(f"ConvEncoder needs H and W divisible by 4, got {tuple(in_shape)}")
        self.in_shape, self.out_dim = tuple(in_shape), out_dim
        c1, c2 = channels
        self.net = nn.Sequential(
            nn.Conv2d(C, c1, 4, 2, 1), nn.SiLU(),
            nn.Conv2d(c1, c2, 4, 2, 1), nn.SiLU(),
            nn.Flatten(), nn.Linear(c2 * (H // 4) * (W // 4), hidden), nn.SiLU(),
            nn.Linear(hidden, out_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        """x [B, C, H, W] -> [B, out_dim]."""
        return self.net(x)


class ConvDecoder(_Recorded):
    """z [B, in_dim] -> image [B, C, H, W]: a linear stem and two stride-2 transposed convs (sigmoid output)."""

    def __init__(self, in_dim: int, out_shape, channels=(64, 32), hidden: int = 256, sigmoid: bool = True):
        super().__init__()
        self._record(in_dim=in_dim, out_shape=tuple(out_shape), channels=tuple(channels), hidden=hidden,
                     sigmoid=sigmoid)
        C, H, W = out_shape
        if H % 4 or W % 4:
            raise ValueError(f"ConvDecoder needs H and W divisible by 4, got {tuple(out_shape)}")
        c1, c2 = channels
        self.stem = (c1, H // 4, W // 4)
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, math.prod(self.stem)), nn.SiLU(),
            nn.Unflatten(1, self.stem),
            nn.ConvTranspose2d(c1, c2, 4, 2, 1), nn.SiLU(),
            nn.ConvTranspose2d(c2, C, 4, 2, 1),
            *([nn.Sigmoid()] if sigmoid else []),
        )

    def forward(self, z: Tensor) -> Tensor:
        """z [B, in_dim] -> [B, C, H, W]."""
        return self.net(z)


NETWORKS = {c.__name__: c for c in (MLPEncoder, MLPDecoder, ConvEncoder, ConvDecoder)}


def build_network(spec: dict) -> nn.Module:
    """Rebuild one of our networks from its recorded `spec`."""
    spec = dict(spec)
    return NETWORKS[spec.pop("type")](**spec)


def default_networks(shape, latent_dim: int, enc_out: int, likelihood: str = "gaussian",
                     num_classes: int | None = None) -> tuple[nn.Module, nn.Module]:
    """A sensible encoder/decoder pair for a per-sample shape: convnets for [C, H, W] images, MLPs otherwise."""
    shape = tuple(shape)
    if len(shape) == 3 and shape[1] % 4 == 0 and shape[2] % 4 == 0 and num_classes is None:
        sigmoid = likelihood in ("gaussian", "laplace")
        return ConvEncoder(shape, enc_out), ConvDecoder(latent_dim, shape, sigmoid=sigmoid)
    return (MLPEncoder(shape, enc_out, num_classes=num_classes),
            MLPDecoder(latent_dim, shape, num_classes=num_classes))
