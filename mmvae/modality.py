"""A modality: its encoder, decoder and likelihood, and how much its log-likelihood weighs; and the registration
of your own encoder, decoder and likelihood classes, so that a checkpoint stores them by name and rebuilds them."""
from __future__ import annotations

from torch import Tensor, nn

from .errors import InputError
from .likelihoods import LIKELIHOODS, Likelihood, make_likelihood
from .networks import FAMILIES, NETWORKS, build_network, default_networks
from .registry import (
    UnregisteredPartError,
    add,
    check_storable,
    decorate,
    record_arguments,
    recorded_config,
    registered_name,
)

#: how to make a stored type known before loading (its code is never imported because a checkpoint names it)
HOW_TO_REGISTER = ("register it with mmvae.{hook} before loading, or pass --import MODULE on the command line "
                   "(in Python you may also pass `modalities=` to mmvae.load)")


def register_network(cls: type | str | None = None, name: str | None = None):
    """Make an encoder/decoder class rebuildable from a checkpoint, under `name` (default: the class name).

    Its constructor's arguments are recorded (they must be JSON-able) unless the class defines `spec` itself.
    Works as `register_network(Cls)` and as `@register_network` / `@register_network("Name")`; returns the class.
    """
    return decorate(cls, name, _register_network)


def _register_network(cls, name):
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise InputError(f"register_network: expects an nn.Module subclass, got {cls!r}")
    if add(NETWORKS, cls, name or cls.__name__, "network", "register_network") and not hasattr(cls, "spec"):
        record_arguments(cls)
    return cls


def register_likelihood(cls: type | str | None = None, name: str | None = None):
    """Make a Likelihood subclass rebuildable by name (`make_likelihood`, checkpoints), under `name` (default: its
    own `name` attribute, else the class name), which becomes its `name`.

    Unless the class defines `config()` itself, its constructor's arguments are recorded and form its config.
    Works as a call and as a decorator, like `register_network`; returns the class.
    """
    return decorate(cls, name, _register_likelihood)


def _register_likelihood(cls, name):
    if not (isinstance(cls, type) and issubclass(cls, Likelihood)):
        raise InputError(f"register_likelihood: expects a subclass of mmvae.likelihoods.Likelihood, got {cls!r}")
    own = cls.__dict__.get("name")
    if name is not None and own is not None and own != name:
        raise InputError(f"register_likelihood: {cls.__qualname__}.name is {own!r}; register it as {own!r} or "
                         f"change its name attribute to {name!r}")
    name = name or own or cls.__name__
    if add(LIKELIHOODS, cls, name, "likelihood", "register_likelihood"):
        cls.name = name
        if "config" not in cls.__dict__:
            record_arguments(cls)
            cls.config = recorded_config(cls)
    return cls


def network_spec(net: nn.Module) -> dict | None:
    """The stored spec of an encoder/decoder: its registered name and arguments; None for an unregistered network
    without `spec` (its code cannot be rebuilt)."""
    name = registered_name(NETWORKS, type(net))
    args = net.__dict__.get("_recorded_args")
    if name is not None and args is not None:
        return {"type": name, **args}
    spec = getattr(net, "spec", None)
    if not isinstance(spec, dict):
        return None
    return {**spec, "type": name or spec.get("type")}

