"""A run folder: its checkpoints (`last.pt`, `best.pt`), `config.json`, `metrics.jsonl`, `metrics.csv` and
`train.log` (and TensorBoard event files under `tensorboard/` when the `tensorboard` package is installed).

Metrics files are rewritten from the whole history each epoch (a few lines), so after a resume they match the
checkpoint's history instead of holding epochs that the resumed run repeats.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import socket
import time
from pathlib import Path

from .atomic import process_alive, remove_dead_temporaries, write_text
from .checkpoint import BEST, LAST, TrainingState, save_checkpoint
from .errors import RunLockedError, WriteError

LOCK = ".lock"  # flock()ed by the run's one writer; holds {"pid", "host", "since"} of that writer
RUN_FILES = (LAST, BEST, "config.json", "metrics.jsonl", "metrics.csv", "train.log", "metrics.json", "report.md")


def _json_safe(value):
    """NaN and infinities become strings so that the JSON stays standard."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _holder(text: str) -> dict | None:
    """The holder a lock file names (None when it names none, or not readably)."""
    try:
        info = json.loads(text)
    except ValueError:
        return None
    return info if isinstance(info, dict) and isinstance(info.get("pid"), int) else None


def _describe(info: dict) -> str:
    return f"pid {info['pid']} on host {info.get('host', '?')} (since {info.get('since', '?')})"


