"""Sequence encoders and decoders (`mmvae.sequences`): shapes for any length, padding (NaN steps, -1 tokens) that
enters nothing, dropped channels read as 0, spec round trips, gradients, and a tiny fit that beats the mean."""
import json
import math
import subprocess
import sys

import pytest
import torch

from mmvae import Modality, MultimodalVAE
from mmvae.networks import default_networks
from mmvae.sequences import (
    TemporalConvDecoder,
    TemporalConvEncoder,
    TransformerSeqDecoder,
    TransformerSeqEncoder,
    sequence_networks,
)

NAN = float("nan")
C, K = 3, 7  # channels of a series, classes of a token sequence


def _encoders(T: int, tokens: bool = False) -> list:
    """Every encoder variant for length T (the learned-position transformer for up to T + 8 steps)."""
    shape, nc = ((T,), K) if tokens else ((T, C), None)
    torch.manual_seed(0)
    return [TemporalConvEncoder(shape, 6, num_classes=nc), TransformerSeqEncoder(shape, 6, num_classes=nc),
            TransformerSeqEncoder(shape, 6, num_classes=nc, max_len=T + 8)]


def _decoders(T: int, tokens: bool = False) -> list:
    shape, nc = ((T,), K) if tokens else ((T, C), None)
    torch.manual_seed(0)
    return [TemporalConvDecoder(4, shape, num_classes=nc), TransformerSeqDecoder(4, shape, num_classes=nc)]


def _padded(seqs: list, width: int, tokens: bool, fill=None) -> torch.Tensor:
    """Sequences of different lengths, padded at the end to `width` with NaN (-1 for tokens) or `fill`."""
    out = []
    for s in seqs:
        value = fill if fill is not None else -1 if tokens else NAN
        pad = torch.full((width - len(s), *s.shape[1:]), value, dtype=s.dtype)
        out.append(torch.cat([s, pad]))
    return torch.stack(out)


def _sequences(lengths, tokens: bool, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(K, (t,), generator=g) if tokens else torch.randn(t, C, generator=g) for t in lengths]


@pytest.mark.parametrize("T", [100, 37, 8])
@pytest.mark.parametrize("kind", ["conv", "transformer"])
def test_shapes_for_any_length_series_and_tokens(T, kind):
    enc, dec = sequence_networks((T, C), 4, 8, kind)
    assert enc(torch.randn(5, T, C)).shape == (5, 8) and dec(torch.randn(5, 4)).shape == (5, T, C)
    enc, dec = sequence_networks((T,), 4, 8, kind, num_classes=K)
    assert enc(torch.randint(K, (5, T))).shape == (5, 8) and dec(torch.randn(5, 4)).shape == (5, T, K)
    assert enc.handles_nan and not hasattr(dec, "handles_nan")


@pytest.mark.parametrize("tokens", [False, True])
def test_padding_enters_nothing(tokens):
    """Each row's code equals the code of that sequence alone, unpadded, whether padded to T or to T + 8, with NaN
    / -1 or (tokens) any negative garbage; padding with zeros instead is data and does change it (the test bites)."""
    T, lengths = 20, [20, 13, 5, 1]
    seqs = _sequences(lengths, tokens)
    garbage = _padded(seqs, T + 8, tokens)
    if tokens:
        garbage[garbage < 0] = torch.randint(-50, 0, (int((garbage < 0).sum()),))
    for enc in _encoders(T, tokens):
        enc.eval()
        with torch.no_grad():
            alone = torch.cat([enc(s[None]) for s in seqs])  # [4, 6]
            for x in (_padded(seqs, T, tokens), _padded(seqs, T + 8, tokens), garbage):
                torch.testing.assert_close(enc(x), alone, atol=1e-5, rtol=1e-5)
            zeros = enc(_padded(seqs, T, tokens, fill=0))
        assert (zeros[1:] - alone[1:]).abs().amax(1).min() > 1e-4, type(enc).__name__


