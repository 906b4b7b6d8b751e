"""Priors on the shared latent: `StandardNormal` and the data-dependent MM-VAMP mixture (`MMVAMP`)."""
from __future__ import annotations

from ..registry import from_spec
from .mmvamp import MMVAMP
from .normal import StandardNormal

PRIORS = {"normal": StandardNormal, "mmvamp": MMVAMP}


def make_prior(spec):
    """A prior from an instance, a name ("normal", "mmvamp") or a config dict."""
    return from_spec(spec, PRIORS, "prior")


__all__ = ["StandardNormal", "MMVAMP", "make_prior", "PRIORS"]
