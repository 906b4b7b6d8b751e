"""Your own data: a `.npz` file (one array per modality) or a folder (one sub-folder of images per modality).

`.npz`: every array is a modality named by its key, except the reserved keys `labels` (int `[N]`, class >= 0),
`split` (int `[N]`: 0 = train, 1 = test), `<name>__avail` (bool `[N]`, False where modality `name` is missing),
`<name>__mask` (bool, the shape of `name`: numpy's masked-array mask, True = masked; save a masked array `a` as
`name=a.data, name__mask=np.ma.getmaskarray(a)`) and `<name>__likelihood` (a string such as "poisson": the
likelihood of modality `name`, chosen over the one picked from its dtype).
The missing-data rule (`base.missing_rows`): a row that is entirely NaN (float), entirely -1 (integer tokens or
counts) or entirely masked is missing. A row with only some NaN / -1 / masked entries is observed and kept as it
is: NaN padding at the end of a variable-length float `[N, T, C]` sequence, a dropped channel, -1 padding of a
token row (masked entries become NaN in floats and -1 in integers). Folder: `root/<modality>/<stem>.png|jpg`,
tuples paired by file stem, a stem absent from a sub-folder is that modality missing; optional `root/labels.csv`
and `root/split.csv` (lines `stem,value`). Without a split, a fraction `test_fraction` (10%) of the tuples, drawn
by `seed`, is the test split.

Likelihoods from dtype, shape and range unless `<name>__likelihood` (or `likelihoods=`) names one: float
`[N, C, H, W]` in [0, 1] and uint8 `[N, C, H, W]` (scaled by 1/255) are images with the Laplace likelihood (as
PolyDigits); other floats are Gaussian; bool arrays are Bernoulli; other integer arrays are categorical tokens with
num_classes = max + 1 over the whole file (-1 is padding, not a class). Integer count data: name "poisson" (or
"negative_binomial"); the counts are then read as float32, their -1 entries as NaN gaps.
"""
from __future__ import annotations

import csv
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from .base import MISSING_TOKEN, MultimodalDataset, missing_rows
from .preflight import check_image_folder, check_npz

RESERVED = ("labels", "split")
AVAIL_SUFFIX = "__avail"
MASK_SUFFIX = "__mask"
LIKELIHOOD_SUFFIX = "__likelihood"
SUFFIXES = (AVAIL_SUFFIX, MASK_SUFFIX, LIKELIHOOD_SUFFIX)
COUNT_LIKELIHOODS = ("poisson", "negative_binomial")  # integer arrays read as float counts, not as tokens
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
TEST_FRACTION = 0.1
SPLITS = {"train": 0, "test": 1}


def is_reserved(key: str) -> bool:
    """Whether an array key of a data `.npz` is not a modality: `labels`, `split`, `<name>__avail`, `__mask` or
    `__likelihood`."""
    return key in RESERVED or key.endswith(SUFFIXES)


