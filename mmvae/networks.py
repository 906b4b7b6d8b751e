"""Ready-made encoders and decoders for common shapes: MLPs for vectors and tokens, small convnets for images, and
(in `sequences`) temporal convolutions and transformers for [T, C] series and [L] token sequences.

Each network records the arguments it was built with (`spec`), so a checkpoint can rebuild it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import InputError
from .recorded import Recorded, mlp
from .sequences import (
    TemporalConvDecoder,
    TemporalConvEncoder,
    TransformerSeqDecoder,
    TransformerSeqEncoder,
    sequence_networks,
)


class MLPEncoder(Recorded):
    """x [B, *in_shape] -> [B, out_dim] (flattened; tokens are embedded first when `num_classes` is given)."""

    def __init__(self, in_shape, out_dim: int, hidden=(256, 256), num_classes: int | None = None, embed_dim: int = 16):
        super().__init__()
        self._record(in_shape=tuple(in_shape), out_dim=out_dim, hidden=tuple(hidden), num_classes=num_classes,
                     embed_dim=embed_dim)
        self.in_shape, self.out_dim = tuple(in_shape), out_dim
        self.embed = nn.Embedding(num_classes, embed_dim) if num_classes else None
        n_in = math.prod(self.in_shape) * (embed_dim if num_classes else 1)
        self.net = mlp([n_in, *hidden, out_dim])

    def forward(self, x: Tensor) -> Tensor:
        """x [B, *in_shape] (tokens embedded first) -> [B, out_dim]."""
        if self.embed is not None:
            x = self.embed(x)  # [B, L, E]
        return self.net(x.flatten(1))


class MLPDecoder(Recorded):
    """z [B, in_dim] -> [B, *out_shape] (with a trailing class dim when `num_classes` is given)."""

    def __init__(self, in_dim: int, out_shape, hidden=(256, 256), num_classes: int | None = None):
        super().__init__()
        self._record(in_dim=in_dim, out_shape=tuple(out_shape), hidden=tuple(hidden), num_classes=num_classes)
        self.out_shape = tuple(out_shape) + ((num_classes,) if num_classes else ())
        self.net = mlp([in_dim, *hidden, math.prod(self.out_shape)])

    def forward(self, z: Tensor) -> Tensor:
        """z [B, in_dim] -> [B, *out_shape]."""
        return self.net(z).view(-1, *self.out_shape)


class ConvEncoder(Recorded):
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
        """x [B, C, H, W] -> [B, out_dim]; without gradients, channels-last (`_linear_from_channels_last`)."""
        if torch.is_grad_enabled():
            return self.net(x)
        conv1, act1, conv2, act2, _, head, act3, out = self.net
        h = act2(conv2(act1(conv1(x.contiguous(memory_format=torch.channels_last)))))  # [B, c2, H/4, W/4]
        return out(act3(_linear_from_channels_last(h, head)))


class ConvDecoder(Recorded):
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
        """z [B, in_dim] -> [B, C, H, W]; without gradients, channels-last (`_linear_to_channels_last`) and the last
        layer as a sub-pixel conv (`_subpixel`)."""
        if torch.is_grad_enabled():
            return self.net(z)
        lin1, act1, lin2, act2, _, *convs = self.net
        h = act2(_linear_to_channels_last(act1(lin1(z)), lin2, self.stem))  # [B, c1, H/4, W/4], channels-last
        up1, act3, up2, *out = convs
        h = act3(up1(h))  # [B, c2, H/2, W/2]
        h = _subpixel(h, up2)  # [B, C, H, W]
        for layer in out:  # the sigmoid
            h = layer(h)
        return h.contiguous()


# Inference (evaluation, imputation, sampling: no gradients) runs the convnets channels-last ([B, C, H, W] stored as
# [B, H, W, C]), where the CPU conv kernels (oneDNN) are faster: the decoder 1.6x, the encoder 1.2-1.4x on 2000-row
# batches (bench/convnets.py). Training keeps the plain layers: with gradients and training-sized batches the
# channels-last path was no faster. The Linear layers on either side of the convs keep their parameters in the
# (C, H, W) order of nn.Flatten / nn.Unflatten, so checkpoints are unchanged; only the order in which their rows or
# columns are read changes, which makes the layout switch free instead of a copy of every activation.

def _linear_to_channels_last(x: Tensor, lin: nn.Linear, chw: tuple[int, int, int]) -> Tensor:
    """lin(x) unflattened to [B, C, H, W], computed directly in channels-last memory.  x [B, n] -> [B, C, H, W]"""
    C, H, W = chw
    weight = lin.weight.view(C, H, W, -1).permute(1, 2, 0, 3).reshape(C * H * W, -1)  # rows in (H, W, C) order
    bias = lin.bias.view(C, H, W).permute(1, 2, 0).reshape(-1)
    return F.linear(x, weight, bias).view(-1, H, W, C).permute(0, 3, 1, 2)  # a view: [B, C, H, W] channels-last


def _subpixel(x: Tensor, up: nn.ConvTranspose2d) -> Tensor:
    """up(x) for a ConvTranspose2d(kernel 4, stride 2, padding 1) as a 3x3 conv to 4 C_out channels and a pixel
    shuffle (sub-pixel convolution; Shi et al., CVPR 2016): output row 2i + a sums input rows i + di through kernel
    row a + 1 - 2 di, for di in {-1, 0} (a = 0) or {0, 1} (a = 1); the same for columns (table _TAPS), in one
    gather.
    Faster than the transposed conv on the CPU for few output channels (an image's), without gradients.
    x [B, C_in, h, w] -> [B, C_out, 2h, 2w]"""
    w = F.pad(up.weight, (0, 1, 0, 1))  # [C_in, C_out, 5, 5]: tap 4 is zero, for window positions no tap reads
    k = w[:, :, _TAPS[:, None, :, None], _TAPS[None, :, None, :]]  # [C_in, C_out, a, b, 3, 3]
    c_in, c_out = w.shape[:2]
    k = k.permute(1, 2, 3, 0, 4, 5).reshape(4 * c_out, c_in, 3, 3)  # (o, a, b) output channels: pixel_shuffle's order
    y = F.conv2d(x, k, up.bias.repeat_interleave(4), padding=1)  # [B, 4 C_out, h, w]
    return F.pixel_shuffle(y, 2)


#: [a, p]: the kernel tap that output phase a (row or column parity) reads at position p of the 3-wide input window
#: (4: none, a zero tap)
_TAPS = torch.tensor([[3, 1, 4], [4, 2, 0]])


def _linear_from_channels_last(h: Tensor, lin: nn.Linear) -> Tensor:
    """lin(h.flatten(1)) for a channels-last h [B, C, H, W], without reordering h.  -> [B, out]"""
    B, C, H, W = h.shape
    weight = lin.weight.view(-1, C, H, W).permute(0, 2, 3, 1).reshape(lin.weight.shape[0], -1)  # (H, W, C) columns
    return F.linear(h.permute(0, 2, 3, 1).reshape(B, -1), weight, lin.bias)


#: name -> class of every network a spec can name: ours, and yours after `mmvae.register_network`
NETWORKS = {c.__name__: c for c in (MLPEncoder, MLPDecoder, ConvEncoder, ConvDecoder, TemporalConvEncoder,
                                    TemporalConvDecoder, TransformerSeqEncoder, TransformerSeqDecoder)}


def build_network(spec: dict) -> nn.Module:
    """Rebuild a registered network from its recorded `spec` ({"type": name, **arguments})."""
    spec = dict(spec)
    kind = spec.pop("type", None)
    if not isinstance(kind, str) or kind not in NETWORKS:
        raise InputError(f"cannot rebuild network type {kind!r}: it is not registered (known: {sorted(NETWORKS)}); "
                         "register it with mmvae.register_network")
    return NETWORKS[kind](**spec)


#: the ready-made network families a modality can ask for by name (`Modality(networks=...)`, `--networks`)
FAMILIES = ("auto", "mlp", "conv", "tconv", "transformer")


def is_image(shape) -> bool:
    """[C, H, W] with H and W divisible by 4: what the conv networks take."""
    return len(shape) == 3 and shape[1] % 4 == 0 and shape[2] % 4 == 0


def is_series(shape, num_classes: int | None = None) -> bool:
    """A float [T, C] series with T >= 8 steps: what "auto" gives temporal convolutions."""
    return len(shape) == 2 and shape[0] >= 8 and num_classes is None


def default_networks(shape, latent_dim: int, enc_out: int, likelihood: str = "gaussian",
                     num_classes: int | None = None, family: str = "auto") -> tuple[nn.Module, nn.Module]:
    """An encoder/decoder pair for a per-sample shape. family "auto": convnets for [C, H, W] images, temporal
    convolutions for [T, C] series (T >= 8), MLPs otherwise (vectors, token [L]); or one of FAMILIES by name:
    "mlp" (flattening), "conv" (images), "tconv" / "transformer" ([T, C] series or [L] tokens)."""
    shape = tuple(shape)
    if family not in FAMILIES:
        raise InputError(f"unknown networks {family!r}; choose one of {list(FAMILIES)}")
    if family == "auto":
        family = "conv" if is_image(shape) and num_classes is None else "tconv" if is_series(shape, num_classes) \
            else "mlp"
    if family == "conv":
        if not is_image(shape) or num_classes is not None:
            raise InputError(f"networks 'conv' need float [C, H, W] images with H, W divisible by 4, got {shape}")
        sigmoid = likelihood in ("gaussian", "laplace")
        return ConvEncoder(shape, enc_out), ConvDecoder(latent_dim, shape, sigmoid=sigmoid)
    if family in ("tconv", "transformer"):
        if not (len(shape) == 2 and num_classes is None or len(shape) == 1 and num_classes is not None):
            raise InputError(f"networks {family!r} need a float [T, C] series or integer [L] tokens, got shape "
                             f"{shape}" + (" (tokens)" if num_classes else ""))
        return sequence_networks(shape, latent_dim, enc_out, "conv" if family == "tconv" else "transformer",
                                 num_classes)
    return (MLPEncoder(shape, enc_out, num_classes=num_classes),
            MLPDecoder(latent_dim, shape, num_classes=num_classes))
