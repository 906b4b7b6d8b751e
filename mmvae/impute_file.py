"""Impute missing modalities of user data stored as `.npz`: one array per modality; a NaN row (a -1 row for tokens)
or an absent array is a missing modality, a NaN / -1 entry inside an observed row is a gap. Both are filled."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .atomic import replace_file
from .datasets.files import AVAIL_SUFFIX, MASK_SUFFIX, is_reserved, read_npz, with_gaps
from .errors import InputError
from .loading import load
from .validation import MISSING_TOKEN, gaps, observed_rows


def impute_npz(checkpoint: Path, src: Path, dst: Path, targets: list[str] | None = None, n_samples: int = 1,
               batch_size: int = 512, draw: bool = False) -> dict:
    """Write `dst` (exactly that path, replaced atomically) with every modality completed: missing rows decoded,
    gaps of observed rows filled, observed entries kept. n_samples > 1 averages the likelihood means (the most
    frequent token for tokens); draw=True writes one draw from the likelihood (counts, tokens) instead of its mean.
    Rows with nothing observed stay NaN (-1 for tokens) and are reported."""
    dst = Path(dst)
    if not dst.parent.is_dir():  # before any work: the folder of the output must exist
        raise InputError(f"--out {dst}: the folder {dst.parent} does not exist")
    if dst.is_dir():
        raise InputError(f"--out {dst} is a folder; give the .npz file to write")
    if draw and n_samples > 1:
        raise InputError("--draw writes one draw from the likelihood; it cannot be combined with --n-samples > 1")
    model = load(checkpoint)
    arrays = read_npz(src, model.names)
    masked = {k: with_gaps(src, arrays, k) for k in arrays if not is_reserved(k)}  # <name>__mask applied
    extras = {k: arrays.pop(k) for k in list(arrays) if is_reserved(k)}  # labels, split, <name>__avail, ...
    arrays.update(masked)
    present = _present(src, arrays, extras, model.names)  # [N, M]
    empty = np.flatnonzero(~present.any(1))
    holes = {k: gaps(torch.from_numpy(a)).numpy() for k, a in arrays.items()}  # [N, *shape]
    gappy = {k: bool(h[present[:, model.names.index(k)]].any()) for k, h in holes.items()}
    targets = targets or [n for i, n in enumerate(model.names) if not present[:, i].all() or gappy.get(n)]
    bad = [t for t in targets if t not in model.names]
    if bad:
        raise InputError(f"unknown target modality {bad[0]!r} (known: {model.names})")
    out = _outputs(model, src, arrays, targets, len(present))
    keep = np.flatnonzero(present.any(1))
    imputed = filled_gaps = 0
    for start in range(0, len(keep), batch_size):
        rows = keep[start:start + batch_size]
        avail = torch.as_tensor(present[rows])
        x = {k: torch.as_tensor(a[rows]) for k, a in arrays.items()}  # missing rows are never read
        filled = model.impute(x, targets=targets, n_samples=n_samples, avail=avail, draw=draw)
        for t in targets:
            value = filled[t]
            if n_samples > 1:
                value = value.mode(0).values if model.modalities[t].likelihood.discrete else value.float().mean(0)
            value = value.cpu().numpy().astype(out[t].dtype)
            missing = ~present[rows, model.names.index(t)]
            out[t][rows[missing]] = value[missing]
            imputed += int(missing.sum())
            if gappy.get(t):  # observed rows: only their gaps are replaced
                obs = rows[~missing]
                hole = holes[t][obs]
                out[t][obs] = np.where(hole, value[~missing], out[t][obs])
                filled_gaps += int(hole.sum())
    kept = {k: v for k, v in extras.items() if not k.endswith((AVAIL_SUFFIX, MASK_SUFFIX))}  # filled now
    replace_file(dst, lambda f: np.savez(f, **out, **kept))  # to a file object: no ".npz" appended
    return {"imputed": imputed, "filled_gaps": filled_gaps, "empty_rows": empty.tolist(), "targets": targets}


def _present(src: Path, arrays: dict, extras: dict, names: list[str]) -> np.ndarray:
    """Which (row, modality) the file observes: not a missing row (`observed_rows`) and not False in
    `<name>__avail`.  -> [N, M] bool"""
    N = next(iter(arrays.values())).shape[0]
    if N == 0:
        raise InputError(f"{src}: the arrays have no rows; nothing to impute")
    present = np.zeros((N, len(names)), dtype=bool)
    for k, a in arrays.items():
        mask = extras.get(k + AVAIL_SUFFIX, np.ones(N, dtype=bool)).astype(bool)
        present[:, names.index(k)] = observed_rows(torch.from_numpy(a)).numpy() & mask
    return present


def _outputs(model, src: Path, arrays: dict, targets: list[str], N: int) -> dict[str, np.ndarray]:
    """Copies of the arrays to fill, with an array of missing rows (NaN, -1 for tokens) for an absent target and
    integer non-token targets (counts) as float32, so that unfilled rows can hold NaN."""
    out = {k: a.copy() for k, a in arrays.items()}
    for t in targets:
        shape, tokens = model.modalities[t].shape, model.modalities[t].likelihood.discrete
        if t not in out:
            if shape is None:
                raise InputError(f"modality {t!r}: absent from {src} and its shape is unknown to the model")
            out[t] = np.full((N, *shape), MISSING_TOKEN, np.int64) if tokens else np.full((N, *shape), np.nan,
                                                                                          np.float32)
        if not tokens and not np.issubdtype(out[t].dtype, np.floating):
            out[t] = out[t].astype(np.float32)
    return out
