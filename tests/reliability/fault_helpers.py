"""Faults for the reliability tests: a real size-limited or read-only filesystem where this machine allows one
(a tmpfs mount, as root), otherwise a fault-injecting file object in place of `mmvae.atomic.open_temp`; and a
trained tiny run (the `tiny` dataset of cli_driver.py) to damage.

Which method a case used is printed and collected in `METHODS` for the closing summary.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import cli_driver  # noqa: F401 (registers the `tiny` dataset for in-process cli.main)
from reliability_helpers import METHODS

from mmvae import atomic, cli

TRAIN = ["train", "--dataset", "tiny", "--device", "cpu", "--quiet", "--batch-size", "32"]


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """`mmvae ARGS` in this process: (exit code, stdout, stderr); stderr never holds a traceback."""
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return code, out, err


def one_error_line(err: str, command: str) -> str:
    """The single `mmvae COMMAND: error: ...` line of stderr (other lines may be warnings)."""
    lines = [line for line in err.splitlines() if line.startswith(f"mmvae {command}: ")]
    assert len(lines) == 1, err
    return lines[0]


def train_run(folder: Path, epochs: int = 1, *extra: str) -> Path:
    """A trained tiny run in `folder` (in this process)."""
    assert cli.main([*TRAIN, "--epochs", str(epochs), "--out", str(folder), *extra]) == 0
    return folder


class FaultyFile:
    """A binary file whose writes fail with `err` once `budget` bytes went through (0: the first write fails)."""

    def __init__(self, f, budget: int, err: int):
        self._f, self.budget, self.err = f, budget, err

    def write(self, data) -> int:
        n = len(data)
        if n > self.budget:
            raise OSError(self.err, os.strerror(self.err))
        self.budget -= n
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def inject(monkeypatch, err: int = errno.ENOSPC, budget: int = 0, only: str | None = None) -> None:
    """Make every atomic write (or those of files whose name contains `only`) fail with `err` after `budget`
    bytes, as a full disk, a file-size limit or a failing device would."""
    real = atomic.open_temp

    def faulty(tmp: Path):
        f = real(tmp)
        return FaultyFile(f, budget, err) if only is None or only in tmp.name else f

    monkeypatch.setattr(atomic, "open_temp", faulty)


def can_mount() -> tuple[bool, str]:
    """Whether a tmpfs can be mounted here, and why not."""
    if os.geteuid() != 0:
        return False, "not running as root"
    probe = Path(f"/tmp/mmvae-mount-probe-{uuid.uuid4().hex[:8]}")
    probe.mkdir()
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)], capture_output=True,
                           text=True)
        if r.returncode:
            return False, f"mount -t tmpfs failed: {r.stderr.strip() or r.returncode}"
        subprocess.run(["umount", str(probe)], check=True)
        return True, ""
    except FileNotFoundError:
        return False, "no mount command"
    finally:
        probe.rmdir()


@contextlib.contextmanager
def tmpfs(folder: Path, size: str):
    """A tmpfs of `size` mounted on `folder` for the duration (root only; see can_mount)."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> None:
    """Write filler files into `folder` until its filesystem is full (unbuffered, to the last byte)."""
    for i, chunk in enumerate((1 << 16, 1 << 10, 1)):
        fd = os.open(folder / f"filler{i}", os.O_WRONLY | os.O_CREAT)
        try:
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * chunk)
        finally:
            os.close(fd)


def remount_readonly(folder: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)


def note_method(kind: str, method: str) -> None:
    """Print and record how a fault of `kind` was made."""
    print(f"{kind}: {method}")
    METHODS.add(f"{kind}: {method}")


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))
