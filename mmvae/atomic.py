"""Atomic file replacement: a reader sees the old file or the new one, never half of either."""
from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

from .errors import WriteError

_COUNTER = itertools.count()
_TEMP = re.compile(r"^\..+\.(\d+)(?:-\d+)?\.tmp$")  # .NAME.PID-N.tmp (and .NAME.PID.tmp of 0.2)


def temp_path(path: Path) -> Path:
    """The temp file beside `path` that this process writes it through: `.NAME.PID-N.tmp`, unique per process and
    per write, so one writer never touches (or removes) another's."""
    return path.with_name(f".{path.name}.{os.getpid()}-{next(_COUNTER)}.tmp")


def temp_writer(name: str) -> int | None:
    """The pid in a temp file name `temp_path` made (None for any other name)."""
    m = _TEMP.match(name)
    return int(m.group(1)) if m else None


def process_alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine (a process we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_dead_temporaries(folder: str | os.PathLike, pattern: str = ".*.tmp") -> list[Path]:
    """Delete the temp files in `folder` matching `pattern` whose writer (the pid in the name) is gone; files of a
    live writer, and names without a pid, are left alone."""
    removed = []
    for tmp in sorted(Path(folder).glob(pattern)):
        pid = temp_writer(tmp.name)
        if pid is None or (pid != os.getpid() and process_alive(pid)):
            continue
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed


class _Recorded:
    """A file object that remembers the first OSError its writes raised: torch.save reports a failed write as a
    RuntimeError ("unexpected pos ...") and the real cause (ENOSPC, EFBIG) would be lost."""

    def __init__(self, f):
        self._f, self.error = f, None

    def write(self, data):
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def __getattr__(self, name):
        return getattr(self._f, name)


def open_temp(tmp: Path):
    """Open the temp file for writing (the one place a fault-injection test replaces)."""
    return open(tmp, "wb")


def fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX); a no-op where folders cannot be opened or synced."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _os_cause(e: BaseException | None) -> OSError | None:
    """The first OSError in an exception's chain (`__cause__`, `__context__`)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def replace_file(path: str | os.PathLike, write: Callable) -> Path:
    """Replace `path` with what `write(binary_file)` writes: a temp file named by our pid in the same folder
    (so one writer never removes another's), fsync, os.replace; the temp file never outlives a failure.

    A failed write (disk full, read-only folder, file-size limit, I/O error) raises WriteError("cannot write
    PATH: REASON") and leaves any previous file at `path` as it was."""
    path = Path(path)
    tmp, rec = temp_path(path), None
    try:
        with open_temp(tmp) as f:
            rec = _Recorded(f)
            write(rec)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as e:
        cause = (rec.error if rec is not None else None) or _os_cause(e)
        if cause is None:
            raise
        raise WriteError(path, cause) from e
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
    fsync_dir(path.parent)
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Replace `path` atomically with `text` (UTF-8)."""
    return replace_file(path, lambda f: f.write(text.encode()))


def write_json(path: str | os.PathLike, obj, default=None) -> Path:
    """Replace `path` atomically with the indented JSON of `obj` and a final newline."""
    return write_text(path, json.dumps(obj, indent=2, default=default) + "\n")
