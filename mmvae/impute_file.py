"""Impute missing modalities of user data stored as `.npz`: one array per modality, NaN rows or absent = missing."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .atomic import replace_file
from .datasets.files import AVAIL_SUFFIX, is_reserved, read_npz
from .errors import InputError
from .loading import load
from .validation import observed_rows


def impute_npz(checkpoint: Path, src: Path, dst: Path, targets: list[str] | None = None, n_samples: int = 1,
               batch_size: int = 512) -> dict:
    """Write `dst` (exactly that path, replaced atomically) with every modality completed; rows with nothing
    observed stay NaN and are reported."""
    dst = Path(dst)
    if not dst.parent.is_dir():  # before any work: the folder of the output must exist
        raise InputError(f"--out {dst}: the folder {dst.parent} does not exist")
    if dst.is_dir():
        raise InputError(f"--out {dst} is a folder; give the .npz file to write")
    model = load(checkpoint)
    arrays = read_npz(src, model.names)
    extras = {k: arrays.pop(k) for k in list(arrays) if is_reserved(k)}  # labels, split, <name>__avail
    N = next(iter(arrays.values())).shape[0]
    if N == 0:
        raise InputError(f"{src}: the arrays have no rows; nothing to impute")
    present = np.zeros((N, len(model.names)), dtype=bool)  # [N, M]
    for k, a in arrays.items():
        mask = extras.get(k + AVAIL_SUFFIX, np.ones(N, dtype=bool)).astype(bool)
        present[:, model.names.index(k)] = observed_rows(torch.from_numpy(a)).numpy() & mask
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
    kept = {k: v for k, v in extras.items() if not k.endswith(AVAIL_SUFFIX)}
    replace_file(dst, lambda f: np.savez(f, **out, **kept))  # to a file object: no ".npz" appended
    return {"imputed": imputed, "empty_rows": empty.tolist(), "targets": targets}
