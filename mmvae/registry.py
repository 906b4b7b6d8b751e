"""Building a part from its spec: a name ("mopoe"), a config dict ({"name": "poe", "prior_expert": True}) or an
instance. Aggregators, likelihoods, priors and objectives all round-trip through `config()` this way."""
from __future__ import annotations

from .errors import InputError


def from_spec(spec, registry: dict, kind: str):
    """registry[spec["name"]](**rest) for a name or a dict; anything else is taken as a ready-made instance."""
    if not isinstance(spec, (str, dict)):
        return spec
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    name = spec.pop("name", None)
    if name not in registry:
        raise InputError(f"unknown {kind} {name!r}; choose one of {sorted(registry)}")
    try:
        return registry[name](**spec)
    except TypeError as e:  # an option the class does not take
        raise InputError(f"{kind} {name!r}: {e}") from None
