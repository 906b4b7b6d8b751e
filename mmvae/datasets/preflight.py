"""Checks of a data file before it is read: what an `.npz` will ask for, from its zip directory and `.npy` headers,
before a byte of it is decompressed, and a clear message for a file that is not an `.npz` at all; the layout of an
image folder or a PolyMNIST split (no empty modality folder, images of the kind the reader expects), from a
listing of the folders and the header of one image per modality, so it costs a directory scan, not a decode.

The readers call these first, so that a crafted or damaged file is an InputError naming it instead of a
MemoryError, a numpy hint to unpickle it, or gigabytes allocated for a header that lies.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from ..errors import InputError

MAGIC_NPY = b"\x93NUMPY"


def max_input_bytes() -> int:
    """The most an input file's arrays may take in memory: `$MMVAE_MAX_INPUT_BYTES`, else half the machine's RAM."""
    env = os.environ.get("MMVAE_MAX_INPUT_BYTES")
    if env:
        return int(float(env))
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 16 << 30


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n:,} bytes"


def _not_a_zip(path: Path) -> InputError:
    """Why a file that is not a zip archive cannot be a data `.npz`, in terms of what it looks like."""
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError as e:
        return InputError(f"{path}: cannot read it ({e.strerror or e})")
    if head.startswith(MAGIC_NPY):
        return InputError(f"{path}: expected a .npz archive with one array per modality, got a single .npy array; "
                          "save it with numpy.savez(path, name=array)")
    if head.startswith(b"PK"):
        return InputError(f"{path}: not a readable .npz file (a damaged or truncated zip archive)")
    if head[:1] == b"\x80":
        return InputError(f"{path}: not a readable .npz file: it holds a Python pickle, and mmvae never unpickles "
                          "data files")
    if head and b"\x00" not in head:
        lines = head.decode("utf-8", errors="replace").splitlines()
        first = lines[0][:60] if lines else ""
        return InputError(f"{path}: not a readable .npz file: a text file (it starts {first!r}); load it (e.g. "
                          "numpy.loadtxt for CSV) and save the arrays with numpy.savez(path, name=array)")
    return InputError(f"{path}: not a readable .npz file (a zip of .npy arrays, as numpy.savez writes)")


def _member_bytes(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> int:
    """The bytes one `.npy` member will take once loaded, from its header (read through the first kilobytes of
    the compressed stream only); InputError when the header is unreadable or disagrees with the member's size."""
    name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
    try:
        with zf.open(info) as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f, max_header_size=10_000)
            header = f.tell() if f.seekable() else None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise InputError(f"{path}: array {name!r} has no readable .npy header ({e})") from None
    if dtype.hasobject:
        raise InputError(f"{path}: array {name!r} holds Python objects (dtype {dtype}), which would need "
                         "unpickling; only arrays of numbers are read")
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if header is not None and header + nbytes != info.file_size:
        raise InputError(f"{path}: array {name!r} is damaged: its header says shape {tuple(shape)} of {dtype} "
                         f"({_gib(nbytes)}) but the archive holds {_gib(max(info.file_size - header, 0))} for it")
    if shape and shape[0] == 0:  # (a scalar is the reader's to refuse)
        raise InputError(f"{path}: array {name!r} has no rows (shape {tuple(shape)}); each array holds one row per "
                         "sample")
    return nbytes


def check_npz(path: str | os.PathLike) -> None:
    """Before an `.npz` is loaded: it is a zip archive of `.npy` arrays whose headers agree with their sizes and
    whose total fits `max_input_bytes()`. A missing file or a folder is left to the reader to report."""
    path = Path(path)
    if not path.is_file():
        return
    if not zipfile.is_zipfile(path):
        raise _not_a_zip(path)
    try:
        with zipfile.ZipFile(path) as zf:
            members = [i for i in zf.infolist() if not i.is_dir()]
            total = sum(_member_bytes(path, zf, i) for i in members)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise InputError(f"{path}: damaged .npz archive ({e})") from None
    limit = max_input_bytes()
    if total > limit:
        raise InputError(f"{path}: its arrays would take {_gib(total)} in memory, more than the limit of "
                         f"{_gib(limit)} (half this machine's memory; set MMVAE_MAX_INPUT_BYTES to change it); "
                         "not decompressing it")


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _images(folder: Path) -> list[str]:
    return [e.name for e in os.scandir(folder) if e.name.lower().endswith(IMAGE_SUFFIXES)
            and not e.name.startswith(".")]


def _mode(file: Path) -> str:
    """An image's PIL mode from its header only; InputError naming the file when it is not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as img:
            return img.mode
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise InputError(f"{file}: not a readable image ({e})") from None


def check_image_folder(path: str | os.PathLike) -> None:
    """Before an image folder is decoded: each modality sub-folder holds images (an empty one, or one of only
    other files, would silently drop that modality)."""
    path = Path(path)
    if not path.is_dir():
        return
    subs = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    counts = {d: len(_images(d)) for d in subs}
    if any(counts.values()):
        for d, n in counts.items():
            if n == 0:
                others = ", ".join(f"{e.name} ({m})" for e, m in counts.items() if m)
                raise InputError(f"{d}: a modality folder with no images ({'/'.join(IMAGE_SUFFIXES)}), beside "
                                 f"{others}; add its images or move the folder out of {path}")


def check_polymnist_split(split_dir: str | os.PathLike) -> None:
    """Before a PolyMNIST split is paired and decoded: no modality folder m{k} is empty, and the first image of
    each is an RGB(-like) PNG (a folder of grey-level or RGBA images is not PolyMNIST; the reader would convert
    them silently)."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        return
    dirs = sorted((d for d in split_dir.iterdir() if d.is_dir() and d.name[:1] == "m" and d.name[1:].isdigit()),
                  key=lambda d: int(d.name[1:]))
    for d in dirs:
        files = sorted(f for f in _images(d) if f.lower().endswith(".png"))
        if not files:
            if any(_images(e) for e in dirs):
                raise InputError(f"{d}: an empty modality folder (no {{index}}.{{label}}.png files)")
            continue
        mode = _mode(d / files[0])
        if mode not in ("RGB", "P"):
            raise InputError(f"{d / files[0]}: a {mode} image; PolyMNIST images are RGB (3 channels)")
