"""Checkpoints: written atomically, read without unpickling arbitrary objects.

A checkpoint is a dict of plain values and tensors only, so `torch.load(path, weights_only=True)` reads it:

    {"format": "mmvae-checkpoint", "mmvae_version", "torch_version", "pyro_version", "python_version",
     "config": JSON str (the model's `config()`), "trainer": JSON str, "history": JSON str,
     "model": state_dict, "optimizer": state_dict, "scaler": state_dict (AMP only),
     "epoch": completed epochs, "step_in_epoch": batches done in the unfinished epoch,
     "global_step", "step" (= global_step), "rng": {"torch": [state per rank], "cuda": [[state per device] per rank]},
     ...}
"""
from __future__ import annotations

import json
import os
import pickle
import platform
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .errors import CheckpointError

FORMAT = "mmvae-checkpoint"
LAST, BEST = "last.pt", "best.pt"


def versions() -> dict[str, str]:
    """Versions of mmvae, torch, pyro and Python, for checkpoints and run folders."""
    try:
        from . import __version__ as mmvae_version
    except ImportError:
        mmvae_version = "0+unknown"
    try:
        pyro_version = metadata.version("pyro-ppl")
    except metadata.PackageNotFoundError:
        pyro_version = "not installed"
    return {"mmvae": mmvae_version, "torch": str(torch.__version__), "pyro": pyro_version,
            "python": platform.python_version()}


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Write `state` to `path` atomically: a temporary file in the same folder, fsync, then rename onto `path`.

    A crash or an exception midway leaves any previous file at `path` untouched and no temporary file behind.
    The format marker and library versions are added when missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = dict(state)
    state.setdefault("format", FORMAT)
    for name, version in versions().items():
        state.setdefault(f"{name}_version", version)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a checkpoint is an ordinary file
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint dict at `path` (file or run folder), on the CPU, loaded with `weights_only=True` only.

    Raises CheckpointError for a file that carries pickled objects or code (it is never unpickled), a file that
    is not a torch file, and one without the mmvae format marker.
    """
    path = resolve_checkpoint(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
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


def load_model(path: str | os.PathLike, builder: Callable[[dict], nn.Module] | None = None,
               map_location: str | torch.device = "cpu") -> nn.Module:
    """A model rebuilt from a checkpoint's config by `builder` (default `MultimodalVAE.from_config`), weights
    loaded, moved to `map_location`, in eval mode.

    Raises CheckpointError when the stored config cannot be rebuilt or the weights do not fit the built model;
    the message lists the config fields and weights that differ.
    """
    state = read_checkpoint(path)
    cfg = model_config(state)
    if builder is None:
        if cfg is None:
            raise CheckpointError(f"{path}: the checkpoint stores no model config; pass a builder")
        from .model import MultimodalVAE

        builder = MultimodalVAE.from_config
    try:
        model = builder(cfg)
    except (TypeError, KeyError, ValueError, AttributeError) as e:
        made = state.get("mmvae_version", "unknown")
        raise CheckpointError(f"{path}: cannot rebuild the model from the configuration stored in the checkpoint "
                              f"(made with mmvae {made}, this is mmvae {versions()['mmvae']}): "
                              f"{type(e).__name__}: {e}") from None
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as e:
        detail = mismatch_report(state, model) or str(e)
        raise CheckpointError(f"{path}: the weights do not fit the model built from its config; {detail}") from None
    return model.to(map_location).eval()


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete temporary files left by `save_checkpoint` in a process that was killed mid-write."""
    removed = []
    for tmp in Path(folder).glob(".*.pt.*.tmp"):
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed
