"""The train settings, each spelled once in `OPTIONS`: its config key, `--flag`, type, default, range and help.

A setting comes from the table's default, then a TOML/JSON `--config` file, then the command line (each later one
wins). Everything else (argparse arguments, the known config keys, the type and range checks, the `--help` text)
is derived from the table, so a new setting is one line here.
"""
from __future__ import annotations

import argparse
import json
import math
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..validation import is_a


def check_device(value: str, source: str) -> None:
    """Accept `auto` or a torch device that exists here: a `cuda` device without CUDA is an InputError."""
    if value == "auto":
        return
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise InputError(f"{source}: option 'device' expects auto, cpu, cuda or cuda:N, got {value!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"{source}: option 'device' is {value!r} but CUDA is not available here")


@dataclass(frozen=True)
class Option:
    """One train setting. `name` is its config key and argparse dest; the flag is `name` with dashes
    (`batch_size` -> `--batch-size`). A `bool` option is a switch (`--amp` sets True). `default=None` means
    "the preset's default". `low`/`high` bound the value (inclusive); `check(value, source)` checks more."""

    name: str
    type: type
    default: object
    help: str
    low: float | None = None
    high: float | None = None
    check: Callable[[object, str], None] | None = None

    @property
    def flag(self) -> str:
        """The command-line spelling, e.g. `--batch-size`."""
        return "--" + self.name.replace("_", "-")

    def validate(self, value, source: str) -> None:
        """InputError naming `source`, the option and the value unless `value` has the type and lies in range."""
        if not is_a(value, self.type):
            raise InputError(f"{source}: option {self.name!r} expects {self.type.__name__}, "
                             f"got {type(value).__name__} {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"{source}: option {self.name!r} must be a finite number, got {value!r}")
        if self.low is not None and value < self.low:
            raise InputError(f"{source}: option {self.name!r} must be >= {self.low}, got {value!r}")
        if self.high is not None and value > self.high:
            bound = f"lie in [{self.low:g}, {self.high:g}]" if self.low is not None else f"be <= {self.high}"
            raise InputError(f"{source}: option {self.name!r} must {bound}, got {value!r}")
        if self.check is not None:
            self.check(value, source)


#: the train settings, in the order of `--help` and of `settings` in a run's config.json
OPTIONS = (
    Option("dataset", str, "polydigits", "polydigits | toy | polyfashion | polymnist | spikes | basicmotions | "
           "PATH.npz | FOLDER (your own data)"),
    Option("data_root", str, "auto", "polyfashion: folder of the four Fashion-MNIST IDX files (auto: where "
           "Debian's dataset-fashion-mnist installs them); polymnist: the release folder (train/, test/)"),
    Option("n_train", int, None, "training tuples of polydigits, toy, polyfashion or spikes", low=1),
    Option("n_test", int, None, "test tuples of polydigits, toy, polyfashion or spikes", low=1),
    Option("model", str, "mopoe", "preset: mvae | mmvae | mopoe | mmvm | mmvm_paper | mmvaeplus | dmvae | "
           "independent | avg"),
    Option("epochs", int, 5, "passes over the training set (in all: a resumed run counts its epochs)", low=1),
    Option("batch_size", int, 128, "training tuples per step", low=1),
    Option("lr", float, 1e-3, "Adam learning rate (with --resume: the checkpoint's unless given)", low=0.0),
    Option("networks", str, "auto", "ready-made networks: auto (conv for images, temporal conv for [T, C] series, "
           "MLP otherwise) | mlp | conv | tconv | transformer, or per modality: m0=tconv,m1=mlp"),
    Option("shared_dim", int, None, "size of the shared latent", low=1),
    Option("private_dim", int, None, "size of each modality's private latent, 0 for none", low=0),
    Option("beta", float, None, "weight of the KL term", low=0.0),
    Option("aggregator", str, None, "replace the preset's aggregator: poe | mopoe | moe | avg | none | gated | "
           "lowrank"),
    Option("regularisers", str, None, "latent-structure terms added to the loss, NAME=WEIGHT,...: separation, "
           "contrastive, geometry (e.g. contrastive=0.1)"),
    Option("drop_rate", float, 0.0, "chance that each training (sample, modality) goes missing", low=0.0, high=1),
    Option("seed", int, 0, "seeds the data, the dropped entries, the initial weights and the training order"),
    Option("device", str, "auto", "auto | cpu | cuda | cuda:N", check=check_device),
    Option("amp", bool, False, "mixed precision, on CUDA only"),
    Option("max_nonfinite", int, 10, "stop after this many consecutive steps with a non-finite loss", low=1),
)
BY_NAME = {o.name: o for o in OPTIONS}


def defaults() -> dict:
    """Every train setting at its default, in table order (a fresh dict: change it freely)."""
    return {o.name: o.default for o in OPTIONS}


def _shown(value) -> str:
    """A default as `--help` prints it."""
    if value is None:
        return "the preset's"
    if value is False:
        return "off"
    return str(value)


def add_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, names: Iterable[str] | None = None,
                shown: dict | None = None) -> None:
    """A `--flag` on `parser` (or an argument group) for each option in `names` (default: all). Argparse leaves an
    option not given at None, so that a config file can set it; the help shows the default, `shown` replacing the
    table's."""
    shown = defaults() | (shown or {})
    for o in OPTIONS if names is None else [BY_NAME[n] for n in names]:
        text = f"{o.help} (default: {_shown(shown[o.name])})"
        if o.type is bool:
            parser.add_argument(o.flag, dest=o.name, action="store_true", default=None, help=text)
        else:
            metavar = {int: "N", float: "X"}.get(o.type, o.name.upper())
            parser.add_argument(o.flag, dest=o.name, type=o.type, default=None, metavar=metavar, help=text)


def read_config(path: Path) -> dict:
    """A config file as a dict: TOML, or JSON for a `.json` name. Data only: nothing in it is executed."""
    try:
        with open(path, "rb") as f:
            loaded = json.load(f) if path.suffix.lower() == ".json" else tomllib.load(f)
    except OSError as e:
        raise InputError(f"{path}: cannot read the config file ({e.strerror or e})") from None
    except (tomllib.TOMLDecodeError, ValueError) as e:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        kind = "JSON" if path.suffix.lower() == ".json" else "TOML"
        raise InputError(f"{path}: not valid {kind}: {e}") from None
    if not isinstance(loaded, dict):
        raise InputError(f"{path}: expected a table of options, got {type(loaded).__name__}")
    return loaded


def check_settings(cfg: dict, source: str) -> None:
    """Each known option has the expected type and lies in range, else InputError naming the option and the value.
    A None value ("the default") passes; keys that are not options are left to the caller."""
    for key, value in cfg.items():
        if key in BY_NAME and value is not None:
            BY_NAME[key].validate(value, source)


def config_settings(path: Path) -> dict:
    """The options of a config file, checked: an unknown key, a wrong type or a value out of range is an
    InputError naming the file."""
    loaded = read_config(path)
    unknown = set(loaded) - set(BY_NAME)
    if unknown:
        raise InputError(f"{path}: unknown option(s) {sorted(unknown)}; known: {sorted(BY_NAME)}")
    check_settings(loaded, str(path))
    return loaded


def settings(args: argparse.Namespace, base: dict | None = None) -> dict:
    """The settings of a run: `base` (default: `defaults()`) < the `--config` file, if any < the command line."""
    cfg = defaults() if base is None else dict(base)
    if getattr(args, "config", None):
        cfg.update(config_settings(args.config))
    given = {o.name: getattr(args, o.name) for o in OPTIONS if getattr(args, o.name, None) is not None}
    check_settings(given, "command line")
    return cfg | given
