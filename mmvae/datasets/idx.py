"""IDX files (the MNIST / Fashion-MNIST format), plain or gzip-compressed, and the Debian Fashion-MNIST package.

Layout: magic = 0x00 0x00 <dtype code> <ndim>, then ndim big-endian uint32 sizes, then the big-endian data.
"""
from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

import numpy as np

#: IDX type code -> big-endian numpy dtype
IDX_DTYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
GZIP_MAGIC = b"\x1f\x8b"

FASHION_FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
                 "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in an IDX file (gzip detected from the content), in native byte order."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == GZIP_MAGIC:
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'}; expected "
                         f"00 00 <type in {sorted(f'{c:02x}' for c in IDX_DTYPES)}> <ndim>)")
    dtype, ndim = IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes for {ndim} dimensions)")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    count = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header != count * dtype.itemsize:
        raise ValueError(f"{path}: IDX data holds {len(raw) - header} bytes, shape {shape} of {dtype.name} "
                         f"needs {count * dtype.itemsize}")
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=header)
    return data.astype(dtype.newbyteorder("=")).reshape(shape)  # native byte order, writable copy


def _match(paths: list[Path]) -> dict[str, str] | None:
    """The four Fashion-MNIST files among `paths` (plain or .gz), or None if any is missing."""
    found = {}
    for key, stem in FASHION_FILES.items():
        hits = sorted(p for p in paths if p.name in (stem, stem + ".gz") and p.is_file())
        if hits:
            found[key] = str(hits[0])
    return found if len(found) == len(FASHION_FILES) else None


def find_fashion_mnist(root: str | Path = "/usr/share") -> dict[str, str] | None:
    """Paths of the Debian `dataset-fashion-mnist` files {train,test}_{images,labels}, or None if not installed.

    Asks `dpkg -L dataset-fashion-mnist` when dpkg exists; otherwise searches folders named like `*fashion*`
    one or two levels below `root`.
    """
    if shutil.which("dpkg"):
        listing = subprocess.run(["dpkg", "-L", "dataset-fashion-mnist"], capture_output=True, text=True)
        return _match([Path(line) for line in listing.stdout.split()]) if listing.returncode == 0 else None
    root = Path(root)
    folders = [d for pattern in ("*[Ff]ashion*", "*/*[Ff]ashion*") for d in root.glob(pattern) if d.is_dir()]
    return _match([p for d in folders for p in d.rglob("*-ubyte*")])


def load_fashion_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST images and labels from the Debian package.  -> uint8 [N, 28, 28], uint8 [N]"""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    paths = find_fashion_mnist()
    if paths is None:
        raise FileNotFoundError("Fashion-MNIST not found: install the Debian package dataset-fashion-mnist")
    return read_idx(paths[f"{split}_images"]), read_idx(paths[f"{split}_labels"])
