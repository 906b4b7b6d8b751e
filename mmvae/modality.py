"""A modality: its encoder, decoder and likelihood, and how much its log-likelihood weighs."""
from __future__ import annotations

from torch import Tensor, nn

from .errors import InputError
from .likelihoods import Likelihood, make_likelihood
from .networks import build_network, default_networks


class Modality(nn.Module):
    """encoder: x_m -> posterior parameters [B, 2 * (shared_dim + private_dim_m)] (or a (mu, logvar) pair);
    decoder: [shared, private_m] -> likelihood parameters; weight rescales log p(x_m | z).

    Leave encoder/decoder as None to get ready-made networks for `shape` (convnets for images, MLPs otherwise),
    built once the model knows the latent sizes.
    """

    def __init__(self, encoder: nn.Module | None = None, decoder: nn.Module | None = None,
                 likelihood: str | dict | Likelihood = "gaussian", shape=None, weight: float = 1.0):
        super().__init__()
        self.likelihood = make_likelihood(likelihood)
        shape = shape if shape is not None else getattr(encoder, "in_shape", None)
        self.shape = tuple(shape) if shape is not None else None
        self.weight = float(weight)
        self.encoder, self.decoder = encoder, decoder

    def build(self, name: str, latent_dim: int) -> None:
        """Create default networks where none were given, for a decoder input of `latent_dim`."""
        if self.encoder is not None and self.decoder is not None:
            return
        if self.shape is None:
            raise InputError(f"modality {name!r}: give an encoder and a decoder, or a `shape` to build default ones")
        num_classes = getattr(self.likelihood, "num_classes", None)
        enc, dec = default_networks(self.shape, latent_dim, 2 * latent_dim, self.likelihood.name, num_classes)
        self.encoder = self.encoder if self.encoder is not None else enc
        self.decoder = self.decoder if self.decoder is not None else dec

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, raw logvar) of q(z_shared, z_private | x_m), each [B, D_s + D_m]."""
        out = self.encoder(x)
        if isinstance(out, (tuple, list)):
            return out[0], out[1]
        return out.chunk(2, dim=-1)

    def config(self) -> dict:
        """The JSON spec of this modality (networks as their recorded specs, None when custom)."""
        spec = lambda net: getattr(net, "spec", None)  # noqa: E731
        return {"encoder": spec(self.encoder), "decoder": spec(self.decoder), "likelihood": self.likelihood.config(),
                "shape": list(self.shape) if self.shape else None, "weight": self.weight}

    @classmethod
    def from_config(cls, cfg: dict) -> Modality:
        """A modality rebuilt from `config()`; InputError when it was built with custom networks."""
        if cfg["encoder"] is None or cfg["decoder"] is None:
            raise InputError("this modality was built with custom networks; pass `modalities=` to rebuild the model")
        return cls(build_network(cfg["encoder"]), build_network(cfg["decoder"]), cfg["likelihood"],
                   cfg["shape"], cfg["weight"])
