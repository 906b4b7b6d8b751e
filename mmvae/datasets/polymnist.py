"""PolyMNIST (Sutter et al. 2021) in its published layout, and the builder of that layout from MNIST-format IDX files.

Layout: `root/{train,test}/m{k}/{index}.{label}.png`, one RGB image per file, the tuples paired by `index` across
the folders `m0 .. m{M-1}`. Recipe of the builder (the published one): modality k's background is a random crop of
its own natural image; where the source image's pixel is > 128 the crop is inverted (255 - crop); tuple i shows
source image i in m0 and, in every other modality, a different random source image of the same class.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from ..atomic import replace_file
from ..errors import InputError
from .base import MultimodalDataset
from .idx import FASHION_FILES, _match, read_idx
from .preflight import check_polymnist_split

SPLITS = ("train", "test")
FILE_NAME = re.compile(r"^(\d+)\.(\d+)\.png$")  # {index}.{label}.png
MODALITY_DIR = re.compile(r"^m(\d+)$")
#: natural photographs bundled with scikit-image (the optional extra `mmvae[images]`), one per modality
SKIMAGE_BACKGROUNDS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "colorwheel",
                       "hubble_deep_field", "retina")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
CACHE_VERSION = 1


def cache_dir() -> Path:
    """The user cache folder of mmvae: `$MMVAE_CACHE`, else `$XDG_CACHE_HOME/mmvae`, else `~/.cache/mmvae`."""
    if os.environ.get("MMVAE_CACHE"):
        return Path(os.environ["MMVAE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "mmvae"


# ----- reading the layout -----
def _modality_dirs(split_dir: Path) -> list[Path]:
    """The folders m0 .. m{M-1} of a split, checked to be numbered without gaps."""
    if not split_dir.is_dir():
        raise InputError(f"{split_dir}: no such folder; a PolyMNIST root holds train/ and test/, each with m0, m1, ...")
    found = {int(m.group(1)): d for d in split_dir.iterdir() if d.is_dir() and (m := MODALITY_DIR.match(d.name))}
    if not found:
        raise InputError(f"{split_dir}: no modality folders m0, m1, ...")
    if sorted(found) != list(range(len(found))):
        names = sorted(f"m{k}" for k in found)
        raise InputError(f"{split_dir}: modality folders {names} are not numbered m0..m{len(found) - 1}")
    return [found[k] for k in range(len(found))]


def _scan(folder: Path) -> dict[int, tuple[int, str, int, int]]:
    """index -> (label, file name, size, mtime_ns) of the `{index}.{label}.png` files of one modality folder."""
    table = {}
    for entry in os.scandir(folder):
        if not entry.name.lower().endswith(".png"):
            continue  # e.g. .DS_Store, a README
        m = FILE_NAME.match(entry.name)
        if m is None:
            raise InputError(f"{folder / entry.name}: expected a file name {{index}}.{{label}}.png")
        index = int(m.group(1))
        if index in table:
            raise InputError(f"{folder}: two files for index {index}: {table[index][1]} and {entry.name}")
        st = entry.stat()
        table[index] = (int(m.group(2)), entry.name, st.st_size, st.st_mtime_ns)
    return table


def _pair(dirs: list[Path], tables: list[dict], allow_missing: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices [N] (sorted), labels [N] and availability [N, M] of the tuples, labels checked across modalities."""
    indices = np.array(sorted(set().union(*tables)), dtype=np.int64)
    avail = np.array([[i in t for t in tables] for i in indices.tolist()], dtype=bool).reshape(-1, len(dirs))
    if not allow_missing and not avail.all():
        r, k = np.argwhere(~avail)[0]
        other = next(j for j in range(len(dirs)) if avail[r, j])
        raise InputError(f"{dirs[k] / f'{indices[r]}.{tables[other][indices[r]][0]}.png'} is missing: tuple "
                         f"{indices[r]} is in {dirs[other].name} but not in {dirs[k].name} "
                         f"({int((~avail).sum())} missing in all; allow_missing=True marks them unavailable)")
    labels = np.empty(indices.size, dtype=np.int64)
    for r, i in enumerate(indices.tolist()):
        found = [(t[i][0], d / t[i][1]) for t, d in zip(tables, dirs) if i in t]
        if any(lab != found[0][0] for lab, _ in found):
            raise InputError(f"labels disagree for tuple {i}: " + ", ".join(str(p) for _, p in found))
        labels[r] = found[0][0]
    return indices, labels, avail


