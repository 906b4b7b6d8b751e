"""Building a part from its spec: a name ("mopoe"), a config dict ({"name": "poe", "prior_expert": True}) or an
instance. Aggregators, likelihoods, priors and objectives all round-trip through `config()` this way.

Your own encoders, decoders and likelihoods join the registries (`NETWORKS`, `LIKELIHOODS`) through
`mmvae.register_network` / `mmvae.register_likelihood` (modality.py), built on the helpers here: a checkpoint then
names them and `mmvae.load` rebuilds them. No stored name ever imports code."""
from __future__ import annotations

import functools
import inspect
import json

from .errors import CheckpointError, InputError


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


class UnregisteredPartError(InputError, CheckpointError):
    """A stored spec names a network or likelihood type that is not registered in this process (an InputError,
    and a CheckpointError when it comes from a checkpoint)."""


def registered_name(registry: dict, cls: type) -> str | None:
    """The name `cls` is registered under in `registry`, None when it is not."""
    return next((n for n, c in registry.items() if c is cls), None)


def add(registry: dict, cls: type, name: str, kind: str, hook: str) -> bool:
    """Put `cls` in `registry` under `name`: False when it already is (a no-op), InputError on a clash."""
    if not isinstance(name, str) or not name:
        raise InputError(f"{hook}: the name must be a non-empty string, got {name!r}")
    if registry.get(name) is cls:
        return False
    if name in registry:
        old = registry[name]
        raise InputError(f"{hook}: the {kind} name {name!r} is taken by {old.__module__}.{old.__qualname__}; "
                         f"register {cls.__module__}.{cls.__qualname__} under another name")
    other = registered_name(registry, cls)
    if other is not None:
        raise InputError(f"{hook}: {cls.__qualname__} is already registered as the {kind} {other!r}")
    registry[name] = cls
    return True


def _plain(value):
    """Tuples as lists, at any depth (as JSON stores them)."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def record_arguments(cls: type) -> None:
    """Wrap `cls.__init__` so each instance of exactly `cls` keeps its bound arguments in `_recorded_args`."""
    init = cls.__init__
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if type(self) is not cls:  # a subclass records its own arguments, or none
            return
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        recorded, problem = {}, None
        for i, (key, p) in enumerate(signature.parameters.items()):
            if i == 0:
                continue  # self
            value = bound.arguments.get(key)
            if p.kind is p.VAR_KEYWORD:
                recorded.update(value or {})
            elif p.kind is p.POSITIONAL_ONLY or (p.kind is p.VAR_POSITIONAL and value):
                problem = f"positional-only argument {key!r} (a spec stores arguments by name)"
            elif p.kind is not p.VAR_POSITIONAL:
                recorded[key] = _plain(value)
        self._recorded_args, self._record_problem = recorded, problem

    cls.__init__ = __init__


def decorate(cls, name, register):
    """`register(cls, name)`, or the decorator that does it when `cls` is None or a name (`@register("X")`)."""
    if isinstance(cls, str):
        cls, name = None, cls
    if cls is None:
        return lambda c: register(c, name)
    return register(cls, name)


def recorded_config(cls):
    """A `config()` for `cls`: its name and recorded arguments (a subclass's instance: the parent's config)."""
    parent = cls.config

    def config(self) -> dict:
        """The spec that rebuilds this likelihood: its registered name and constructor arguments."""
        if "_recorded_args" not in self.__dict__:
            return parent(self)
        return {"name": cls.name, **self._recorded_args}

    return config


def check_storable(spec: dict | None, what: str, problem: str | None = None) -> None:
    """InputError naming `what` (e.g. "modality 'a': encoder 'MyConv'") and the argument a checkpoint cannot store
    (not JSON)."""
    if problem:
        raise InputError(f"{what}: its constructor takes a {problem}; a checkpoint cannot record it")
    for key, value in (spec or {}).items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            text = repr(value)
            text = text if len(text) <= 60 else text[:57] + "..."
            raise InputError(f"{what}: argument {key!r} = {text} ({type(value).__name__}) is not JSON (numbers, "
                             f"strings, lists, dicts), so a checkpoint cannot store it; pass plain values") from None
