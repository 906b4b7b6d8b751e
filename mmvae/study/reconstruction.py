"""Self-reconstruction error of a run: x_m decoded from its own unimodal posterior q(z | x_m), the x-axis of the
MMVM paper's figure. `mmvae evaluate` scores cross-modal imputation (x_m from x_S, m not in S) but not this, so
the study computes it from the run's checkpoint and test split, and caches it as RUN/reconstruction.json.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..devices import module_device
from ..evaluation.imputation import row_error
from .runner import write_json_atomic

FILE = "reconstruction.json"


@torch.no_grad()
def self_reconstruction(model, dataset, n: int = 1000, batch_size: int = 500) -> dict:
    """Per modality m, the mean squared error per dim (the mismatch rate for tokens) of the mean of
    p(x_m | z), z ~ q(z | x_m) (model.impute with x_m alone), over the first n test tuples that observe m.
    -> {"per_modality": {m: err}, "mean": mean over modalities, "n_tuples"}"""
    dev = module_device(model)
    names = list(model.names)
    rows = min(n, len(dataset))
    sums = dict.fromkeys(names, 0.0)
    counts = dict.fromkeys(names, 0)
    for start in range(0, rows, batch_size):
        stop = min(rows, start + batch_size)
        avail = dataset.avail[start:stop]  # [B, M]
        for j, m in enumerate(names):
            keep = avail[:, j]
            if not bool(keep.any()):
                continue
            x = dataset.data[m][start:stop][keep].to(dev)
            rec = model.impute({m: x}, targets=[m])[m]
            err = row_error(rec, x, not x.is_floating_point(), x.dim() - 1)  # [B']
            sums[m] += float(err.double().sum())
            counts[m] += int(keep.sum())
    per = {m: sums[m] / counts[m] for m in names if counts[m]}
    return {"per_modality": per, "mean": sum(per.values()) / len(per) if per else float("nan"), "n_tuples": rows}


def run_reconstruction(folder: Path, n: int = 1000, device: str = "auto") -> dict:
    """RUN/reconstruction.json, computed (and written) from the run's checkpoint when missing or for another n."""
    folder = Path(folder)
    path = folder / FILE
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("n_requested") == n:
            return cached
    from ..datasets import get_dataset
    from ..devices import resolve_device
    from ..evaluation.run_files import dataset_spec, read_run_config
    from ..loading import load

    name, kw = dataset_spec(read_run_config(folder))
    model = load(folder, map_location=resolve_device(device)).eval()
    torch.manual_seed(0)
    result = self_reconstruction(model, get_dataset(name, "test", **kw), n=n)
    result["n_requested"] = n
    write_json_atomic(path, result)
    return result
