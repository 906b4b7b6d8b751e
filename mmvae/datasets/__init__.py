"""Datasets: in-memory multimodal tensors with availability masks, and a name registry for the CLI."""
from __future__ import annotations

from ..errors import InputError
from .base import MultimodalDataset
from .idx import find_fashion_mnist, load_fashion_mnist, read_idx
from .polydigits import PolyDigits
from .toy import SharedPrivateToy

#: CLI name -> dataset class; each is called as cls(split=..., **kw)
DATASETS = {"polydigits": PolyDigits, "toy": SharedPrivateToy}


def get_dataset(name: str, split: str = "train", **kw) -> MultimodalDataset:
    """The dataset registered as `name` ("polydigits" or "toy") for `split`, built with keyword options `kw`."""
    key = name.lower()
    if key not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
    return DATASETS[key](split=split, **kw)


__all__ = ["MultimodalDataset", "PolyDigits", "SharedPrivateToy", "read_idx", "find_fashion_mnist",
           "load_fashion_mnist", "get_dataset", "DATASETS"]
