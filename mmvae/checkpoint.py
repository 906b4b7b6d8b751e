"""Checkpoints: written atomically, read without unpickling arbitrary objects.

A checkpoint is a dict of plain values and tensors only, so `torch.load(path, weights_only=True)` reads it. Its
layout is defined once, by `TrainingState` (the training fields) and `save_checkpoint` (the format marker and the
`*_version` keys it adds).
"""
from __future__ import annotations

import json
import math
import os
import pickle
import platform
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from .atomic import remove_dead_temporaries, replace_file
from .errors import CheckpointError
from .version import __version__

FORMAT = "mmvae-checkpoint"
LAST, BEST = "last.pt", "best.pt"


def versions() -> dict[str, str]:
    """Versions of mmvae, torch, pyro and Python, for checkpoints and run folders."""
    try:
        pyro_version = metadata.version("pyro-ppl")
    except metadata.PackageNotFoundError:
        pyro_version = "not installed"
    return {"mmvae": __version__, "torch": str(torch.__version__), "pyro": pyro_version,
            "python": platform.python_version()}


def _json(raw, default):
    """A JSON field of a checkpoint decoded (absent: `default`; already decoded: as it is)."""
    if raw is None:
        return default
    return json.loads(raw) if isinstance(raw, str) else raw


@dataclass
class TrainingState:
    """Everything a training checkpoint holds, so that a resumed run continues exactly where it stopped.

    Stored as `to_dict()`: the JSON fields (`config`, `trainer`, `extra`, `history`, `epoch_sums`) as JSON strings,
    state_dicts and RNG states as tensors, counters as numbers, and `step` (= `global_step`, for older readers).
    """

    model: dict  # the model's state_dict
    optimizer: dict  # the optimiser's state_dict
    epoch: int  # completed epochs
    global_step: int  # optimiser steps taken (skipped non-finite steps included)
    step_in_epoch: int = 0  # batches done in the unfinished epoch
    config: dict | None = None  # the model's `config()` (None: the model has none)
    trainer: dict = field(default_factory=dict)  # `Trainer.settings()` plus world size and thread count
    extra: dict = field(default_factory=dict)  # the trainer's `extra_config` (e.g. the dataset)
    history: list[dict] = field(default_factory=list)  # one dict of means per finished epoch
    scaler: dict | None = None  # the AMP GradScaler's state_dict (float16 AMP only)
    nonfinite_streak: int = 0  # consecutive skipped steps so far
    best_val: float = math.inf  # the lowest val/loss so far (what best.pt holds)
    epoch_sums: dict = field(default_factory=dict)  # the unfinished epoch's batch-weighted sums
    epoch_time: float = 0.0  # seconds spent in the unfinished epoch
    rng: dict = field(default_factory=dict)  # {"torch": [state per rank], "cuda": [[state per device] per rank]}

    REQUIRED: ClassVar[tuple[str, ...]] = ("model", "optimizer", "epoch", "global_step")  # the rest may be absent

    def to_dict(self) -> dict:
        """The checkpoint dict (plain values and tensors only); `save_checkpoint` adds the format and versions."""
        state = {"config": json.dumps(self.config), "trainer": json.dumps(self.trainer),
                 "extra": json.dumps(self.extra), "history": json.dumps(self.history),
                 "model": self.model, "optimizer": self.optimizer,
                 "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
                 "step": self.global_step, "nonfinite_streak": self.nonfinite_streak, "best_val": self.best_val,
                 "epoch_sums": json.dumps(self.epoch_sums), "epoch_time": self.epoch_time, "rng": self.rng}
        if self.scaler is not None:
            state["scaler"] = self.scaler
        return state

    @classmethod
    def from_dict(cls, state: dict) -> TrainingState:
        """A checkpoint dict read back; optional keys may be missing (older files), the `REQUIRED` ones may not.

        Raises CheckpointError naming the missing keys, or when the model config is not valid JSON.
        """
        missing = [k for k in cls.REQUIRED if k not in state]
        if missing:
            raise CheckpointError(f"not a training checkpoint: it lacks {', '.join(missing)}")
        return cls(model=state["model"], optimizer=state["optimizer"], epoch=int(state["epoch"]),
                   global_step=int(state["global_step"]), step_in_epoch=int(state.get("step_in_epoch", 0)),
                   config=model_config(state), trainer=_json(state.get("trainer"), {}),
                   extra=_json(state.get("extra"), {}), history=_json(state.get("history"), []),
                   scaler=state.get("scaler"), nonfinite_streak=int(state.get("nonfinite_streak", 0)),
                   best_val=float(state.get("best_val", math.inf)), epoch_sums=_json(state.get("epoch_sums"), {}),
                   epoch_time=float(state.get("epoch_time", 0.0)), rng=state.get("rng", {}))


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Write `state` to `path` atomically: a temporary file in the same folder, fsync, then rename onto `path`.

    A crash or an exception midway leaves any previous file at `path` untouched and no temporary file behind
    (a failed write is a WriteError naming the path and the reason). The format marker and library versions are
    added when missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = dict(state)
    state.setdefault("format", FORMAT)
    for name, version in versions().items():
        state.setdefault(f"{name}_version", version)
    return replace_file(path, lambda f: torch.save(state, f))


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file: `path` itself, or for a run folder its `last.pt` (else `best.pt`, else the newest *.pt)."""
    path = Path(path)
    if path.is_dir():
        for name in (LAST, BEST):
            if (path / name).is_file():
                return path / name
        found = sorted(path.glob("*.pt"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise CheckpointError(f"run folder {path} holds no checkpoint ({LAST}, {BEST} or any *.pt)")
        return found[-1]
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: neither a file nor a run folder")
    return path


def read_checkpoint(path: str | os.PathLike, mmap: bool = False) -> dict:
    """The checkpoint dict at `path` (file or run folder), on the CPU, loaded with `weights_only=True` only.

    Raises CheckpointError for a file that carries pickled objects or code (it is never unpickled), a file that
    is not a torch file, and one without the mmvae format marker. `mmap`: tensors mapped from the file, read
    only when touched (for a look at the settings).
    """
    path = resolve_checkpoint(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        detail = [line.strip() for line in str(e).splitlines() if "Unsupported" in line][:1]
        raise CheckpointError(
            f"{path}: refusing to unpickle arbitrary objects; this file holds more than tensors and plain values "
            f"(it may run code when loaded), and mmvae checkpoints load with weights_only=True only. "
            f"{detail[0] if detail else ''}".rstrip()) from None
    except Exception as e:  # truncated zips, text, legacy pickles: torch raises many types (IndexError, ...)
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or not a torch file): "
                              f"{type(e).__name__}: {e}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        got = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: not an mmvae checkpoint (expected format {FORMAT!r}, got {got!r})")
    return state


def read_trainer_settings(path: str | os.PathLike) -> dict:
    """The trainer settings a checkpoint records (lr, batch size, seed, ...), without reading its weights."""
    state = read_checkpoint(path, mmap=True)
    try:
        settings = _json(state.get("trainer"), {})
    except ValueError:
        settings = None
    if not isinstance(settings, dict):
        raise CheckpointError(f"{path}: the checkpoint's trainer settings are not a JSON object")
    return settings


def model_config(state: dict) -> dict | None:
    """The model configuration stored in a checkpoint dict (None when the model had no `config()`)."""
    raw = state.get("config")
    try:
        return json.loads(raw) if isinstance(raw, str) else raw
    except ValueError as e:
        raise CheckpointError(f"the checkpoint's model config is not valid JSON: {e}") from None


def _flatten(cfg, prefix: str = "") -> dict:
    """A nested config as {"a.b.c": leaf}; lists count as leaves."""
    if not isinstance(cfg, dict):
        return {prefix: cfg}
    out = {}
    for k, v in cfg.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def config_differences(saved: dict | None, current: dict | None, limit: int = 12) -> list[str]:
    """The fields where two model configs differ, as "field: checkpoint X, model Y" lines."""
    if saved is None or current is None:
        return []
    a, b = _flatten(saved), _flatten(current)
    missing = object()
    show = lambda v: "absent" if v is missing else repr(v)  # noqa: E731
    lines = [f"{k}: checkpoint {show(a.get(k, missing))}, model {show(b.get(k, missing))}"
             for k in sorted(set(a) | set(b), key=str) if a.get(k, missing) != b.get(k, missing)]
    return lines[:limit] + ([f"... and {len(lines) - limit} more"] if len(lines) > limit else [])


def weight_differences(saved: dict, model: nn.Module, limit: int = 12) -> list[str]:
    """Missing and unexpected weights and shape mismatches between a saved state_dict and `model`."""
    own = model.state_dict()
    lines = [f"{k}: checkpoint {list(saved[k].shape)}, model {list(own[k].shape)}" for k in saved
             if k in own and hasattr(saved[k], "shape") and tuple(saved[k].shape) != tuple(own[k].shape)]
    lines += [f"{k}: in the model, not in the checkpoint" for k in own if k not in saved]
    lines += [f"{k}: in the checkpoint, not in the model" for k in saved if k not in own]
    return lines[:limit] + ([f"... and {len(lines) - limit} more"] if len(lines) > limit else [])


def mismatch_report(state: dict, model: nn.Module) -> str:
    """Why a checkpoint's weights do not fit `model`: its config fields and weights that differ, and versions."""
    current = model.config() if hasattr(model, "config") else None
    parts = []
    cfg_lines = config_differences(model_config(state), current)
    if cfg_lines:
        parts.append("configuration differs:\n  " + "\n  ".join(cfg_lines))
    w_lines = weight_differences(state.get("model", {}), model)
    if w_lines:
        parts.append("weights differ:\n  " + "\n  ".join(w_lines))
    made, this = state.get("mmvae_version", "unknown"), versions()["mmvae"]
    if made != this:
        parts.append(f"the checkpoint was made with mmvae {made}, this is mmvae {this}")
    return "\n".join(parts)