def read_npz(path: Path, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Arrays of a `.npz` (read without unpickling), checked for numbers and one common row count.

    With `names` (a model's modalities), every key must be one of them or reserved (`is_reserved`).
    """
    check_npz(path)  # the archive's headers and sizes, before anything is decompressed
    path = Path(path)
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
    if names is not None:
        unknown = sorted(k for k in set(arrays) - set(names) if not is_reserved(k))
        if unknown:
            raise InputError(f"{path}: array {unknown[0]!r} is not a modality of this model (known: {names})")
    if not [k for k in arrays if not is_reserved(k)]:
        what = "no arrays" if not arrays else f"no modality arrays, only {sorted(arrays)}"
        raise InputError(f"{path}: {what}" + (f"; expected some of {names}" if names else ""))
    for k, a in arrays.items():
        if k.endswith(LIKELIHOOD_SUFFIX):
            if a.dtype.kind != "U" or a.ndim != 0:
                raise InputError(f"{path}: array {k!r}: expected one string naming a likelihood (e.g. "
                                 f"{k}=\"poisson\"), got dtype {a.dtype} and shape {list(a.shape)}")
            continue
        if a.dtype.kind not in "biuf":
            raise InputError(f"{path}: array {k!r} (modality {k!r}): expected numbers (bool, int or float), got "
                             f"dtype {a.dtype}")
        if a.ndim == 0:
            raise InputError(f"{path}: array {k!r} (modality {k!r}): expected [N, ...] rows, got a scalar")
    rows = {k: a.shape[0] for k, a in arrays.items() if not k.endswith(LIKELIHOOD_SUFFIX)}
    if len(set(rows.values())) > 1:
        raise InputError(f"{path}: arrays have different numbers of rows (ragged): {rows}")
    return arrays


def nan_rows(a: np.ndarray) -> np.ndarray:
    """Observed rows by the one rule (`base.missing_rows`): not entirely NaN / -1 / masked.  # [N] bool"""
    return ~missing_rows(a)


def _masked(path: Path, arrays: dict, name: str) -> np.ndarray:
    """Modality `name` with `<name>__mask` applied: a numpy masked array (True = masked), or the plain array."""
    a, mask = arrays[name], arrays.get(name + MASK_SUFFIX)
    if mask is None:
        return a
    if mask.dtype.kind not in "biu" or mask.shape != a.shape or not np.isin(mask, (0, 1)).all():
        raise InputError(f"{path}: array {name + MASK_SUFFIX!r}: expected a bool mask of the shape of {name!r} "
                         f"{list(a.shape)} (True = masked), got dtype {mask.dtype} and shape {list(mask.shape)}")
    return np.ma.masked_array(a, mask.astype(bool))


def with_gaps(path: Path, arrays: dict, name: str) -> np.ndarray:
    """Modality `name` of a read `.npz` with `<name>__mask` applied: masked entries as NaN (floats) or -1."""
    return _filled(path, name, _masked(path, arrays, name))


def _avail_mask(path: Path, arrays: dict, name: str) -> np.ndarray:
    """Rows where modality `name` is observed: not missing by the rule (`nan_rows`, masks included), and True in
    `<name>__avail` when given; NaN / -1 inside an observed row are gaps, infinities an error.  # [N]"""
    a = _masked(path, arrays, name)
    rows = nan_rows(a)
    mask = arrays.get(name + AVAIL_SUFFIX)
    if mask is not None:
        if mask.dtype.kind not in "biu" or mask.shape != (a.shape[0],) or not np.isin(mask, (0, 1)).all():
            raise InputError(f"{path}: array {name + AVAIL_SUFFIX!r}: expected a bool [N] mask, got dtype "
                             f"{mask.dtype} and shape {list(mask.shape)}")
        rows = rows & mask.astype(bool)
    if a.dtype.kind == "f":
        flat = np.where(np.ma.getmaskarray(a), 0.0, np.ma.getdata(a)).reshape(a.shape[0], -1)[rows]  # [N_obs, D]
        bad = np.flatnonzero(np.isinf(flat).any(1))
        if bad.size:
            raise InputError(f"{path}: array {name!r} (modality {name!r}): row {int(np.flatnonzero(rows)[bad[0]])} "
                             f"holds an infinite value; a gap inside a row is NaN, a missing row is entirely NaN")
    return rows


def _filled(path: Path, name: str, a: np.ndarray) -> np.ndarray:
    """A masked array's data with its masked entries as gaps: NaN for floats, -1 for integers (as int64), NaN for
    uint8 images (scaled by 1/255 to floats)."""
    if not np.ma.isMaskedArray(a):
        return a
    gone = np.ma.getmaskarray(a)
    a = np.ma.getdata(a)
    if a.dtype.kind == "b":
        if (gone.reshape(a.shape[0], -1).any(1) & ~gone.reshape(a.shape[0], -1).all(1)).any():
            raise InputError(f"{path}: array {name + MASK_SUFFIX!r}: a bool modality has no gaps; mask whole rows "
                             f"of {name!r} only")
        return a
    if a.dtype == np.uint8 and a.ndim == 4:
        a = a.astype(np.float32) / 255.0
    a = a.astype(np.int64) if a.dtype.kind in "iu" else a.copy()
    a[gone] = np.nan if a.dtype.kind == "f" else MISSING_TOKEN
    return a


def _modality(path: Path, name: str, a: np.ndarray, rows: np.ndarray,
              hint: str | dict | None = None) -> tuple[torch.Tensor, str | dict]:
    """The tensor `[N, ...]` of one modality and its likelihood: `hint` when given, else picked from dtype, shape
    and value range. Missing rows of integer data become -1, gaps (-1, masked) stay gaps."""
    a = _filled(path, name, a)
    if a.ndim == 1:
        a = a[:, None]
    hint_name = hint.get("name") if isinstance(hint, dict) else hint
    if a.dtype.kind in "iu" and hint_name in COUNT_LIKELIHOODS:
        seen = a[rows]
        if seen.size and seen.min() < MISSING_TOKEN:
            raise InputError(f"{path}: array {name!r} (modality {name!r}): counts must be >= 0 (-1 for a gap), "
                             f"got {int(seen.min())}")
        t = np.where(a == MISSING_TOKEN, np.nan, a).astype(np.float32)  # counts as floats, gaps as NaN
        t[~rows] = np.nan
        return torch.from_numpy(t), hint
    if a.dtype == np.uint8 and a.ndim == 4:
        return torch.from_numpy(a.astype(np.float32) / 255.0), hint or "laplace"
    if a.dtype.kind == "b":
        return torch.from_numpy(a.astype(np.float32)), hint or "bernoulli"
    if a.dtype.kind in "iu":
        seen = a[rows]
        if seen.size and seen.min() < MISSING_TOKEN:
            raise InputError(f"{path}: array {name!r} (modality {name!r}): integer tokens must be >= 0 (-1 for "
                             f"padding), got {int(seen.min())}")
        t = torch.from_numpy(np.where(rows.reshape(-1, *[1] * (a.ndim - 1)), a, MISSING_TOKEN).astype(np.int64))
        top = int(seen.max()) + 1 if seen.size else 0
        return t, hint if hint not in (None, "categorical") else {"name": "categorical", "num_classes": max(top, 1)}
    t = torch.from_numpy(a.astype(np.float32))
    seen = a[rows]
    seen = seen[~np.isnan(seen)]
    in_unit = seen.size > 0 and seen.min() >= 0.0 and seen.max() <= 1.0
    return t, hint or ("laplace" if a.ndim == 4 and in_unit else "gaussian")


def _int_rows(path: Path, key: str, a: np.ndarray, n: int, allowed: tuple | None = None) -> np.ndarray:
    """A reserved per-tuple integer array (`labels`, `split`) checked: integer `[N]`, values >= 0 (or allowed)."""
    if a.dtype.kind not in "biu" or a.shape != (n,):
        raise InputError(f"{path}: array {key!r}: expected integers [N] = [{n}], got dtype {a.dtype} and shape "
                         f"{list(a.shape)}")
    a = a.astype(np.int64)
    bad = ~np.isin(a, allowed) if allowed is not None else a < 0
    if bad.any():
        want = f"one of {list(allowed)}" if allowed is not None else ">= 0"
        raise InputError(f"{path}: array {key!r}: values must be {want}, got {int(a[bad][0])} "
                         f"(row {int(np.flatnonzero(bad)[0])})")
    return a


def held_out(n: int, split: np.ndarray | None, seed: int, test_fraction: float) -> np.ndarray:
    """Which of n tuples are test: `split == 1`, else a fraction drawn by `seed` (at least one of two or more)."""
    if split is not None:
        return split == SPLITS["test"]
    if not 0.0 <= test_fraction < 1.0:
        raise InputError(f"test_fraction must lie in [0, 1), got {test_fraction!r}")
    n_test = max(1, round(test_fraction * n)) if n >= 2 and test_fraction > 0 else 0
    is_test = np.zeros(n, dtype=bool)
    is_test[np.random.default_rng(seed).permutation(n)[:n_test]] = True
    return is_test


def build_dataset(path: Path, data: dict[str, np.ndarray], avail: np.ndarray, labels: np.ndarray | None,
                  split_rows: np.ndarray | None, split: str, seed: int, test_fraction: float,
                  likelihoods: dict | None = None) -> MultimodalDataset:
    """The `split` of tuples `data` (`[N, ...]` per modality, availability `avail [N, M]`): rows with nothing
    observed are left out, likelihoods are `likelihoods[name]` or picked from each modality's whole column."""
    if split not in SPLITS:
        raise InputError(f"split must be one of {list(SPLITS)}, got {split!r}")
    tensors, liks = {}, {}
    for j, (name, a) in enumerate(data.items()):
        tensors[name], liks[name] = _modality(path, name, a, avail[:, j], (likelihoods or {}).get(name))
    keep = avail.any(1)  # [N]
    is_test = held_out(len(keep), split_rows, seed, test_fraction)
    rows = np.flatnonzero(keep & (is_test == (split == "test")))
    if rows.size == 0:
        raise InputError(f"{path}: the {split} split is empty ({int(keep.sum())} tuples with something observed)")
    idx = torch.from_numpy(rows)
    num_classes = int(labels.max()) + 1 if labels is not None and labels.size else None
    ds = MultimodalDataset({k: t[idx] for k, t in tensors.items()}, torch.from_numpy(avail[rows]),
                           None if labels is None else torch.from_numpy(labels[rows]), likelihoods=liks,
                           num_classes=num_classes)
    ds.source = str(path)
    return ds


def _base_name(key: str) -> str | None:
    """The modality a `<name>__avail` / `__mask` / `__likelihood` key belongs to; None for other keys."""
    suffix = next((x for x in SUFFIXES if key.endswith(x)), None)
    return key[:-len(suffix)] if suffix else None


def load_npz_dataset(path, split: str = "train", seed: int = 0, test_fraction: float = TEST_FRACTION,
                     likelihoods: dict[str, str | dict] | None = None) -> MultimodalDataset:
    """The `split` of a data `.npz` (format in the module docstring); `likelihoods` (name -> likelihood) win
    over the file's `<name>__likelihood` strings, which win over the dtype's default."""
    path = Path(path)
    arrays = read_npz(path)
    names = [k for k in arrays if not is_reserved(k)]
    orphans = [k for k in arrays if _base_name(k) is not None and _base_name(k) not in names]
    if orphans:
        what = "names the likelihood of" if orphans[0].endswith(LIKELIHOOD_SUFFIX) else "masks"
        raise InputError(f"{path}: array {orphans[0]!r} {what} no modality (modalities: {names})")
    unknown = sorted(set(likelihoods or {}) - set(names))
    if unknown:
        raise InputError(f"{path}: likelihood given for {unknown[0]!r}, which is not a modality (modalities: {names})")
    n = arrays[names[0]].shape[0]
    avail = np.stack([_avail_mask(path, arrays, k) for k in names], 1)  # [N, M]
    labels = _int_rows(path, "labels", arrays["labels"], n) if "labels" in arrays else None
    split_rows = _int_rows(path, "split", arrays["split"], n, (0, 1)) if "split" in arrays else None
    hints = {k: str(arrays[k + LIKELIHOOD_SUFFIX]) for k in names if k + LIKELIHOOD_SUFFIX in arrays}
    hints.update(likelihoods or {})
    return build_dataset(path, {k: _masked(path, arrays, k) for k in names}, avail, labels, split_rows, split, seed,
                         test_fraction, hints)


def _read_image(file: Path) -> np.ndarray:
    """One image as uint8 `[C, H, W]`: C = 1 for grey-level files, else 3 (RGB; alpha dropped)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as img:
            grey = img.mode in ("1", "L", "LA", "I", "I;16", "F")
            a = np.asarray(img.convert("L" if grey else "RGB"))
    except (OSError, UnidentifiedImageError) as e:
        raise InputError(f"{file}: not a readable image ({e})") from None
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def _stems(folder: Path) -> dict[str, Path]:
    """stem -> image file of one modality's sub-folder; two files with one stem are an error."""
    out: dict[str, Path] = {}
    for file in sorted(folder.iterdir()):
        if file.suffix.lower() in IMAGE_SUFFIXES and not file.name.startswith("."):
            if file.stem in out:
                raise InputError(f"{file}: two images with stem {file.stem!r} (also {out[file.stem].name})")
            out[file.stem] = file
    return out


def _read_csv(file: Path, stems: list[str], kind) -> np.ndarray | None:
    """Values of `file` (lines `stem,value`, an optional header) for every stem, via `kind(value)`; None if absent."""
    if not file.exists():
        return None
    table = {}
    with file.open(newline="") as f:
        for i, row in enumerate(csv.reader(f)):
            if not row or (i == 0 and row[0].strip().lower() == "stem"):
                continue
            if len(row) != 2:
                raise InputError(f"{file}: line {i + 1}: expected 'stem,value', got {','.join(row)!r}")
            try:
                table[row[0].strip()] = kind(row[1].strip())
            except (ValueError, KeyError):
                raise InputError(f"{file}: line {i + 1}: bad value {row[1]!r} for stem {row[0]!r}") from None
    missing = [s for s in stems if s not in table]
    if missing:
        raise InputError(f"{file}: no entry for stem {missing[0]!r} ({len(missing)} stems have none)")
    return np.array([table[s] for s in stems], dtype=np.int64)


def _label(value: str) -> int:
    """A class label: an integer >= 0."""
    if int(value) < 0:
        raise ValueError(value)
    return int(value)


def load_image_folder(path, split: str = "train", seed: int = 0,
                      test_fraction: float = TEST_FRACTION) -> MultimodalDataset:
    """The `split` of an image folder (format in the module docstring)."""
    check_image_folder(path)  # no empty modality folder, before anything is decoded
    path = Path(path)
    folders = {d.name: _stems(d) for d in sorted(path.iterdir()) if d.is_dir() and not d.name.startswith(".")}
    folders = {k: v for k, v in folders.items() if v}
    if not folders:
        raise InputError(f"{path}: no sub-folder with images ({'/'.join(IMAGE_SUFFIXES)}); expected one per modality")
    stems = sorted(set().union(*folders.values()))
    data, avail = {}, np.zeros((len(stems), len(folders)), dtype=bool)  # [N, M]
    for j, (name, files) in enumerate(folders.items()):
        first = _read_image(next(iter(files.values())))
        a = np.zeros((len(stems), *first.shape), dtype=np.uint8)  # [N, C, H, W]
        for i, stem in enumerate(stems):
            if stem in files:
                img = _read_image(files[stem])
                if img.shape != first.shape:
                    raise InputError(f"{files[stem]}: image of shape {list(img.shape)} [C, H, W], but modality "
                                     f"{name!r} has {list(first.shape)} (from {next(iter(files.values())).name})")
                a[i], avail[i, j] = img, True
        data[name] = a
    labels = _read_csv(path / "labels.csv", stems, _label)
    split_rows = _read_csv(path / "split.csv", stems, lambda v: SPLITS[v.lower()] if v.isalpha() else int(v))
    if split_rows is not None and not np.isin(split_rows, (0, 1)).all():
        raise InputError(f"{path / 'split.csv'}: values must be train/test or 0/1")
    return build_dataset(path, data, avail, labels, split_rows, split, seed, test_fraction)


def looks_like_path(name: str) -> bool:
    """Whether a `--dataset` value names a file or folder rather than a registered dataset."""
    return name.lower().endswith(".npz") or "/" in name or "\\" in name or Path(name).exists()


def resolve(name: str) -> str:
    """A dataset name as a run's config.json stores it: a path made absolute, a registered name unchanged."""
    return str(Path(name).expanduser().resolve()) if looks_like_path(name) else name


def from_path(name: str, split: str = "train", seed: int = 0, test_fraction: float = TEST_FRACTION,
              likelihoods: dict[str, str | dict] | None = None) -> MultimodalDataset:
    """The `split` of the `.npz` file or image folder at `name` (`likelihoods`: name -> likelihood, `.npz` only);
    InputError if it does not exist."""
    path = Path(name).expanduser()
    if path.is_dir():
        if likelihoods:
            raise InputError(f"{path}: an image folder's likelihoods are fixed (laplace); likelihoods= is for .npz")
        return load_image_folder(path, split, seed, test_fraction)
    if path.is_file():
        return load_npz_dataset(path, split, seed, test_fraction, likelihoods)
    raise InputError(f"{path}: no such file or folder (a dataset is a registered name, a .npz file or a folder)")
