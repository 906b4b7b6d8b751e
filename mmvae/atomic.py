"""Atomic file replacement: a reader sees the old file or the new one, never half of either."""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path


def replace_file(path: str | os.PathLike, write: Callable) -> Path:
    """Replace `path` with what `write(binary_file)` writes: a temp file named by our pid in the same folder
    (so one writer never removes another's), fsync, os.replace; the temp file never outlives a failure."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Replace `path` atomically with `text` (UTF-8)."""
    return replace_file(path, lambda f: f.write(text.encode()))


def write_json(path: str | os.PathLike, obj, default=None) -> Path:
    """Replace `path` atomically with the indented JSON of `obj` and a final newline."""
    return write_text(path, json.dumps(obj, indent=2, default=default) + "\n")