class Modality(nn.Module):
    """encoder: x_m -> posterior parameters [B, 2 * (shared_dim + private_dim_m)] (or a (mu, logvar) pair);
    decoder: [shared, private_m] -> likelihood parameters; weight rescales log p(x_m | z).

    Leave encoder/decoder as None to get ready-made networks for `shape`, built once the model knows the latent
    sizes: `networks` "auto" (convnets for images, temporal convolutions for [T, C] series, MLPs otherwise) or a
    family by name ("mlp", "conv", "tconv", "transformer"; `networks.default_networks`).
    """

    def __init__(self, encoder: nn.Module | None = None, decoder: nn.Module | None = None,
                 likelihood: str | dict | Likelihood = "gaussian", shape=None, weight: float = 1.0,
                 networks: str = "auto"):
        super().__init__()
        if networks not in FAMILIES:
            raise InputError(f"unknown networks {networks!r}; choose one of {list(FAMILIES)}")
        self.networks = networks
        self.likelihood = make_likelihood(likelihood)
        shape = shape if shape is not None else getattr(encoder, "in_shape", None)
        self.shape = tuple(shape) if shape is not None else None
        self.weight = float(weight)
        self.encoder, self.decoder = encoder, decoder
        self.name: str | None = None  # the model's name for it, set by `build`

    def build(self, name: str, latent_dim: int) -> None:
        """Create default networks where none were given, for a decoder input of `latent_dim`."""
        self.name = name
        if self.encoder is not None and self.decoder is not None:
            return
        if self.shape is None:
            raise InputError(f"modality {name!r}: give an encoder and a decoder, or a `shape` to build default ones")
        num_classes = getattr(self.likelihood, "num_classes", None)
        try:
            enc, dec = default_networks(self.shape, latent_dim, 2 * latent_dim, self.likelihood.name, num_classes,
                                        self.networks)
        except InputError as e:
            raise InputError(f"modality {name!r}: {e}") from None
        self.encoder = self.encoder if self.encoder is not None else enc
        self.decoder = self.decoder if self.decoder is not None else dec

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, raw logvar) of q(z_shared, z_private | x_m), each [B, D_s + D_m]."""
        out = self.encoder(x)
        if isinstance(out, (tuple, list)):
            return out[0], out[1]
        return out.chunk(2, dim=-1)

    def config(self) -> dict:
        """The JSON spec of this modality: networks as their registered specs (None when unregistered custom
        ones); InputError naming the argument a registered part was built with that is not JSON."""
        where = f"modality {self.name!r}" if self.name else "a modality"
        specs = {}
        for role in ("encoder", "decoder"):
            net = getattr(self, role)
            specs[role] = network_spec(net)
            if specs[role] is not None:
                check_storable(specs[role], f"{where}: {role} {specs[role]['type']!r}",
                               getattr(net, "__dict__", {}).get("_record_problem"))
        likelihood = self.likelihood.config()
        check_storable(likelihood, f"{where}: likelihood {likelihood.get('name')!r}",
                       self.likelihood.__dict__.get("_record_problem"))
        return {**specs, "likelihood": likelihood, "shape": list(self.shape) if self.shape else None,
                "weight": self.weight, "networks": self.networks}

    @classmethod
    def from_config(cls, cfg: dict, name: str | None = None) -> Modality:
        """A modality rebuilt from `config()` by the registered names it stores; InputError (naming modality
        `name`) when it was built with unregistered custom networks or names a type not registered here."""
        where = f"modality {name!r}" if name else "a modality"
        if cfg["encoder"] is None or cfg["decoder"] is None:
            raise InputError(f"{where} was built with custom networks that were not registered, so the checkpoint "
                             "cannot rebuild them; pass `modalities=` to rebuild the model (next time, register "
                             "their classes with mmvae.register_network before training)")
        for role in ("encoder", "decoder"):
            kind = cfg[role].get("type") if isinstance(cfg[role], dict) else None
            if not isinstance(kind, str) or kind not in NETWORKS:
                raise UnregisteredPartError(f"cannot rebuild {where}: its {role} type {kind!r} is not a registered "
                                            f"network; " + HOW_TO_REGISTER.format(hook="register_network"))
        lik = cfg["likelihood"]
        kind = lik if isinstance(lik, str) else lik.get("name") if isinstance(lik, dict) else None
        if not isinstance(kind, str) or kind not in LIKELIHOODS:
            raise UnregisteredPartError(f"cannot rebuild {where}: its likelihood {kind!r} is not a registered "
                                        f"likelihood; " + HOW_TO_REGISTER.format(hook="register_likelihood"))
        return cls(build_network(cfg["encoder"]), build_network(cfg["decoder"]), lik, cfg["shape"], cfg["weight"],
                   cfg.get("networks", "auto"))