def _read_rgb(path: Path) -> np.ndarray:
    """An image file as uint8 RGB.  # [H, W, 3]"""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError) as e:
        raise InputError(f"{path}: cannot read the image ({e})") from None


def _decode(dirs: list[Path], tables: list[dict], indices: np.ndarray, avail: np.ndarray) -> np.ndarray:
    """Every image of the split, once, as uint8 (zeros where unavailable).  # [N, M, 3, H, W]"""
    images = None
    for k, (d, table) in enumerate(zip(dirs, tables)):
        for r, i in enumerate(indices.tolist()):
            if not avail[r, k]:
                continue
            img = _read_rgb(d / table[i][1]).transpose(2, 0, 1)  # [3, H, W]
            if images is None:
                images = np.zeros((indices.size, len(dirs), *img.shape), dtype=np.uint8)
            if img.shape != images.shape[2:]:
                raise InputError(f"{d / table[i][1]}: image of {img.shape[2]}x{img.shape[1]} pixels, expected "
                                 f"{images.shape[4]}x{images.shape[3]} like the others")
            images[r, k] = img
    return images


def _decoded_cache(split_dir: Path, tables: list[dict]) -> tuple[Path, str]:
    """The .npz that caches a split's decoded images, and the fingerprint of the files it must match."""
    key = hashlib.sha1(str(split_dir.resolve()).encode()).hexdigest()[:16]
    listing = hashlib.sha1(repr([sorted(t.items()) for t in tables]).encode()).hexdigest()
    return cache_dir() / "decoded" / f"{split_dir.name}-{key}.npz", f"{CACHE_VERSION}:{listing}"


def _load_cached(path: Path, fingerprint: str) -> np.ndarray | None:
    """The cached images if `path` holds them for exactly these files, else None."""
    try:
        with np.load(path) as f:
            return f["images"] if str(f["fingerprint"]) == fingerprint else None
    except (OSError, KeyError, ValueError):
        return None


