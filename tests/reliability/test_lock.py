"""Issue 14.2: a run folder has one writer. A second `mmvae train --out D` is refused naming the first (pid and
host); a lock left by a dead trainer is taken over, saying so; start-up clean-up removes only the temp files of
writers that are gone; `train --out` on a folder holding a run needs `--resume` or `--overwrite`."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from fault_helpers import TRAIN, copy_run, one_error_line, run_cli, train_run
from reliability_helpers import count, driver_command, subprocess_env

from mmvae.checkpoint import read_checkpoint
from mmvae.runfolder import LOCK, RunLock


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_run(tmp_path_factory.mktemp("lock") / "run", epochs=1)


def _start_trainer(out, *extra):
    """A long `mmvae train --out out` in a subprocess, returned once it holds the folder's lock."""
    proc = subprocess.Popen(driver_command(*TRAIN, "--epochs", "100000", "--out", str(out), *extra),
                            env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        lock = out / LOCK
        if lock.exists() and lock.read_text().strip() and (out / "last.pt").exists():
            return proc
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("the first trainer never took the lock")


def test_second_trainer_is_refused_naming_the_first(tmp_path, capsys):
    out = tmp_path / "run"
    first = _start_trainer(out)
    try:
        config = (out / "config.json").read_bytes()
        for extra in ([], ["--resume", str(out)], ["--overwrite"]):
            code, _, err = run_cli(capsys, *TRAIN, "--epochs", "2", "--out", out, *extra)
            line = one_error_line(err, "train")
            assert code == 2 and f"pid {first.pid} on host {socket.gethostname()}" in line, err
            assert "in use by another trainer" in line
            count("lock")
        assert (out / "config.json").read_bytes() == config  # the first run's config was not replaced
        assert first.poll() is None  # and the first trainer runs on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the kernel released the dead trainer's lock; the next writer takes it over and says so
    code, _, err = run_cli(capsys, *TRAIN, "--epochs", str(read_checkpoint(out)["epoch"] + 1), "--out", out,
                           "--resume", out)
    assert code == 0, err
    assert f"took over the stale lock of pid {first.pid}" in err and "no longer running" in err
    assert f"took over the stale lock of pid {first.pid}" in (out / "train.log").read_text()
    count("lock")


def test_stale_lock_file_of_a_dead_process_is_taken_over(trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path / "run")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    (run / LOCK).write_text(json.dumps({"pid": int(dead), "host": socket.gethostname(), "since": "earlier"}))
    code, _, err = run_cli(capsys, *TRAIN, "--epochs", "2", "--out", run, "--resume", run)
    assert code == 0 and f"took over the stale lock of pid {dead}" in err, err
    assert (run / LOCK).read_text() == ""  # released on exit: no holder named
    count("lock")


def test_cleanup_removes_only_dead_writers_temporaries(trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path / "run")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout.strip()
        mine, theirs = run / f".last.pt.{live.pid}-0.tmp", run / f".last.pt.{dead}-0.tmp"
        mine.write_bytes(b"a live writer's half checkpoint")
        theirs.write_bytes(b"a killed writer's half checkpoint")
        code, _, err = run_cli(capsys, *TRAIN, "--epochs", "2", "--out", run, "--resume", run)
        assert code == 0, err
        assert mine.exists() and not theirs.exists()
        assert theirs.name in (run / "train.log").read_text()
    finally:
        live.kill()
        live.wait()
    count("lock")


def test_existing_run_needs_resume_or_overwrite(trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path / "run")
    before = (run / "last.pt").read_bytes()
    code, _, err = run_cli(capsys, *TRAIN, "--epochs", "1", "--out", run)
    line = one_error_line(err, "train")
    assert code == 2 and "already holds a run" in line and "--resume" in line and "--overwrite" in line
    assert (run / "last.pt").read_bytes() == before
    code, _, err = run_cli(capsys, *TRAIN, "--epochs", "1", "--out", run, "--overwrite", "--resume", run)
    assert code == 2 and "give one of them" in err
    (run / "best.pt").write_bytes((run / "last.pt").read_bytes())
    code, _, err = run_cli(capsys, *TRAIN, "--epochs", "1", "--seed", "3", "--out", run, "--overwrite")
    assert code == 0 and "replacing the run" in err, err
    assert read_checkpoint(run)["epoch"] == 1 and json.loads((run / "config.json").read_text())["seed"] == 3
    count("lock", 2)


def test_lock_is_reentrant_in_one_process_and_exclusive_across(tmp_path):
    with RunLock(tmp_path) as a, RunLock(tmp_path):
        assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
        probe = subprocess.run([sys.executable, "-c", "import sys; from mmvae.runfolder import RunLock; "
                                f"RunLock({str(tmp_path)!r}).acquire()"], env=subprocess_env(),
                               capture_output=True, text=True)
        assert probe.returncode != 0 and f"pid {os.getpid()}" in probe.stderr
        assert a.took_over is None
    assert (tmp_path / LOCK).read_text() == ""
    count("lock")
