"""Likelihoods p(x_m | z): a decoder's output is the parameter, the log-density is summed over the modality's dims.

Each likelihood builds a Pyro distribution with `.to_event()`, so the same object serves our torch objectives and
the Pyro oracle in the tests.
"""
from __future__ import annotations

import math

import pyro.distributions as pdist
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import InputError
from .registry import from_spec


class Likelihood(nn.Module):
    """Base class: `dist(params, event_dims)` is the distribution of one sample; `log_prob` sums its event dims."""

    name = "base"
    discrete = False  # True: data are integer tokens and the decoder adds a trailing class dim
    counts = False  # True: data are non-negative integer counts and `mean` gives rates (bits per spike applies)

    def dist(self, params: Tensor, event_dims: int) -> pdist.TorchDistribution:
        """The Pyro distribution of x given decoder output `params`, with `event_dims` trailing event dims."""
        raise NotImplementedError

    def log_prob(self, params: Tensor, x: Tensor, mask: Tensor | None = None, present: Tensor | None = None
                 ) -> Tensor:
        """log p(x | params) summed over x's per-sample dims, 0 where mask [B] is False (Pyro's `.mask`); with
        `present` [B, *shape], only the observed entries count (a gap's value in x must be valid, e.g. 0).
        params [..., B, *out], x [B, *shape] -> [..., B]"""
        if present is None:
            d = self.dist(params, x.dim() - 1)
            return (d if mask is None else d.mask(mask)).log_prob(x)
        keep = present if mask is None else present & mask.view(-1, *[1] * (x.dim() - 1))  # [B, *shape]
        return self.dist(params, 0).mask(keep).to_event(x.dim() - 1).log_prob(x)

    def mean(self, params: Tensor) -> Tensor:
        """The decoded point estimate (the distribution's mean, or mode for categorical)."""
        return self.dist(params, 0).mean

    def draw(self, params: Tensor) -> Tensor:
        """A draw x ~ p(x | params) (counts, tokens, noisy values), where `mean` gives the point estimate.
        params [..., B, *out] -> [..., B, *shape]"""
        return self.dist(params, 0).sample()

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
                f"modality {modality!r}: tokens must lie in [0, {self.num_classes - 1}] (-1 marks an entry that "
                f"is not observed), got range [{lo}, {hi}]"
            )

    def config(self):
        """The spec that rebuilds this likelihood (`make_likelihood(config())`)."""
        return {"name": self.name, "num_classes": self.num_classes}


MIN_RATE = 1e-8  # floor of a count rate: keeps log(rate) and its gradient finite where softplus underflows


def softplus_rate(params: Tensor) -> Tensor:
    """The count link: rate = max(softplus(params), MIN_RATE).  [..., B, *shape]"""
    return F.softplus(params).clamp_min(MIN_RATE)


def check_counts(x: Tensor, modality: str, name: str) -> None:
    """InputError unless x is floating-point and holds finite, non-negative, integral values (counts)."""
    if not torch.is_floating_point(x):
        raise InputError(f"modality {modality!r}: {name} likelihood expects counts as a floating-point tensor "
                         f"(e.g. x.float()), got {x.dtype}")
    bad = {"non-finite": ~x.isfinite(), "negative": x < 0, "non-integer": x != x.round()}
    for problem, where in bad.items():
        n = int(where.sum())
        if n:
            example = float(x[where][0])
            raise InputError(f"modality {modality!r}: {name} likelihood expects non-negative integer counts, got "
                             f"{n} {problem} value(s) (e.g. {example:g})")


class Poisson(Likelihood):
    """x ~ Poisson(softplus(decoder(z))), independently per element (spike counts in time bins).

    Link: softplus, not exp. exp(decoder) overflows float32 beyond an output of 88 and its gradient grows with the
    rate, so one large decoder output early in training gives an inf loss; softplus is linear for large outputs
    (gradient at most 1) and about exp for very negative ones, so low rates keep a log-linear shape. `mean` gives
    the rates, `draw` counts.
    """

    name = "poisson"
    counts = True

    def dist(self, params, event_dims):
        """Poisson(softplus(params)) with `event_dims` trailing event dims."""
        return pdist.Poisson(softplus_rate(params), validate_args=False).to_event(event_dims)

    def mean(self, params):
        """The rate softplus(params)."""
        return softplus_rate(params)

    def check(self, x, modality):
        """InputError unless x holds non-negative integer counts (as floats)."""
        check_counts(x, modality, self.name)