class RunLock:
    """The one-writer lock of a run folder: an OS lock (`flock`) on `FOLDER/.lock`, which the kernel releases when
    its holder dies, plus the holder's pid, host and start time written in the file, so that a refusal names the
    other process and a lock file left by a dead one is recognised (and taken over, `.took_over` saying whose).

    Re-entrant within a process (the CLI takes it before the Trainer does); `release` undoes one `acquire`."""

    _held: dict[str, list] = {}  # real path -> [fd, count, took_over]: the locks this process holds

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK
        self.took_over: str | None = None

    def acquire(self) -> RunLock:
        """Take the lock (again, if this process holds it); RunLockedError naming the holder if another does."""
        self.folder.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(self.path)
        if key in self._held:
            self._held[key][1] += 1
            self.took_over = self._held[key][2]
            return self
        self._claim(self._flock(), key)
        return self

    def check_free(self) -> None:
        """RunLockedError naming the holder if another process holds the lock now; takes nothing, writes nothing."""
        if self.folder.is_dir() and os.path.realpath(self.path) not in self._held:
            os.close(self._flock())

    def _flock(self) -> int:
        """An fd of the lock file holding the OS lock; RunLockedError naming the holder if another has it."""
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise WriteError(self.path, e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            info = _holder(os.pread(fd, 4096, 0).decode(errors="replace"))
            os.close(fd)
            who = _describe(info) if info else "another process"
            raise RunLockedError(f"run folder {self.folder} is in use by another trainer: {who}; wait for it to "
                                 "finish, stop it, or train into another folder") from None
        return fd

    def _claim(self, fd: int, key: str) -> None:
        """Write our pid, host and time into the lock file; note a previous holder that died holding it."""
        old = _holder(os.pread(fd, 4096, 0).decode(errors="replace"))
        if old and not (old.get("host") == socket.gethostname() and old["pid"] == os.getpid()):
            alive = old.get("host") == socket.gethostname() and process_alive(old["pid"])
            self.took_over = f"took over the stale lock of {_describe(old)}" + \
                ("" if alive else ", which is no longer running")
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        except OSError as e:
            os.close(fd)
            raise WriteError(self.path, e) from None
        self._held[key] = [fd, 1, self.took_over]

    def release(self) -> None:
        """Undo one `acquire`; the last one frees the lock and blanks the holder."""
        key = os.path.realpath(self.path)
        held = self._held.get(key)
        if held is None:
            return
        held[1] -= 1
        if held[1] > 0:
            return
        del self._held[key]
        try:
            os.ftruncate(held[0], 0)  # a clean exit leaves no holder named (the file stays: unlinking would race)
        except OSError:
            pass
        os.close(held[0])  # closing releases the flock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def holds_run(folder: str | os.PathLike) -> str | None:
    """The checkpoint that makes `folder` a trained run (None when it has none)."""
    for name in (LAST, BEST):
        if (Path(folder) / name).is_file():
            return name
    return None


def clear_run(folder: str | os.PathLike) -> list[str]:
    """Remove a run's files (checkpoints, config, metrics, log, report) before another run replaces it."""
    removed = []
    for name in RUN_FILES:
        path = Path(folder) / name
        if path.is_file():
            path.unlink()
            removed.append(name)
    return removed


class RunFolder:
    """One run's files: checkpoints, config, metrics and log. Only the process that owns the folder (rank 0) holds
    one, and holds the folder's `RunLock` until `close()`; every write replaces its file atomically."""

    def __init__(self, folder: str | os.PathLike, tensorboard: bool = True):
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise WriteError(self.folder, e) from None
        self.lock = RunLock(self.folder).acquire()
        self.tb = None
        if tensorboard:
            try:  # optional: used only when the tensorboard package is installed
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                SummaryWriter = None
            self.tb = SummaryWriter(str(self.folder / "tensorboard")) if SummaryWriter else None

    def path(self, name: str) -> Path:
        """A file inside the run folder."""
        return self.folder / name

    def write_config(self, config: dict) -> None:
        """`config.json`: the model configuration, trainer settings, seed and versions."""
        write_text(self.path("config.json"), json.dumps(config, indent=2, default=str) + "\n")

    def write_history(self, history: list[dict]) -> None:
        """`metrics.jsonl` (one JSON object per epoch) and `metrics.csv` (one row per epoch, union of columns)."""
        rows = [{k: _json_safe(v) for k, v in h.items()} for h in history]
        write_text(self.path("metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in rows))
        columns = list(dict.fromkeys(k for r in rows for k in r))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
        write_text(self.path("metrics.csv"), buf.getvalue())
        if self.tb is not None and history:
            last = history[-1]
            for k, v in last.items():
                if k != "epoch" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, last["epoch"])
            self.tb.flush()

    def note(self, message: str) -> None:
        """Add a time-stamped line to `train.log` (warnings, interruptions, resumes); the log is rewritten
        atomically, so a full disk never leaves half a line or a truncated log."""
        path = self.path("train.log")
        try:
            old = path.read_text(errors="replace") if path.is_file() else ""
        except OSError:
            old = ""
        write_text(path, f"{old}{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    def start(self, config: dict, note: str | None = None) -> None:
        """Begin (or resume) a run here: clear partial files of a killed writer, write `config.json`, log `note`."""
        if self.lock.took_over:
            self.note(self.lock.took_over)
        self.remove_stale_temporaries()
        self.write_config(config)
        if note:
            self.note(note)

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete the partial files of writers that are gone (killed mid-write; the pid in a temp file's name says
        whose), and say so in `train.log`; a live writer's temp files are left alone."""
        stale = remove_dead_temporaries(self.folder)
        if stale:
            kind = "checkpoint file(s)" if all(".pt." in p.name for p in stale) else "file(s)"
            self.note(f"removed {len(stale)} partial {kind} of an interrupted write (their writers are gone): "
                      f"{', '.join(p.name for p in stale)}")
        return stale

    def close(self) -> None:
        """Flush TensorBoard and release the run folder's lock."""
        if self.tb is not None and hasattr(self.tb, "close"):
            self.tb.close()
        self.lock.release()

    def save(self, names: list[str], state: TrainingState) -> Path:
        """Write `state` atomically to each of `names` (e.g. `last.pt`, `best.pt`); the path of the first."""
        data = state.to_dict()
        for name in names:
            save_checkpoint(self.path(name), data)
        return self.path(names[0])
