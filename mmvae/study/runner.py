"""Run a grid: each run is `mmvae train ... --out RUN` then `mmvae evaluate RUN ...`, in a subprocess.

What a run folder holds says where it stands (`run_state`), so a study resumes from its folders alone: a run whose
last.pt has all the epochs and whose metrics.json is newer is done and skipped; one with a shorter checkpoint resumes
with `--resume RUN`. SIGINT/SIGTERM reach the trainers as SIGTERM (they finish the step and checkpoint), and
DIR/study.json is replaced atomically at every change, so an interrupted study is consistent and resumes.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import write_json
from ..errors import InputError
from .grid import EVALUATE_FLAGS, Grid, Run

#: environment variable with the command prefix of the children (default: `python -m mmvae.cli`)
PREFIX_ENV = "MMVAE_STUDY_COMMAND"


def command_prefix() -> list[str]:
    """How a child calls mmvae: $MMVAE_STUDY_COMMAND (shell-split) if set, else this Python with -m mmvae.cli."""
    env = os.environ.get(PREFIX_ENV)
    return shlex.split(env) if env else [sys.executable, "-m", "mmvae.cli"]


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _train_flags(options: dict) -> list[str]:
    out = []
    for key, value in options.items():
        if isinstance(value, bool):
            out += [_flag(key)] if value else []
        else:
            out += [_flag(key), f"{value:g}" if isinstance(value, float) else str(value)]
    return out


def train_command(prefix: list[str], grid: Grid, run: Run, folder: Path, resume: bool) -> list[str]:
    """`mmvae train` of one run into `folder` (with `--resume folder` when it has a checkpoint)."""
    cmd = [*prefix, "train", "--out", str(folder), "--quiet"] + (["--resume", str(folder)] if resume else [])
    return cmd + _train_flags({"dataset": grid.dataset, "model": run.model, "epochs": grid.epochs,
                               "beta": run.beta, "seed": run.seed, **grid.train, **run.axes})


def evaluate_command(prefix: list[str], grid: Grid, folder: Path) -> list[str]:
    """`mmvae evaluate folder` with the grid's [evaluate] table: flags, and --set KEY=VALUE for the settings."""
    cmd = [*prefix, "evaluate", str(folder)]
    for key, value in grid.evaluate.items():
        if key == "quick":
            cmd += ["--quick"] if value else []
        elif key == "metrics":
            cmd += ["--metrics", ",".join(value)]
        elif key in EVALUATE_FLAGS:
            cmd += [_flag(key), str(value)]
        else:
            cmd += ["--set", f"{key}={json.dumps(value)}"]
    return cmd


def trained_epochs(folder: Path) -> int | None:
    """Completed epochs of the run's last.pt (None without one); a mid-epoch checkpoint counts its full epochs."""
    from ..checkpoint import LAST, read_checkpoint

    if not (folder / LAST).is_file():
        return None
    state = read_checkpoint(folder / LAST)
    return int(state["epoch"])


def run_state(folder: Path, epochs: int) -> str:
    """"done" (trained `epochs` and evaluated since), "evaluate" (trained, not evaluated), "resume" (a shorter
    checkpoint), "fresh" (no checkpoint), or "too long" (a checkpoint past `epochs`)."""
    got = trained_epochs(folder)
    if got is None:
        return "fresh"
    if got > epochs:
        return "too long"
    if got < epochs:
        return "resume"
    metrics = folder / "metrics.json"
    fresh = metrics.is_file() and metrics.stat().st_mtime >= (folder / "last.pt").stat().st_mtime
    return "done" if fresh and _is_json(metrics) else "evaluate"


def _is_json(path: Path) -> bool:
    """Whether `path` parses as JSON (a metrics.json cut short by a killed evaluation does not)."""
    try:
        json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return True


def write_json_atomic(path: Path, obj) -> None:
    """Replace `path` with the JSON of `obj` (atomically; values JSON cannot hold become strings)."""
    write_json(path, obj, default=str)