class NegativeBinomial(Likelihood):
    """x ~ NB(mean mu = softplus(decoder(z)), dispersion r): var = mu + mu^2 / r, Poisson as r -> infinity.

    Pyro's `NegativeBinomial(total_count=r, logits=log mu - log r)` (the Gamma-Poisson mixture with Gamma shape r
    and mean mu). r is learned (a weight, saved in the state_dict) per feature along the last data axis
    (`features`, e.g. neurons of a [T, neurons] modality) or as one scalar (features=None); it starts at
    `dispersion`. The rate link is softplus, as for `Poisson`.
    """

    name = "negative_binomial"
    counts = True

    def __init__(self, features: int | None = None, dispersion: float = 1.0, learn_dispersion: bool = True):
        super().__init__()
        if features is not None and features < 1:
            raise InputError(f"negative_binomial: features must be a positive integer or None, got {features}")
        if not dispersion > 0:
            raise InputError(f"negative_binomial: dispersion must be > 0, got {dispersion}")
        self.features, self.initial_dispersion, self.learn_dispersion = features, float(dispersion), learn_dispersion
        log_r = torch.full((features,) if features else (), math.log(dispersion))  # [F] or []
        if learn_dispersion:
            self.log_dispersion = nn.Parameter(log_r)
        else:
            self.register_buffer("log_dispersion", log_r)

    def dispersion(self) -> Tensor:
        """r = exp(log_dispersion), [F] (broadcast along the data's last axis) or a scalar."""
        return self.log_dispersion.exp()

    def dist(self, params, event_dims):
        """NB(mean softplus(params), dispersion r) with `event_dims` trailing event dims; r along the last axis."""
        if self.features is not None and params.shape[-1] != self.features:
            raise InputError(f"negative_binomial: {self.features} dispersion features, but the decoder gives "
                             f"{params.shape[-1]} along the last axis")
        log_r = self.log_dispersion.to(params.dtype)
        logits = softplus_rate(params).log() - log_r  # log(mu / r)
        return pdist.NegativeBinomial(total_count=log_r.exp().expand_as(params), logits=logits,
                                      validate_args=False).to_event(event_dims)

    def mean(self, params):
        """The rate mu = softplus(params)."""
        return softplus_rate(params)

    def check(self, x, modality):
        """InputError unless x holds non-negative integer counts (as floats)."""
        check_counts(x, modality, self.name)

    def config(self):
        """The spec that rebuilds this likelihood (`make_likelihood(config())`)."""
        # a learned dispersion is a weight (in the state_dict); the config keeps its shape and starting value
        return {"name": self.name, "features": self.features, "dispersion": self.initial_dispersion,
                "learn_dispersion": self.learn_dispersion}


#: name -> class of every likelihood a config can name: ours, and yours after `mmvae.register_likelihood`
LIKELIHOODS = {c.name: c for c in (Gaussian, Laplace, Bernoulli, ContinuousBernoulli, Categorical, Poisson,
                                   NegativeBinomial)}


def make_likelihood(spec: str | dict | Likelihood) -> Likelihood:
    """A likelihood from an instance, a name ("laplace") or a config dict ({"name": "gaussian", "scale": 0.1})."""
    name = spec if isinstance(spec, str) else spec.get("name") if isinstance(spec, dict) else None
    if isinstance(spec, (str, dict)) and (not isinstance(name, str) or name not in LIKELIHOODS):
        raise InputError(f"unknown likelihood {name!r}; choose one of {sorted(LIKELIHOODS)}, or register your own "
                         "class with mmvae.register_likelihood")
    return from_spec(spec, LIKELIHOODS, "likelihood")
