"""A study's grid, read as data from a TOML file and checked before anything runs.

    [study]                      # the axes: models x beta x seeds (x any list-valued [train] option)
    dataset = "polydigits"       # any --dataset value
    epochs = 5
    models = ["independent", "mopoe", "mmvm"]
    beta = [0.5, 1.0, 2.0]
    seeds = [0, 1, 2]
    [train]                      # any other train option; a list is one more axis (e.g. drop_rate = [0.0, 0.5])
    batch_size = 128
    [evaluate]                   # quick, metrics, n_test, device, seed, and any evaluation setting (--set KEY=VALUE)
    quick = true

The train options are not known here (they live in the command line's table, a layer above): the caller passes
them as `options`, a mapping name -> object with `.type` and `.validate(value, source)`.
"""
from __future__ import annotations

import itertools
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..errors import InputError
from ..evaluation.settings import METRICS, EvalSettings
from ..validation import is_a

#: [study] keys -> (type, required); the study owns these train options, so [train] may not repeat them
STUDY_KEYS = {"dataset": (str, True), "epochs": (int, True), "models": (list, True), "beta": (list, True),
              "seeds": (list, True)}
OWNED = ("dataset", "model", "epochs", "beta", "seed")
#: [evaluate] keys that are flags of `mmvae evaluate` (the rest go through --set KEY=VALUE)
EVALUATE_FLAGS = {"quick": bool, "metrics": list, "n_test": int, "device": str, "seed": int}


@dataclass(frozen=True)
class Run:
    """One point of the grid: a model, a beta, a seed and a value for each extra axis."""

    model: str
    beta: float
    seed: int
    axes: dict = field(default_factory=dict)  # extra axis -> value

    @property
    def name(self) -> str:
        """The run folder's name, e.g. `mopoe_beta1_seed0` (extra axes append `_<key><value>`)."""
        parts = [self.model, f"beta{self.beta:g}", f"seed{self.seed}"]
        parts += [f"{k}{_slug(v)}" for k, v in self.axes.items()]
        return "_".join(parts)


def _slug(value) -> str:
    """A value as a piece of a folder name."""
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "x"


@dataclass(frozen=True)
class Grid:
    """A checked grid: what every run shares (`train`, `evaluate`) and the axes that tell runs apart."""

    dataset: str
    epochs: int
    models: list[str]
    betas: list[float]
    seeds: list[int]
    train: dict  # fixed train options
    axes: dict  # train option -> list of values (extra axes)
    evaluate: dict  # the [evaluate] table
    source: str = "grid"

    def runs(self) -> list[Run]:
        """Every run of the grid, models outermost, then beta, seed and the extra axes."""
        keys = list(self.axes)
        return [Run(m, float(b), int(s), dict(zip(keys, rest)))
                for m, b, s, *rest in itertools.product(self.models, self.betas, self.seeds,
                                                        *(self.axes[k] for k in keys))]


def _expect(value, kind: type, where: str) -> None:
    if not is_a(value, kind):
        raise InputError(f"{where} expects {kind.__name__}, got {type(value).__name__} {value!r}")


def _axis(values, kind: type, where: str) -> list:
    """A non-empty list of values of `kind`, without repeats."""
    _expect(values, list, where)
    if not values:
        raise InputError(f"{where} is an empty axis: give at least one value")
    for v in values:
        _expect(v, kind, f"{where} entry")
    if len(set(map(str, values))) < len(values):
        raise InputError(f"{where} repeats a value: {values!r}")
    return list(values)


def _unknown(table: Mapping, known, where: str) -> None:
    bad = sorted(set(table) - set(known))
    if bad:
        raise InputError(f"{where}: unknown key {bad[0]!r}; known: {sorted(known)}")


def _study_table(table, src: str, presets) -> dict:
    where = f"{src}: [study]"
    _expect(table, dict, where)
    _unknown(table, STUDY_KEYS, where)
    for key, (kind, required) in STUDY_KEYS.items():
        if required and key not in table:
            raise InputError(f"{where}: missing key {key!r}")
        _expect(table[key], kind, f"{where} key {key!r}")
    if not table["dataset"]:
        raise InputError(f"{where} key 'dataset' is empty")
    if table["epochs"] < 1:
        raise InputError(f"{where} key 'epochs' must be >= 1, got {table['epochs']}")
    models = _axis(table["models"], str, f"{where} key 'models'")
    for m in models:
        if m not in presets:
            raise InputError(f"{where} key 'models': unknown model {m!r}; choose from {sorted(presets)}")
    betas = _axis(table["beta"], float, f"{where} key 'beta'")
    if any(b < 0 for b in betas):
        raise InputError(f"{where} key 'beta': values must be >= 0, got {betas}")
    return {"dataset": table["dataset"], "epochs": table["epochs"], "models": models, "betas": betas,
            "seeds": _axis(table["seeds"], int, f"{where} key 'seeds'")}


def _train_table(table, src: str, options: Mapping) -> tuple[dict, dict]:
    """(fixed options, extra axes) of [train]; every value checked by its option."""
    where = f"{src}: [train]"
    _expect(table, dict, where)
    owned = sorted(set(table) & set(OWNED))
    if owned:
        raise InputError(f"{where}: key {owned[0]!r} is set by the grid ([study] dataset, models, epochs, beta, "
                         f"seeds), not by [train]")
    _unknown(table, set(options) - set(OWNED), where)
    fixed, axes = {}, {}
    for key, value in table.items():
        if isinstance(value, list):
            axes[key] = _axis(value, options[key].type, f"{where} key {key!r}")
            for v in value:
                options[key].validate(v, where)
        else:
            options[key].validate(value, where)
            fixed[key] = value
    return fixed, axes


def _evaluate_table(table, src: str) -> dict:
    where = f"{src}: [evaluate]"
    _expect(table, dict, where)
    defaults = {f.name: getattr(EvalSettings(), f.name) for f in fields(EvalSettings)}
    _unknown(table, set(EVALUATE_FLAGS) | set(defaults), where)
    for key, value in table.items():
        kind = EVALUATE_FLAGS.get(key) or (int if defaults[key] is None else type(defaults[key]))
        _expect(value, kind, f"{where} key {key!r}")
    for m in table.get("metrics", []):
        if m not in METRICS:
            raise InputError(f"{where} key 'metrics': unknown metric {m!r}; choose from {list(METRICS)}")
    return dict(table)


def parse_grid(data: Mapping, source: str, options: Mapping, presets) -> Grid:
    """A checked Grid from the tables of a grid file; InputError naming `source`, the table and the key."""
    _unknown(data, ("study", "train", "evaluate"), source)
    if "study" not in data:
        raise InputError(f"{source}: missing table [study]")
    study = _study_table(data["study"], source, presets)
    fixed, axes = _train_table(data.get("train", {}), source, options)
    return Grid(**study, train=fixed, axes=axes, evaluate=_evaluate_table(data.get("evaluate", {}), source),
                source=source)


def read_grid(path: str | Path, options: Mapping, presets) -> Grid:
    """The grid of a TOML file (read as data, never executed), checked."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise InputError(f"{path}: cannot read the grid file ({e.strerror or e})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid TOML: {e}") from None
    return parse_grid(data, str(path), options, presets)