def load_weights(model: nn.Module, state: dict, failure: str) -> None:
    """`model.load_state_dict(state["model"])`; when they do not fit, CheckpointError("`failure`; what differs")."""
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as e:
        detail = mismatch_report(state, model) or str(e)
        raise CheckpointError(f"{failure}; {detail}") from None


def restore_modules(state: dict, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, source) -> TrainingState:
    """Load the checkpoint dict `state` (read from `source`) into a model, its optimiser and its AMP scaler; the
    rest of it, for the caller's counters.

    Raises CheckpointError when the weights do not fit (saying what differs); warns when the model's config
    differs in ways the weights do not show.
    """
    try:
        restored = TrainingState.from_dict(state)
    except CheckpointError as e:
        raise CheckpointError(f"{source}: {e}") from None
    load_weights(model, state, f"{source}: its weights do not fit this model")
    if hasattr(model, "config"):
        differ = config_differences(restored.config, model.config())
        if differ:
            warnings.warn(f"resuming from {source} with a different model configuration: {'; '.join(differ)}",
                          stacklevel=5)
    optimizer.load_state_dict(restored.optimizer)
    if restored.scaler is not None and scaler.is_enabled():
        scaler.load_state_dict(restored.scaler)
    return restored


def _numel(weights: dict) -> int:
    """Numbers in a state_dict's tensors."""
    return sum(t.numel() for t in weights.values() if isinstance(t, torch.Tensor))


