"""Issue 5.3: interrupted training. SIGINT/SIGTERM finish the current step, write a checkpoint and exit with a
message naming it; a resumed run equals an uninterrupted one bit for bit on CPU; SIGKILL at random moments (also
while a checkpoint is being written) never leaves a newest checkpoint that fails to load."""
from __future__ import annotations

import fnmatch
import json
import os
import random
import signal
import subprocess
import time

import cli_driver
import pytest
import torch
from reliability_helpers import ROOT, SMOKE, count, driver_command, params, same, subprocess_env, toy, toy_model

from mmvae import cli
from mmvae.checkpoint import read_checkpoint, resolve_checkpoint
from mmvae.datasets import DATASETS
from mmvae.trainer import Trainer


def _fit(preset, epochs, **kw):
    data = toy(48)  # 3 batches of 16
    t = Trainer(toy_model(data, preset), max_epochs=epochs, batch_size=16, progress=False, device="cpu", seed=7, **kw)
    t.fit(data, val=toy(16, "test"))
    return t


@pytest.mark.parametrize("preset", ["mopoe", "mmvm", "mmvaeplus"])
def test_sigterm_mid_epoch_then_exact_resume(preset, tmp_path, capsys):
    """SIGTERM arrives during the 5th step (epoch 2): that step finishes, last.pt is written, the message names it;
    resuming gives the same parameters and losses as an uninterrupted run."""
    full = _fit(preset, 3)
    data = toy(48)
    model = toy_model(data, preset)
    calls = {"n": 0}

    def hook(module, args):
        if module.training and torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == 5:
                os.kill(os.getpid(), signal.SIGTERM)

    handle = model.register_forward_pre_hook(hook)
    part = Trainer(model, max_epochs=3, batch_size=16, progress=False, device="cpu", seed=7, out=tmp_path)
    part.fit(data, val=toy(16, "test"))
    handle.remove()
    err = capsys.readouterr().err
    assert part.interrupted and "interrupted by SIGTERM" in err and str(tmp_path / "last.pt") in err
    assert "--resume" in err
    state = read_checkpoint(tmp_path)
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 2, 5)  # the 5th step completed
    resumed = Trainer(toy_model(data, preset, seed=99), max_epochs=3, batch_size=16, progress=False, device="cpu",
                      seed=7, out=tmp_path, resume=tmp_path)
    resumed.fit(data, val=toy(16, "test"))
    assert not resumed.interrupted
    assert same(params(full.model), params(resumed.model))
    assert [h["train/loss"] for h in full.history] == [h["train/loss"] for h in resumed.history]
    assert [h["val/loss"] for h in full.history] == [h["val/loss"] for h in resumed.history]


def _train_args(out, epochs, *extra):
    return ["train", "--dataset", "tiny", "--model", "mopoe", "--epochs", str(epochs), "--batch-size", "16",
            "--seed", "3", "--device", "cpu", "--quiet", "--out", str(out), *extra]


def _wait_for(predicate, proc, timeout=60.0, poll=0.01):
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"training exited early ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        if time.time() > deadline:
            raise AssertionError("timed out waiting for the training subprocess")
        time.sleep(poll)


