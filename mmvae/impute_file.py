"""Impute missing modalities of user data stored as `.npz`: one array per modality, NaN rows or absent = missing."""
from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from .errors import InputError
from .loading import load
from .validation import observed_rows


def read_npz(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    """Arrays of a `.npz` checked against the model's modality names and for one common row count."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except ValueError as e:  # object arrays need pickle: refused
        raise InputError(f"{path}: cannot read arrays without unpickling ({e})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise InputError(f"{path}: not a readable .npz file ({e})") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise InputError(f"{path}: expected a .npz archive with one array per modality, got a single "
                         f"{type(loaded).__name__}")
    try:
        with loaded as f:
            arrays = {k: f[k] for k in f.files}
    except ValueError as e:  # object arrays need pickle: refused
        raise InputError(f"{path}: cannot read arrays without unpickling ({e})") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise InputError(f"{path}: damaged .npz archive ({e})") from None
    unknown = sorted(set(arrays) - set(names))
    if unknown:
        raise InputError(f"{path}: array {unknown[0]!r} is not a modality of this model (known: {names})")
    if not arrays:
        raise InputError(f"{path}: no arrays; expected some of {names}")
    for k, a in arrays.items():
        if a.dtype.kind not in "biuf":
            raise InputError(f"{path}: array {k!r} (modality {k!r}): expected numbers (bool, int or float), got "
                             f"dtype {a.dtype}")
        if a.ndim == 0:
            raise InputError(f"{path}: array {k!r} (modality {k!r}): expected [N, ...] rows, got a scalar")
    rows = {k: a.shape[0] for k, a in arrays.items()}
    if len(set(rows.values())) > 1:
        raise InputError(f"{path}: arrays have different numbers of rows (ragged): {rows}")
    return arrays


def impute_npz(checkpoint: Path, src: Path, dst: Path, targets: list[str] | None = None, n_samples: int = 1,
               batch_size: int = 512) -> dict:
    """Write `dst` with every modality completed; rows with nothing observed stay NaN and are reported."""
    model = load(checkpoint)
    arrays = read_npz(src, model.names)
    N = next(iter(arrays.values())).shape[0]
    present = np.zeros((N, len(model.names)), dtype=bool)  # [N, M]
    for k, a in arrays.items():
        present[:, model.names.index(k)] = observed_rows(torch.from_numpy(a)).numpy()
    empty = np.flatnonzero(~present.any(1))
    targets = targets or [n for i, n in enumerate(model.names) if not present[:, i].all()]
    bad = [t for t in targets if t not in model.names]
    if bad:
        raise InputError(f"unknown target modality {bad[0]!r} (known: {model.names})")
    out = {k: a.copy() for k, a in arrays.items()}
    for t in targets:
        shape = model.modalities[t].shape
        if t not in out:
            if shape is None:
                raise InputError(f"modality {t!r}: absent from {src} and its shape is unknown to the model")
            out[t] = np.full((N, *shape), np.nan, dtype=np.float32)
        if not np.issubdtype(out[t].dtype, np.floating):
            out[t] = out[t].astype(np.float32)  # so unfilled rows can hold NaN
    keep = np.flatnonzero(present.any(1))
    imputed = 0
    for start in range(0, len(keep), batch_size):
        rows = keep[start:start + batch_size]
        avail = torch.as_tensor(present[rows])
        x = {k: torch.as_tensor(a[rows]) for k, a in arrays.items()}  # missing rows are never read
        filled = model.impute(x, targets=targets, n_samples=n_samples, avail=avail)
        for t in targets:
            value = filled[t].float().mean(0) if n_samples > 1 else filled[t]
            missing = ~present[rows, model.names.index(t)]
            out[t][rows[missing]] = value.cpu().numpy()[missing]
            imputed += int(missing.sum())
    np.savez(dst, **out)
    return {"imputed": imputed, "empty_rows": empty.tolist(), "targets": targets}