def visible_gpus() -> list[str]:
    """The GPU ids a child may be given through CUDA_VISIBLE_DEVICES (empty without CUDA)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # no torch CUDA at all
        return []


_PHASE = {"fresh": "train", "resume": "train, resumed", "evaluate": "evaluate"}


@dataclass
class _Active:
    """A run in progress: its process, phase and the slot (GPU) it holds."""

    run: Run
    slot: int
    phase: str
    proc: subprocess.Popen
    log: object
    started: float = field(default_factory=time.time)


class StudyRunner:
    """Runs the runs of `grid` that are not done into `out/runs/<name>`, `jobs` at a time; `status` tracks them."""

    def __init__(self, grid: Grid, out: Path, jobs: int = 1, prefix: list[str] | None = None,
                 say: Callable[[str], None] = print, on_change: Callable[[dict], None] | None = None):
        self.grid, self.out, self.jobs = grid, Path(out), max(1, jobs)
        self.prefix = prefix or command_prefix()
        self.say, self.on_change = say, on_change
        self.runs = grid.runs()
        self.status: dict[str, dict] = {}
        self.stop: str | None = None
        self.gpus = visible_gpus()

    def folder(self, run: Run) -> Path:
        """The run folder of `run`."""
        return self.out / "runs" / run.name

    def _set(self, run: Run, status: str, **more) -> None:
        self.status[run.name] = {"status": status, "folder": str(self.folder(run)), "model": run.model,
                                 "beta": run.beta, "seed": run.seed, **run.axes, **more}
        if self.on_change:
            self.on_change(self.status)

    def _env(self, slot: int) -> dict:
        env = dict(os.environ)
        if self.jobs > 1:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = "1"
        if len(self.gpus) > 1:
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[slot % len(self.gpus)]
        return env

    def _start(self, run: Run, slot: int, phase: str) -> _Active:
        folder = self.folder(run)
        folder.mkdir(parents=True, exist_ok=True)
        cmd = (evaluate_command(self.prefix, self.grid, folder) if phase == "evaluate" else
               train_command(self.prefix, self.grid, run, folder, resume=phase == "resume"))
        log = open(folder / "study.log", "a")
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        try:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=self._env(slot))
        except OSError as e:
            log.close()
            raise InputError(f"cannot start {cmd[0]!r} ({e.strerror or e}); check ${PREFIX_ENV}") from None
        self._set(run, "running", phase=phase, pid=proc.pid)
        return _Active(run, slot, phase, proc, log)

    def _finished(self, a: _Active, code: int) -> _Active | None:
        """What follows a child's exit: the evaluation after training, else the run's final status."""
        a.log.close()
        run, took = a.run, time.time() - a.started
        if code == 0 and a.phase != "evaluate" and not self.stop:
            return self._start(run, a.slot, "evaluate")
        if code == 0 and a.phase == "evaluate":
            self._set(run, "done")
            self.say(f"finished {run.name} ({took:.0f} s)")
        elif self.stop:
            self._set(run, "interrupted", phase=a.phase)
            self.say(f"interrupted {run.name} ({_PHASE[a.phase]}; it resumes when the study is run again)")
        else:
            log = self.folder(run) / "study.log"
            self._set(run, "failed", phase=a.phase, returncode=code, log=str(log))
            self.say(f"failed {run.name}: {_PHASE[a.phase]} exited with {code}; see {log}")
        return None

    def _signal(self, signum, frame) -> None:
        self.stop = signal.Signals(signum).name

    def _pending(self) -> deque:
        todo = deque()
        for run in self.runs:
            state = run_state(self.folder(run), self.grid.epochs)
            if state == "done":
                self._set(run, "done")
            elif state == "too long":
                self._set(run, "failed", message=f"its checkpoint has more than the grid's {self.grid.epochs} "
                                                 "epochs; remove the folder or raise epochs")
            else:
                self._set(run, "pending", next=state)
                todo.append((run, state))
        return todo

    def run(self) -> int:
        """Run what is not done; 0 when every run is done, 130 when interrupted, 1 when some failed."""
        todo, active = self._pending(), {}
        n, done0 = len(self.runs), len(self.runs) - len(todo)
        if done0:
            self.say(f"{done0} of {n} runs already done: skipped")
        previous = {s: signal.signal(s, self._signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._loop(todo, active, n)
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
        if self.stop:
            return 130
        return 0 if all(v["status"] == "done" for v in self.status.values()) else 1

    def _loop(self, todo: deque, active: dict, n: int) -> None:
        forwarded = False
        while todo or active:
            if self.stop and not forwarded:
                forwarded = True
                for a in active.values():  # the trainer checkpoints on SIGTERM; a second SIGINT would not wait
                    a.proc.send_signal(signal.SIGTERM)
            while not self.stop and todo and len(active) < self.jobs:
                slot = min(set(range(self.jobs)) - set(active))
                run, state = todo.popleft()
                active[slot] = self._start(run, slot, state)
                self.say(f"[{n - len(todo)}/{n}] started {run.name} ({_PHASE[state]})")
            if self.stop and not active:
                break
            for slot, a in list(active.items()):
                code = a.proc.poll()
                if code is not None:
                    nxt = self._finished(a, code)
                    if nxt is None:
                        del active[slot]
                    else:
                        active[slot] = nxt
            time.sleep(0.05)
        for run, _ in todo:
            self._set(run, "pending")