def _save_cached(path: Path, fingerprint: str, images: np.ndarray) -> None:
    """Write the cache atomically (temp file in the same folder, then os.replace); an unwritable cache is skipped."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_file(path, lambda f: np.savez(f, images=images, fingerprint=np.array(fingerprint)))
    except OSError:
        pass


def _num_classes(root: Path, labels: np.ndarray) -> int | None:
    """1 + the largest label in both splits (so that train and test agree), read from the file names only."""
    top = int(labels.max()) if labels.size else -1
    for split in SPLITS:
        if (root / split / "m0").is_dir():
            names = (FILE_NAME.match(e.name) for e in os.scandir(root / split / "m0"))
            top = max([top] + [int(m.group(2)) for m in names if m])
    return top + 1 if top >= 0 else None


class PolyMNIST(MultimodalDataset):
    """The PolyMNIST release layout `root/{split}/m{k}/{index}.{label}.png` as an in-memory dataset.

    Modalities `m0 .. m{M-1}` (as many as there are `m*` folders), each `[N, 3, H, W]` float32 in [0, 1] with a
    Laplace likelihood; `.labels` the class per tuple, `.indices` the file index per tuple (sorted). A label that
    differs across the modalities of a tuple is an InputError naming the files; so is a tuple missing from some
    modality folder, unless `allow_missing` (then that entry is marked unavailable).
    The PNGs are decoded once into uint8 and kept in an .npz under `cache_dir()/decoded` (`cache=False`: not
    written or read), keyed by the folder and checked against the files' names, sizes and times.
    `seed` is accepted for the CLI's sake and ignored: the layout fixes the data.
    """

    per_sample = ("labels", "indices")

    def __init__(self, root: str | Path, split: str = "train", seed: int | None = None, *,
                 allow_missing: bool = False, cache: bool = True, num_classes: int | None = None):
        check_polymnist_split(Path(root).expanduser() / str(split))  # empty or non-RGB modality folders
        if split not in SPLITS:
            raise InputError(f"split must be one of {SPLITS}, got {split!r}")
        root = Path(root).expanduser()
        dirs = _modality_dirs(root / split)
        tables = [_scan(d) for d in dirs]
        indices, labels, avail = _pair(dirs, tables, allow_missing)
        if not indices.size:
            raise InputError(f"{root / split}: no {{index}}.{{label}}.png files in {', '.join(d.name for d in dirs)}")
        path, fingerprint = _decoded_cache(root / split, tables)
        images = _load_cached(path, fingerprint) if cache else None
        if images is None:
            images = _decode(dirs, tables, indices, avail)  # [N, M, 3, H, W] uint8
            if cache:
                _save_cached(path, fingerprint, images)
        data = {d.name: torch.from_numpy(images[:, k]).float().div_(255.0) for k, d in enumerate(dirs)}
        for k, d in enumerate(dirs):
            data[d.name][torch.from_numpy(~avail[:, k])] = float("nan")  # missing entries are never read
        super().__init__(data, avail=torch.from_numpy(avail), targets=torch.from_numpy(labels),
                         likelihoods=dict.fromkeys(data, "laplace"),
                         num_classes=num_classes or _num_classes(root, labels))
        self.indices = torch.from_numpy(indices)  # [N]
        self.root, self.split = root, split


# ----- building the layout -----
def load_backgrounds(num_modalities: int, folder: str | Path | None = None) -> list[np.ndarray]:
    """One uint8 RGB image per modality: the first `num_modalities` image files of `folder` (sorted by name), or
    else scikit-image's bundled photographs (`SKIMAGE_BACKGROUNDS`).  -> M x [H, W, 3]"""
    if folder is not None:
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise InputError(f"--backgrounds {folder}: no such folder")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if len(files) < num_modalities:
            raise InputError(f"--backgrounds {folder}: {len(files)} image file(s), need one per modality "
                             f"({num_modalities})")
        return [_read_rgb(p) for p in files[:num_modalities]]
    try:
        import skimage.data
    except ImportError:
        raise InputError("no background images: install scikit-image (pip install 'mmvae[images]') for its "
                         "bundled photographs, or pass --backgrounds DIR (one image per modality)") from None
    if num_modalities > len(SKIMAGE_BACKGROUNDS):
        raise InputError(f"scikit-image ships {len(SKIMAGE_BACKGROUNDS)} background photographs, "
                         f"{num_modalities} modalities need --backgrounds DIR")
    return [np.asarray(getattr(skimage.data, name)())[..., :3] for name in SKIMAGE_BACKGROUNDS[:num_modalities]]


