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
import time
from pathlib import Path

from .atomic import write_text
from .checkpoint import TrainingState, remove_stale_temporaries, save_checkpoint


def _json_safe(value):
    """NaN and infinities become strings so that the JSON stays standard."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class RunFolder:
    """One run's files: checkpoints, config, metrics and log. Only the process that owns the folder (rank 0) holds
    one; every write replaces its file atomically."""

    def __init__(self, folder: str | os.PathLike, tensorboard: bool = True):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
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
        """Append a time-stamped line to `train.log` (warnings, interruptions, resumes)."""
        with open(self.path("train.log"), "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    def start(self, config: dict, note: str | None = None) -> None:
        """Begin (or resume) a run here: clear partial files of a killed writer, write `config.json`, log `note`."""
        self.remove_stale_temporaries()
        self.write_config(config)
        if note:
            self.note(note)

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete the partial checkpoint files of a process killed while writing one, and say so in `train.log`."""
        stale = remove_stale_temporaries(self.folder)
        if stale:
            self.note(f"removed {len(stale)} partial checkpoint file(s) of an interrupted write: "
                      f"{', '.join(p.name for p in stale)}")
        return stale

    def save(self, names: list[str], state: TrainingState) -> Path:
        """Write `state` atomically to each of `names` (e.g. `last.pt`, `best.pt`); the path of the first."""
        data = state.to_dict()
        for name in names:
            save_checkpoint(self.path(name), data)
        return self.path(names[0])
