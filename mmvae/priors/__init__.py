"""Priors on the shared latent: `StandardNormal` and the data-dependent MM-VAMP mixture (`MMVAMP`)."""
from __future__ import annotations

from ..errors import InputError
from .mmvamp import MMVAMP
from .normal import StandardNormal

PRIORS = {"normal": StandardNormal, "mmvamp": MMVAMP}


def make_prior(spec):
    """A prior from an instance, a name ("normal", "mmvamp") or a config dict."""
    if not isinstance(spec, (str, dict)):
        return spec
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    name = spec.pop("name")
    if name not in PRIORS:
        raise InputError(f"unknown prior {name!r}; choose one of {sorted(PRIORS)}")
    return PRIORS[name](**spec)


__all__ = ["StandardNormal", "MMVAMP", "make_prior", "PRIORS"]