def read_source(idx_dir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The four MNIST-format IDX files of a folder (plain or .gz).  -> split -> (uint8 [N, H, W], int64 [N])"""
    idx_dir = Path(idx_dir).expanduser()
    paths = _match(list(idx_dir.iterdir())) if idx_dir.is_dir() else None
    if paths is None:
        raise InputError(f"{idx_dir}: expected the IDX files {', '.join(FASHION_FILES.values())} (or .gz)")
    out = {}
    for split in SPLITS:
        try:
            images, labels = read_idx(paths[f"{split}_images"]), read_idx(paths[f"{split}_labels"])
        except ValueError as e:
            raise InputError(str(e)) from None
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise InputError(f"{paths[f'{split}_images']}: images {images.shape} and labels {labels.shape} do not "
                             f"pair as [N, H, W] and [N]")
        out[split] = (images.astype(np.uint8), labels.astype(np.int64))
    return out


def pick_sources(labels: np.ndarray, n: int, num_modalities: int, rng: np.random.Generator) -> np.ndarray:
    """Source image per (tuple, modality): tuple i shows image i in m0 and M - 1 other distinct images of its class
    elsewhere.  # [n, M]"""
    pools = {c: np.flatnonzero(labels == c) for c in np.unique(labels[:n]).tolist()}
    small = {c: p.size for c, p in pools.items() if p.size < num_modalities}
    if small:
        raise InputError(f"class(es) {sorted(small)} have {sorted(small.values())} source image(s); "
                         f"{num_modalities} modalities need {num_modalities} distinct images of each class")
    out = np.empty((n, num_modalities), dtype=np.int64)
    out[:, 0] = np.arange(n)
    for i in range(n):
        pool = pools[int(labels[i])]
        own = int(np.searchsorted(pool, i))  # position of image i in its class pool
        pick = rng.choice(pool.size - 1, num_modalities - 1, replace=False)
        out[i, 1:] = pool[pick + (pick >= own)]  # skip image i itself
    return out


def compose(sources: np.ndarray, background: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The recipe for one modality: a random crop of `background` per image, inverted where the source is > 128.

    sources uint8 [n, H, W], background uint8 [Hb, Wb, 3]  -> uint8 [n, H, W, 3]"""
    n, h, w = sources.shape
    if background.shape[0] < h or background.shape[1] < w:
        raise InputError(f"a background image of {background.shape[1]}x{background.shape[0]} pixels is smaller "
                         f"than the {w}x{h} source images")
    top = rng.integers(0, background.shape[0] - h + 1, size=n)  # [n]
    left = rng.integers(0, background.shape[1] - w + 1, size=n)  # [n]
    crop = background[(top[:, None] + np.arange(h))[:, :, None], (left[:, None] + np.arange(w))[:, None, :]]
    return np.where(sources[..., None] > 128, 255 - crop, crop).astype(np.uint8)  # [n, H, W, 3]


def _write_split(folder: Path, images: list[np.ndarray], labels: np.ndarray) -> None:
    """folder/m{k}/{i}.{label}.png for every tuple i and modality k (PNG without time stamps: same pixels, same
    bytes)."""
    from PIL import Image

    for k, imgs in enumerate(images):
        (folder / f"m{k}").mkdir(parents=True)
        for i, (img, label) in enumerate(zip(imgs, labels.tolist())):
            Image.fromarray(img).save(folder / f"m{k}" / f"{i}.{label}.png", format="PNG")


def _prime_cache(split_dir: Path, images: np.ndarray) -> None:
    """Store the pixels a split was built from as its decoded cache, so that the first `PolyMNIST` read skips
    decoding the PNGs.  images uint8 [N, M, 3, H, W]"""
    tables = [_scan(d) for d in _modality_dirs(split_dir)]
    _save_cached(*_decoded_cache(split_dir, tables), images)


def build_polymnist(idx_dir: str | Path, out: str | Path, backgrounds: str | Path | None = None, seed: int = 0,
                    num_modalities: int = 5, n_train: int | None = None, n_test: int | None = None, *,
                    prime_cache: bool = False) -> dict:
    """Write the PolyMNIST layout `out/{train,test}/m{k}/{i}.{label}.png` from the IDX files in `idx_dir`.

    `n_train`/`n_test` tuples (default: one per source image; tuple i shows source image i in m0). The same
    arguments give the same bytes. The layout is built in a temporary sibling folder and moved into place, so
    `out` is either absent, or complete; an `out` that exists and is not empty is an InputError. `prime_cache`
    also stores the pixels as the decoded cache that `PolyMNIST(out, split)` reads.
    -> {"out": path, "train": n_train, "test": n_test, "modalities": M}
    """
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"--out {out}: already exists and is not empty; choose a new folder")
    if num_modalities < 1:
        raise InputError(f"--modalities must be >= 1, got {num_modalities}")
    source = read_source(idx_dir)
    bgs = load_backgrounds(num_modalities, backgrounds)
    sizes = {"train": n_train, "test": n_test}
    for split, n in sizes.items():
        have = source[split][0].shape[0]
        if n is not None and not 1 <= n <= have:
            raise InputError(f"n_{split} must lie in [1, {have}] (the {split} source images), got {n}")
        sizes[split] = have if n is None else n
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    built = {}
    try:
        for s, split in enumerate(SPLITS):
            images, labels = source[split]
            rng = np.random.default_rng([seed, s])
            src = pick_sources(labels, sizes[split], num_modalities, rng)  # [n, M]
            mods = [compose(images[src[:, k]], bgs[k], rng) for k in range(num_modalities)]  # M x [n, H, W, 3]
            _write_split(tmp / split, mods, labels[:sizes[split]])
            if prime_cache:
                built[split] = np.stack(mods, 1).transpose(0, 1, 4, 2, 3)  # [n, M, 3, H, W]
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for split, images in built.items():
        _prime_cache(out / split, images)
    return {"out": str(out), "train": sizes["train"], "test": sizes["test"], "modalities": num_modalities}
