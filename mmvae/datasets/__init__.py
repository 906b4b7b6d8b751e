"""Datasets: in-memory multimodal tensors with availability masks, and a name registry for the CLI."""
from __future__ import annotations

from ..errors import InputError
from .base import MultimodalDataset
from .files import from_path, load_image_folder, load_npz_dataset, looks_like_path, read_npz, resolve
from .idx import find_fashion_mnist, load_fashion_mnist, read_idx
from .polydigits import PolyDigits
from .polyfashion import PolyFashion
from .polymnist import PolyMNIST, build_polymnist
from .toy import SharedPrivateToy

#: CLI name -> dataset class; each is called as cls(split=..., **kw)
DATASETS = {"polydigits": PolyDigits, "toy": SharedPrivateToy, "polyfashion": PolyFashion}


def get_dataset(name: str, split: str = "train", **kw) -> MultimodalDataset:
    """The dataset registered as `name` for `split`, built with keyword options `kw`; a `name` that is a path to a
    `.npz` file or an image folder reads your own data (`datasets/files.py`: options `seed`, `test_fraction`)."""
    key = name.lower()
    if key in DATASETS:
        return DATASETS[key](split=split, **kw)
    if looks_like_path(name):
        return from_path(name, split, **kw)
    raise InputError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}, or a path to a .npz file or a folder")


__all__ = ["MultimodalDataset", "PolyDigits", "SharedPrivateToy", "read_idx", "find_fashion_mnist",
           "load_fashion_mnist", "get_dataset", "DATASETS", "from_path", "load_npz_dataset",
           "load_image_folder", "read_npz", "resolve",
           "PolyMNIST", "PolyFashion", "build_polymnist"]
