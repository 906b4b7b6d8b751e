"""Likelihoods p(x_m | z): a decoder's output is the parameter, the log-density is summed over the modality's dims.

Each likelihood builds a Pyro distribution with `.to_event()`, so the same object serves our torch objectives and
the Pyro oracle in the tests.
"""
from __future__ import annotations

import math

import pyro.distributions as pdist
import torch
from torch import Tensor, nn

from .errors import InputError
from .registry import from_spec


class Likelihood(nn.Module):
    """Base class: `dist(params, event_dims)` is the distribution of one sample; `log_prob` sums its event dims."""

    name = "base"
    discrete = False  # True: data are integer tokens and the decoder adds a trailing class dim

    def dist(self, params: Tensor, event_dims: int) -> pdist.TorchDistribution:
        """The Pyro distribution of x given decoder output `params`, with `event_dims` trailing event dims."""
        raise NotImplementedError

    def log_prob(self, params: Tensor, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """log p(x | params) summed over x's per-sample dims, 0 where mask [B] is False (Pyro's `.mask`).
        params [..., B, *out], x [B, *shape] -> [..., B]"""
        d = self.dist(params, x.dim() - 1)
        return (d if mask is None else d.mask(mask)).log_prob(x)

    def mean(self, params: Tensor) -> Tensor:
        """The decoded point estimate (the distribution's mean, or mode for categorical)."""
        return self.dist(params, 0).mean

    def check(self, x: Tensor, modality: str) -> None:
        """Raise InputError if x is not valid data for this likelihood (dtype, range)."""
        if not torch.is_floating_point(x):
            raise InputError(f"modality {modality!r}: {self.name} likelihood expects floating-point data, "
                             f"got {x.dtype}")

    def config(self) -> dict:
        """The spec that rebuilds this likelihood (`make_likelihood(config())`)."""
        return {"name": self.name}


class _LocationScale(Likelihood):
    """Shared code of Gaussian and Laplace: a location from the decoder, a global scale fixed or learned."""

    family: type = pdist.Normal

    def __init__(self, scale: float = 1.0, learn_scale: bool = False):
        super().__init__()
        self.learn_scale, self.initial_scale = learn_scale, float(scale)
        log_scale = torch.tensor(math.log(scale))
        if learn_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    def dist(self, params, event_dims):
        scale = self.log_scale.exp().to(params.dtype).expand_as(params)
        return self.family(params, scale, validate_args=False).to_event(event_dims)

    def config(self):
        # a learned scale is a weight (in the state_dict); the config keeps its starting value, so it stays fixed
        return {"name": self.name, "scale": self.initial_scale, "learn_scale": self.learn_scale}


class Gaussian(_LocationScale):
    """x ~ N(decoder(z), sigma^2 I), sigma fixed or learned."""

    name = "gaussian"
    family = pdist.Normal


class Laplace(_LocationScale):
    """x ~ Laplace(decoder(z), b), b fixed (0.75 as in MoPoE/MMVAE+) or learned."""

    name = "laplace"
    family = pdist.Laplace

    def __init__(self, scale: float = 0.75, learn_scale: bool = False):
        super().__init__(scale, learn_scale)


class _UnitInterval(Likelihood):
    """Pixels in [0, 1]: the decoder gives logits."""

    family: type = pdist.Bernoulli

    def dist(self, params, event_dims):
        return self.family(logits=params, validate_args=False).to_event(event_dims)

    def check(self, x, modality):
        super().check(x, modality)
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise InputError(f"modality {modality!r}: {self.name} likelihood expects values in [0, 1], got range "
                             f"[{lo:.3g}, {hi:.3g}]")


class Bernoulli(_UnitInterval):
    """x ~ Bernoulli(sigmoid(decoder(z))), also used for grey levels in [0, 1]."""

    name = "bernoulli"
    family = pdist.Bernoulli


class ContinuousBernoulli(_UnitInterval):
    """x ~ ContinuousBernoulli(sigmoid(decoder(z))): the normalised version for x in [0, 1] (Loaiza-Ganem &
    Cunningham, NeurIPS 2019)."""

    name = "continuous_bernoulli"
    family = pdist.ContinuousBernoulli

    def mean(self, params):
        """The continuous-Bernoulli mean, stable near logit 0 (its limit there is 1/2)."""
        # the CB mean is numerically unstable near logit 0; its limit there is 1/2
        return self.dist(params.float().clamp(-30, 30), 0).mean.to(params.dtype)


class Categorical(Likelihood):
    """x ~ Categorical(softmax(decoder(z))): tokens [B, T] (or labels [B]); the decoder gives logits [..., C]."""

    name = "categorical"
    discrete = True

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    def dist(self, params, event_dims):
        """The Pyro distribution of x given decoder output `params`, with `event_dims` trailing event dims."""
        return pdist.Categorical(logits=params, validate_args=False).to_event(event_dims)

    def mean(self, params):
        """The most likely token (the mode): argmax of the logits."""
        return params.argmax(-1)

    def check(self, x, modality):
        """InputError unless x holds integer tokens in [0, num_classes)."""
        if torch.is_floating_point(x) or x.dtype == torch.bool:
            raise InputError(f"modality {modality!r}: categorical likelihood expects integer tokens, got {x.dtype}")
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi >= self.num_classes:
            raise InputError(
                f"modality {modality!r}: tokens must lie in [0, {self.num_classes - 1}], got range [{lo}, {hi}]"
            )

    def config(self):
        """The spec that rebuilds this likelihood (`make_likelihood(config())`)."""
        return {"name": self.name, "num_classes": self.num_classes}


LIKELIHOODS = {c.name: c for c in (Gaussian, Laplace, Bernoulli, ContinuousBernoulli, Categorical)}


def make_likelihood(spec: str | dict | Likelihood) -> Likelihood:
    """A likelihood from an instance, a name ("laplace") or a config dict ({"name": "gaussian", "scale": 0.1})."""
    return from_spec(spec, LIKELIHOODS, "likelihood")
