"""PolyFashion: the PolyMNIST recipe applied to Fashion-MNIST, built on first use into the user cache folder.

The source is Debian's `dataset-fashion-mnist` (found with `find_fashion_mnist`) or a `data_root` folder holding the
four IDX files; the backgrounds are scikit-image's bundled photographs. The built layout lives in
`cache_dir()/polyfashion/<key>/`, the key a hash of the source files (path, size, time), the seed, the sizes and the
number of modalities, and is read back with `PolyMNIST`.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import InputError
from .idx import FASHION_FILES, _match, find_fashion_mnist, read_idx
from .polymnist import SKIMAGE_BACKGROUNDS, PolyMNIST, build_polymnist, cache_dir

APT_INSTALL = "apt-get install -y dataset-fashion-mnist"
RECIPE_VERSION = 1


def fashion_files(data_root: str | Path | None = None) -> dict[str, str]:
    """Paths of the four Fashion-MNIST IDX files in `data_root`, or else where Debian installs them.

    InputError naming the apt-get line and `--data-root` when they are absent."""
    if data_root is not None:
        root = Path(data_root).expanduser()
        paths = _match(list(root.iterdir())) if root.is_dir() else None
        where = f"--data-root {root}"
    else:
        paths, where = find_fashion_mnist(), "the Debian package dataset-fashion-mnist (not installed)"
    if paths is None:
        raise InputError(f"Fashion-MNIST not found in {where}: install it with `{APT_INSTALL}`, or pass "
                         f"--data-root DIR, a folder with {', '.join(FASHION_FILES.values())} (plain or .gz)")
    return paths


def polyfashion_root(paths: dict[str, str], seed: int, n_train: int, n_test: int, num_modalities: int) -> Path:
    """The cache folder of one PolyFashion build (it may not exist yet)."""
    files = sorted((str(Path(p).resolve()), Path(p).stat().st_size, Path(p).stat().st_mtime_ns)
                   for p in paths.values())
    spec = dict(recipe=RECIPE_VERSION, files=files, seed=seed, n_train=n_train, n_test=n_test,
                modalities=num_modalities, backgrounds=SKIMAGE_BACKGROUNDS[:num_modalities])
    key = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "polyfashion" / f"m{num_modalities}-{n_train}x{n_test}-seed{seed}-{key}"


def ensure_polyfashion(data_root: str | Path | None = None, n_train: int = 10_000, n_test: int = 2_000,
                       seed: int = 0, num_modalities: int = 5) -> Path:
    """The built PolyFashion layout, building it first if this exact build is not cached. Sizes above the
    number of source images (60k train, 10k test in Fashion-MNIST) are capped to it. Concurrent callers wait on a
    file lock and build once."""
    from filelock import FileLock

    paths = fashion_files(data_root)
    n_train = min(n_train, read_idx(paths["train_labels"]).shape[0])
    n_test = min(n_test, read_idx(paths["test_labels"]).shape[0])
    root = polyfashion_root(paths, seed, n_train, n_test, num_modalities)
    if not root.is_dir():
        root.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(root) + ".lock"):
            if not root.is_dir():
                build_polymnist(Path(paths["train_images"]).parent, root, seed=seed, num_modalities=num_modalities,
                                n_train=n_train, n_test=n_test, prime_cache=True)
    return root


class PolyFashion(PolyMNIST):
    """PolyMNIST-style tuples of Fashion-MNIST images: `num_modalities` RGB 28x28 modalities, 10 classes.

    `n_train` / `n_test` tuples (capped at the source's 60k / 10k images), built with `seed` on first use (see
    `ensure_polyfashion`) from `data_root` or the Debian package, then read with `PolyMNIST`.
    """

    def __init__(self, split: str = "train", data_root: str | Path | None = None, n_train: int = 10_000,
                 n_test: int = 2_000, seed: int = 0, num_modalities: int = 5):
        root = ensure_polyfashion(data_root, n_train=n_train, n_test=n_test, seed=seed,
                                  num_modalities=num_modalities)
        super().__init__(root, split, num_classes=10)
        self.seed = seed
