"""Datasets: in-memory multimodal tensors with availability masks, and a name registry for the CLI."""
from __future__ import annotations

from ..errors import InputError
from .base import MultimodalDataset, missing_rows
from .basicmotions import BasicMotions, make_basicmotions
from .files import from_path, load_image_folder, load_npz_dataset, looks_like_path, read_npz
from .files import resolve as resolve_path
from .idx import find_fashion_mnist, load_fashion_mnist, read_idx
from .polydigits import PolyDigits
from .polyfashion import PolyFashion
from .polymnist import PolyMNIST, build_polymnist
from .spikes import SyntheticSpikes
from .toy import SharedPrivateToy


# The command line's datasets take the same keywords for both splits (a run's config.json stores them once):
# `seed`, and where they apply `n_train` / `n_test` (tuples per split; None: the dataset's default) and `data_root`.
def make_polydigits(split: str = "train", seed: int = 0, n_train: int | None = None, n_test: int | None = None,
                    **kw):
    """PolyDigits (scikit-learn's digits on photo backgrounds; 2866 / 364 tuples by default); kw: its options."""
    kw.setdefault("n_tuples", n_train if split == "train" else n_test)
    return PolyDigits(split, seed=seed, **kw)


def make_toy(split: str = "train", seed: int = 0, n_train: int | None = None, n_test: int | None = None, **kw):
    """SharedPrivateToy (Gaussian data with known shared and private factors; 4000 / 1000 samples by default)."""
    kw.setdefault("n", n_train if split == "train" else n_test)
    return SharedPrivateToy(split, seed=seed, **kw)


def make_spikes(split: str = "train", seed: int = 0, n_train: int | None = None, n_test: int | None = None,
                data_root: str | None = None, **kw):
    """SyntheticSpikes (Poisson counts of 5 subjects [20 bins, 24-40 neurons], 4 conditions, known shared and
    private factors; 2000 / 500 trials by default); kw: its options. `data_root` is unused (the data are made)."""
    kw.setdefault("n", n_train if split == "train" else n_test)
    return SyntheticSpikes(split, seed=seed, **kw)


def make_polyfashion(split: str = "train", seed: int = 0, data_root: str | None = None, n_train: int | None = None,
                     n_test: int | None = None, **kw):
    """PolyFashion (the PolyMNIST recipe on Fashion-MNIST; 10k / 2k tuples by default), built on first use."""
    return PolyFashion(split, data_root=data_root, seed=seed, n_train=n_train or 10_000,
                       n_test=n_test or 2_000, **kw)


def make_polymnist(split: str = "train", seed: int = 0, data_root: str | None = None, **kw):
    """The published PolyMNIST release (or any folder in its layout) at `data_root`; kw: PolyMNIST's options."""
    if data_root is None:
        raise InputError("--dataset polymnist reads a folder in the PolyMNIST release layout (train/ and test/, "
                         "each with m0 ... m4 of {index}.{label}.png): pass it with --data-root DIR, or build one "
                         "with `mmvae data polymnist --idx DIR --out DIR`")
    return PolyMNIST(data_root, split, seed=seed, **kw)


#: CLI name -> dataset factory; each is called as factory(split=..., **kw)
DATASETS = {"polydigits": make_polydigits, "toy": make_toy, "polyfashion": make_polyfashion,
            "polymnist": make_polymnist, "spikes": make_spikes, "basicmotions": make_basicmotions}


def resolve(name: str) -> str:
    """A dataset name as a run's config.json stores it: a registered name unchanged (it wins over a local folder of
    the same name; write ./NAME for the folder), a path made absolute."""
    return name if name.lower() in DATASETS else resolve_path(name)


def get_dataset(name: str, split: str = "train", **kw) -> MultimodalDataset:
    """The dataset registered as `name` for `split`, built with keyword options `kw`; a `name` that is a path to a
    `.npz` file or an image folder reads your own data (`datasets/files.py`: options `seed`, `test_fraction`)."""
    key = name.lower()
    if key in DATASETS:
        return DATASETS[key](split=split, **kw)
    if looks_like_path(name):
        return from_path(name, split, **kw)
    raise InputError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}, or a path to a .npz file or a folder")


__all__ = ["MultimodalDataset", "missing_rows", "BasicMotions", "make_basicmotions",
           "PolyDigits", "SharedPrivateToy", "SyntheticSpikes", "read_idx", "find_fashion_mnist",
           "load_fashion_mnist", "get_dataset", "DATASETS", "from_path", "load_npz_dataset",
           "load_image_folder", "read_npz", "resolve",
           "PolyMNIST", "PolyFashion", "build_polymnist"]