def check_finite_weights(state: dict, source) -> None:
    """CheckpointError when a checkpoint's weights hold NaN or infinities (a diverged run): nothing built from
    them is worth using."""
    bad = [k for k, t in state.get("model", {}).items()
           if isinstance(t, torch.Tensor) and t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise CheckpointError(f"{source}: the checkpoint's weights are not finite (NaN or inf in {len(bad)} "
                              f"tensor(s), e.g. {bad[0]}); the run diverged, so it is not a model to use")


def check_model_size(builder: Callable[[dict | None], nn.Module], cfg: dict | None, state: dict, source) -> None:
    """Before building for real: build on the meta device (no memory) and compare its parameter count with the
    checkpoint's weights; CheckpointError when the stored config asks for a model the weights cannot be (e.g.
    a 200000 x 200000 layer), so that a damaged or crafted config never allocates."""
    try:
        with torch.device("meta"):
            meta = builder(cfg)
    except Exception:  # the real build below reports a config it cannot rebuild; a builder that needs real
        return  # tensors gets no estimate
    wanted, stored = _numel(meta.state_dict()), _numel(state.get("model", {}))
    if wanted > max(stored, 1) * 1.01 + 1024:
        raise CheckpointError(f"{source}: its model config asks for {wanted:,} numbers of weights, but the "
                              f"checkpoint holds {stored:,}; the config does not describe these weights "
                              "(damaged or edited), so the model is not built")


def load_model(path: str | os.PathLike, builder: Callable[[dict | None], nn.Module],
               map_location: str | torch.device = "cpu") -> nn.Module:
    """`builder(config)` for the checkpoint's stored model config, its weights loaded, moved to `map_location`, in
    eval mode (`mmvae.load` passes `MultimodalVAE.from_config`).

    Raises CheckpointError when the stored config cannot be rebuilt or the weights do not fit the built model;
    the message lists the config fields and weights that differ.
    """
    state = read_checkpoint(path)
    cfg = model_config(state)
    check_finite_weights(state, path)
    check_model_size(builder, cfg, state, path)
    try:
        model = builder(cfg)
    except (TypeError, KeyError, ValueError, AttributeError) as e:
        made = state.get("mmvae_version", "unknown")
        raise CheckpointError(f"{path}: cannot rebuild the model from the configuration stored in the checkpoint "
                              f"(made with mmvae {made}, this is mmvae {versions()['mmvae']}): "
                              f"{type(e).__name__}: {e}") from None
    load_weights(model, state, f"{path}: the weights do not fit the model built from its config")
    return model.to(map_location).eval()


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary checkpoint files of writers that are gone (killed mid-write); a live writer's stay."""
    return remove_dead_temporaries(folder, ".*.pt.*.tmp")