def test_a_dropped_channel_reads_as_zero_and_an_all_padding_row_gives_the_head_bias():
    x = torch.randn(3, 16, C)
    x[0, 4, 1] = NAN  # a dropped channel of a valid step
    x[2] = NAN  # all padding (a missing modality)
    zeroed = torch.nan_to_num(x[:2])
    tokens = torch.randint(K, (3, 16))
    tokens[2] = -1
    for enc in _encoders(16):
        enc.eval()
        with torch.no_grad():
            out = enc(x)
        assert out.isfinite().all()
        torch.testing.assert_close(out[:2], enc(zeroed), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(out[2], enc.head.bias.detach())
    for enc in _encoders(16, tokens=True):
        out = enc.eval()(tokens)
        assert out.isfinite().all()
        torch.testing.assert_close(out[2], enc.head.bias.detach())


@pytest.mark.parametrize("tokens", [False, True])
def test_spec_round_trip_rebuilds_the_same_network(tokens):
    x = torch.randint(K, (4, 12)) if tokens else torch.randn(4, 12, C)
    z = torch.randn(4, 4)
    for net, inp in [(e, x) for e in _encoders(12, tokens)] + [(d, z) for d in _decoders(12, tokens)]:
        spec = json.loads(json.dumps(net.spec))
        assert spec["type"] == type(net).__name__
        torch.manual_seed(1)  # a different initialisation than `net`'s
        again = type(net)(**{k: v for k, v in spec.items() if k != "type"})
        again.load_state_dict(net.state_dict())
        net.eval(), again.eval()
        torch.testing.assert_close(again(inp), net(inp), rtol=0, atol=0)


def test_every_parameter_gets_a_gradient_and_padding_none():
    x = torch.randn(4, 12, C)
    x[1, 7:] = NAN
    x[2, 0, 0] = NAN
    x[3] = NAN  # all padding
    tokens = torch.randint(K, (4, 12))
    tokens[1, 7:] = -1
    tokens[3] = -1
    z = torch.randn(4, 4, requires_grad=True)
    for enc in _encoders(12) + _encoders(12, tokens=True):
        inp = x.clone().requires_grad_() if enc.embed is None else tokens
        enc(inp).square().sum().backward()
        for name, p in enc.named_parameters():
            assert p.grad is not None and p.grad.isfinite().all() and p.grad.abs().sum() > 0, name
        if enc.embed is None:
            assert inp.grad.isfinite().all() and (inp.grad[1, 7:] == 0).all() and (inp.grad[2, 0, 0] == 0)
            assert (inp.grad[3] == 0).all()
            assert (inp.grad[1, :7] != 0).any()
    for dec in _decoders(12) + _decoders(12, tokens=True):
        dec(z).square().sum().backward()
        for name, p in dec.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_temporal_conv_autoencoder_fits_sine_waves_better_than_the_mean():
    """64 sines [T=32, C=2] (sin, cos of a random phase): the code is the encoder's first half (mu)."""
    g = torch.Generator().manual_seed(0)
    t = torch.linspace(0, 2 * math.pi, 32)[None, :]  # [1, T]
    phase = 2 * math.pi * torch.rand(64, 1, generator=g)  # [B, 1]
    x = torch.stack([torch.sin(t + phase), torch.cos(t + phase)], -1)  # [B, T, 2]
    baseline = (x - x.mean(0)).square().mean()
    torch.manual_seed(0)
    enc = TemporalConvEncoder((32, 2), 8, channels=(32, 32, 32))
    dec = TemporalConvDecoder(4, (32, 2), channels=(32, 32), hidden=64)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=3e-3)
    for _ in range(150):
        loss = (dec(enc(x)[:, :4]) - x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        mse = (dec(enc(x)[:, :4]) - x).square().mean()
    assert mse < 0.05 * baseline, (mse.item(), baseline.item())


@pytest.mark.parametrize("family", ["tconv", "transformer"])
def test_a_model_trains_on_nan_padded_sequences(family):
    """The model hands our encoders the raw NaN-padded input (`handles_nan`); the loss and gradients are finite."""
    torch.manual_seed(0)
    mods = {"s": Modality(shape=(16, C), networks=family), "v": Modality(shape=(5,))}
    model = MultimodalVAE(mods, shared_dim=3)
    assert isinstance(model.modalities["s"].encoder, TemporalConvEncoder if family == "tconv" else
                      TransformerSeqEncoder)
    x = {"s": torch.randn(6, 16, C), "v": torch.randn(6, 5)}
    x["s"][1, 9:] = NAN
    x["s"][2] = NAN  # missing
    out = model(x)
    out.loss.backward()
    assert out.loss.isfinite()
    assert all(p.grad is None or p.grad.isfinite().all() for p in model.parameters())


def test_default_networks_families_and_import_order():
    enc, dec = default_networks((20, C), 4, 8, family="tconv")
    assert isinstance(enc, TemporalConvEncoder) and isinstance(dec, TemporalConvDecoder)
    enc, dec = default_networks((20,), 4, 8, likelihood="categorical", num_classes=K, family="transformer")
    assert isinstance(enc, TransformerSeqEncoder) and isinstance(dec, TransformerSeqDecoder)
    # a fresh interpreter importing this module first (the package, hence networks, still loads before it)
    subprocess.run([sys.executable, "-c", "import mmvae.sequences, mmvae; mmvae.sequences.sequence_networks"],
                   check=True)