def test_cli_sigint_then_resume_matches_uninterrupted(tmp_path, capsys, monkeypatch, one_thread):
    """`mmvae train` in a subprocess gets SIGINT at a random moment: exit 130, a message naming the checkpoint;
    `mmvae train --resume` then ends with the parameters of an uninterrupted run of the same length."""
    run = tmp_path / "run"
    proc = subprocess.Popen(driver_command(*_train_args(run, 100_000)), cwd=ROOT, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: (run / "last.pt").exists(), proc)
        time.sleep(random.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted by SIGINT" in err and f"saved checkpoint {run / 'last.pt'}" in err and "--resume" in err
    state = read_checkpoint(run)
    epochs = state["epoch"] + 2  # the interrupted epoch and one more
    monkeypatch.setitem(DATASETS, "tiny", cli_driver.tiny)
    assert cli.main(_train_args(run, epochs, "--resume", str(run))) == 0
    assert cli.main(_train_args(tmp_path / "straight", epochs)) == 0
    capsys.readouterr()
    a, b = read_checkpoint(run), read_checkpoint(tmp_path / "straight")
    assert a["global_step"] == b["global_step"] == 4 * epochs
    assert same(a["model"], b["model"])
    losses = lambda s: [(h["epoch"], h["train/loss"], h["val/loss"]) for h in json.loads(s["history"])]  # noqa: E731
    assert losses(a) == losses(b)


@pytest.fixture
def one_thread():
    """Bit-identical CPU results need the same thread count (reductions split differently); the subprocesses run
    with OMP_NUM_THREADS=1, so the in-process parts of a comparison do too."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tmp_files(folder):
    try:
        return [e.name for e in os.scandir(folder) if fnmatch.fnmatch(e.name, ".*.pt.*.tmp")]  # save_checkpoint's
    except FileNotFoundError:
        return []


@pytest.mark.slow
def test_sigkill_at_random_moments_never_corrupts_the_newest_checkpoint(tmp_path, capsys, monkeypatch,
                                                                         one_thread):
    """Kill -9 a checkpointing `mmvae train` repeatedly, alternately at a random moment and while a checkpoint file
    is being written; each time the newest checkpoint loads (weights_only) and no partial file is taken for one.
    Resuming after all kills ends bit-identical to an uninterrupted run."""
    run = tmp_path / "run"
    kills = 2 if SMOKE else 5
    rng = random.Random(os.getpid())
    last_epoch, mid_write = 0, 0
    for i in range(kills):
        resume = ["--resume", str(run)] if (run / "last.pt").exists() else []
        before = (run / "last.pt").stat().st_mtime_ns if resume else None
        proc = subprocess.Popen(driver_command(*_train_args(run, 100_000, *resume)), cwd=ROOT,
                                env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            # let it write at least one new checkpoint of its own, then pick the moment
            _wait_for(lambda b=before: (run / "last.pt").exists() and (run / "last.pt").stat().st_mtime_ns != b, proc)
            if i % 2 == 0:
                _wait_for(lambda: bool(_tmp_files(run)), proc, poll=0.0005)  # a checkpoint is being written
                time.sleep(rng.uniform(0.0, 0.002))
            else:
                time.sleep(rng.uniform(0.0, 0.5))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            proc.kill()
        assert proc.returncode == -signal.SIGKILL
        partial = _tmp_files(run)
        mid_write += bool(partial)
        assert resolve_checkpoint(run) == run / "last.pt"  # never a partial file
        state = read_checkpoint(run)
        raw = torch.load(run / "last.pt", weights_only=True)
        assert same(raw["model"], state["model"]) and state["step_in_epoch"] == 0
        assert state["epoch"] > last_epoch  # each life trained and checkpointed at least one epoch
        last_epoch = state["epoch"]
        if (run / "best.pt").exists():
            read_checkpoint(run / "best.pt")
        count("kills")
    count("kills_mid_write", mid_write)
    assert mid_write >= 1 or SMOKE  # at least one kill hit a write in progress
    # finish: resume two more epochs, compare with a run that was never interrupted
    monkeypatch.setitem(DATASETS, "tiny", cli_driver.tiny)
    epochs = last_epoch + 2
    assert cli.main(_train_args(run, epochs, "--resume", str(run))) == 0
    assert not _tmp_files(run)  # the resumed run removed partial files of killed writes
    assert cli.main(_train_args(tmp_path / "straight", epochs)) == 0
    capsys.readouterr()
    a, b = read_checkpoint(run), read_checkpoint(tmp_path / "straight")
    assert a["epoch"] == b["epoch"] == epochs and same(a["model"], b["model"])
    if mid_write:
        assert "partial checkpoint file" in (run / "train.log").read_text()
