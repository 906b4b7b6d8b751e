"""Ready-made encoders and decoders for sequences: float series [T, C] (time first) and integer tokens [L].

Variable length is padding at the end: a series step whose every channel is NaN, a token -1. The encoders find that
mask themselves (`handles_nan = True`: the model passes them the raw input) and padding enters nothing: it is
zeroed before any op, zeroed again after every conv layer, masked out of attention and out of the pooling, so a
sequence's code does not depend on how far, or with what, it was padded. A NaN in some channels of a step with
others valid is a dropped channel, not padding: it is read as 0. For tokens every -1 is masked, wherever it is.

The decoders are non-autoregressive: z [B, D] -> likelihood parameters for all T steps at once, [B, T, C], or
[B, L, num_classes] logits for tokens.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import InputError
from .recorded import Recorded, mlp


def _check_shape(cls: str, shape, num_classes: int | None) -> None:
    if not (len(shape) == 2 and num_classes is None or len(shape) == 1 and num_classes is not None):
        raise ValueError(f"{cls} needs a float [T, C] series or integer [L] tokens with num_classes, got shape "
                         f"{list(shape)}, num_classes={num_classes}")


def _read(x: Tensor, embed: nn.Embedding | None) -> tuple[Tensor, Tensor]:
    """Zero-filled (or embedded) steps and the valid-step mask.
    x [B, T, C] float, NaN-padded, or [B, L] tokens, -1-padded -> (h [B, T, E] zero where padded, keep [B, T] bool)"""
    if embed is None:
        keep = ~x.isnan().all(-1)  # [B, T]
        return torch.where(x.isnan(), 0.0, x), keep  # a dropped channel (NaN in a valid step) reads 0
    keep = x >= 0  # [B, L]; NaN (float tokens) is padding too
    return embed(torch.where(keep, x, 0).long()) * keep[..., None], keep


def _masked_mean(h: Tensor, keep: Tensor) -> Tensor:
    """Mean over the valid steps; an all-padding row gives zeros.  h [B, T, D], keep [B, T] -> [B, D]"""
    w = keep[..., None]  # [B, T, 1]
    return torch.where(w, h, 0.0).sum(1) / w.sum(1).clamp_min(1)


def _sinusoid(T: int, d: int, like: Tensor) -> Tensor:
    """Sinusoidal positions pe[t, 2i] = sin(t w_i), pe[t, 2i+1] = cos(t w_i), w_i = 10000^(-2i/d).  -> [T, d]"""
    t = torch.arange(T, device=like.device, dtype=torch.float32)[:, None]  # [T, 1]
    w = torch.exp(torch.arange(0, d, 2, device=like.device, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(T, d, device=like.device)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(t * w), torch.cos(t * w[: d // 2])
    return pe.to(like.dtype)


def _transformer(d_model: int, heads: int, layers: int, dropout: float) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(d_model, heads, 4 * d_model, dropout, activation="gelu", batch_first=True,
                                       norm_first=True)
    return nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False)


class TemporalConvEncoder(Recorded):
    """x [B, T, C] (or tokens [B, L], embedded) -> Conv1d stack with dilations 1, 2, 4, ... (same padding, SiLU),
    mean and max over the valid steps, linear head -> [B, out_dim]. Works for any T, not only in_shape[0]."""

    handles_nan = True

    def __init__(self, in_shape, out_dim: int, channels=(64, 64, 64), kernel: int = 5, num_classes: int | None = None,
                 embed_dim: int = 16):
        super().__init__()
        self._record(in_shape=tuple(in_shape), out_dim=out_dim, channels=tuple(channels), kernel=kernel,
                     num_classes=num_classes, embed_dim=embed_dim)
        _check_shape("TemporalConvEncoder", in_shape, num_classes)
        self.in_shape, self.out_dim = tuple(in_shape), out_dim
        self.embed = nn.Embedding(num_classes, embed_dim) if num_classes else None
        sizes = [embed_dim if num_classes else in_shape[1], *channels]
        # receptive field 1 + (kernel - 1)(2^layers - 1) steps: 29 for the defaults
        self.convs = nn.ModuleList(nn.Conv1d(a, b, kernel, padding="same", dilation=2 ** i)
                                   for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])))
        self.head = nn.Linear(2 * sizes[-1], out_dim)

    def forward(self, x: Tensor) -> Tensor:
        """x [B, T, C] NaN-padded (or [B, L] tokens, -1-padded) -> [B, out_dim]."""
        h, keep = _read(x, self.embed)  # [B, T, E], [B, T]
        h, m = h.transpose(1, 2), keep[:, None, :]  # [B, E, T], [B, 1, T]
        for conv in self.convs:
            h = F.silu(conv(h)).masked_fill(~m, 0.0)  # [B, c, T]: padded steps stay 0, so no conv reads them
        mean = h.sum(-1) / m.sum(-1).clamp_min(1)  # [B, c]
        top = h.masked_fill(~m, float("-inf")).amax(-1)  # [B, c]
        top = torch.where(keep.any(1, keepdim=True), top, 0.0)  # an all-padding row: zeros
        return self.head(torch.cat([mean, top], 1))


class TemporalConvDecoder(Recorded):
    """z [B, in_dim] -> MLP to a coarse grid [c, ceil(T / 2^n)], n = len(channels) stages of linear upsampling
    (x2, the last to exactly T) + Conv1d + SiLU, a 1x1 conv out -> [B, T, C] (or [B, L, num_classes] logits)."""

    def __init__(self, in_dim: int, out_shape, channels=(64, 64), hidden: int = 256, num_classes: int | None = None,
                 kernel: int = 5):
        super().__init__()
        self._record(in_dim=in_dim, out_shape=tuple(out_shape), channels=tuple(channels), hidden=hidden,
                     num_classes=num_classes, kernel=kernel)
        _check_shape("TemporalConvDecoder", out_shape, num_classes)
        T, n = out_shape[0], len(channels)
        steps = [math.ceil(T / 2 ** (n - i)) for i in range(n + 1)]  # coarse ... T, e.g. 37: [10, 19, 37]
        self.stem = nn.Sequential(mlp([in_dim, hidden, channels[0] * steps[0]]), nn.SiLU(),
                                  nn.Unflatten(1, (channels[0], steps[0])))
        self.up = nn.Sequential(*(m for i, c in enumerate(channels) for m in (
            nn.Upsample(size=steps[i + 1], mode="linear"),
            nn.Conv1d(channels[max(i - 1, 0)], c, kernel, padding="same"), nn.SiLU())))
        self.out = nn.Conv1d(channels[-1], num_classes or out_shape[1], 1)

    def forward(self, z: Tensor) -> Tensor:
        """z [B, in_dim] -> [B, T, C] (or [B, L, num_classes])."""
        return self.out(self.up(self.stem(z))).transpose(1, 2)  # [B, c0, T0] -> [B, c, T] -> [B, T, C]


class TransformerSeqEncoder(Recorded):
    """x [B, T, C] (or tokens [B, L]) -> linear projection (or embedding) + positions, a pre-norm transformer with
    the padding as `src_key_padding_mask`, mean over the valid steps, linear head -> [B, out_dim].
    Positions: learned for up to `max_len` steps when given, else sinusoidal (any length)."""

    handles_nan = True

    def __init__(self, in_shape, out_dim: int, d_model: int = 64, heads: int = 4, layers: int = 2,
                 num_classes: int | None = None, max_len: int | None = None, dropout: float = 0.1):
        super().__init__()
        self._record(in_shape=tuple(in_shape), out_dim=out_dim, d_model=d_model, heads=heads, layers=layers,
                     num_classes=num_classes, max_len=max_len, dropout=dropout)
        _check_shape("TransformerSeqEncoder", in_shape, num_classes)
        self.in_shape, self.out_dim = tuple(in_shape), out_dim
        self.embed = nn.Embedding(num_classes, d_model) if num_classes else None
        self.proj = nn.Identity() if num_classes else nn.Linear(in_shape[1], d_model)
        self.pos = nn.Parameter(0.02 * torch.randn(max_len, d_model)) if max_len else None
        self.encoder = _transformer(d_model, heads, layers, dropout)
        self.head = nn.Linear(d_model, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        """x [B, T, C] NaN-padded (or [B, L] tokens, -1-padded) -> [B, out_dim]."""
        h, keep = _read(x, self.embed)  # [B, T, E], [B, T]
        h = self.proj(h)  # [B, T, d]
        T = h.shape[1]
        if self.pos is not None and T > len(self.pos):
            raise ValueError(f"TransformerSeqEncoder has learned positions for {len(self.pos)} steps, got {T}")
        h = h + (self.pos[:T] if self.pos is not None else _sinusoid(T, h.shape[-1], h))
        pad = ~keep & keep.any(1, keepdim=True)  # an all-padding row attends everywhere (else NaN), pools to zeros
        return self.head(_masked_mean(self.encoder(h, src_key_padding_mask=pad), keep))


class TransformerSeqDecoder(Recorded):
    """z [B, in_dim] -> T learned position queries + the projected latent, a pre-norm transformer over the T
    positions, linear out -> [B, T, C] (or [B, L, num_classes] logits)."""

    def __init__(self, in_dim: int, out_shape, d_model: int = 64, heads: int = 4, layers: int = 2,
                 num_classes: int | None = None, dropout: float = 0.0):
        super().__init__()
        self._record(in_dim=in_dim, out_shape=tuple(out_shape), d_model=d_model, heads=heads, layers=layers,
                     num_classes=num_classes, dropout=dropout)
        _check_shape("TransformerSeqDecoder", out_shape, num_classes)
        self.queries = nn.Parameter(0.02 * torch.randn(out_shape[0], d_model))  # [T, d]
        self.latent = nn.Linear(in_dim, d_model)
        self.decoder = _transformer(d_model, heads, layers, dropout)
        self.out = nn.Linear(d_model, num_classes or out_shape[1])

    def forward(self, z: Tensor) -> Tensor:
        """z [B, in_dim] -> [B, T, C] (or [B, L, num_classes])."""
        h = self.queries + self.latent(z)[:, None, :]  # [B, T, d]
        return self.out(self.decoder(h))


#: kind -> (encoder, decoder) class pair of `sequence_networks`
PAIRS = {"conv": (TemporalConvEncoder, TemporalConvDecoder),
         "transformer": (TransformerSeqEncoder, TransformerSeqDecoder)}


def sequence_networks(shape, latent_dim: int, enc_out: int, kind: str = "conv",
                      num_classes: int | None = None) -> tuple[nn.Module, nn.Module]:
    """An encoder (-> [B, enc_out]) and decoder (z [B, latent_dim] -> [B, *shape(, num_classes)]) for a [T, C]
    series or [L] tokens: temporal convolutions ("conv") or transformers ("transformer"), default sizes."""
    if kind not in PAIRS:
        raise InputError(f"unknown sequence networks {kind!r}; choose one of {list(PAIRS)}")
    enc, dec = PAIRS[kind]
    return enc(tuple(shape), enc_out, num_classes=num_classes), dec(latent_dim, tuple(shape), num_classes=num_classes)
