"""Trainer and checkpoints, on a tiny toy model and an in-memory dataset defined here (no mmvae model needed).

The toy model and data live at module level so that subprocesses (SIGINT, torchrun) can import them.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from torch import nn

from mmvae.checkpoint import load_model, read_checkpoint, resolve_checkpoint, save_checkpoint
from mmvae.errors import CheckpointError
from mmvae.trainer import NonFiniteLossError, Trainer

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


# ---------------------------------------------------------------------------- stand-ins
class ToyData:
    """Two modalities a [N, 2] and b [N, 3] with b a linear function of a; the trainer's dataset interface."""

    modalities = ["a", "b"]

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        a = torch.randn(n, 2, generator=g)
        b = a @ torch.tensor([[1.0, -2.0, 0.5], [0.3, 1.0, -1.0]]) + 0.05 * torch.randn(n, 3, generator=g)
        self.data, self.avail, self.targets = {"a": a, "b": b}, torch.ones(n, 2, dtype=torch.bool), torch.zeros(n)

    def __len__(self) -> int:
        return len(self.targets)

    def _chunks(self, batch_size, shuffle=False, generator=None, rank=0, world=1, drop_last=False):
        idx = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        chunks = list(idx.split(batch_size))
        if drop_last and len(chunks[-1]) < batch_size:
            chunks = chunks[:-1]
        return chunks[rank::world][:len(chunks) // world]

    def num_batches(self, batch_size, world=1, drop_last=False):
        return len(self._chunks(batch_size, world=world, drop_last=drop_last))

    def batches(self, batch_size, shuffle=False, generator=None, start=0, rank=0, world=1, drop_last=False):
        for c in self._chunks(batch_size, shuffle, generator, rank, world, drop_last)[start:]:
            yield {k: v[c] for k, v in self.data.items()}, self.avail[c], self.targets[c]


@dataclass
class Out:
    loss: torch.Tensor
    terms: dict = field(default_factory=dict)


class ToyModel(nn.Module):
    """A noisy autoencoder a -> z -> (a, b). Test hooks (not in the config): delay per training step, NaN loss
    from a training call on, SIGINT to itself at a training call."""

    def __init__(self, hidden: int = 4, inf_grad: bool = False, delay: float = 0.0, nan_from: int | None = None,
                 interrupt_at: int | None = None):
        super().__init__()
        self.hidden, self.inf_grad = hidden, inf_grad
        self.enc, self.dec_a, self.dec_b = nn.Linear(2, hidden), nn.Linear(hidden, 2), nn.Linear(hidden, 3)
        self.delay, self.nan_from, self.interrupt_at, self.calls = delay, nan_from, interrupt_at, 0

    def config(self) -> dict:
        return {"hidden": self.hidden, "inf_grad": self.inf_grad}

    def forward(self, x, avail):
        z = self.enc(x["a"]) + 0.1 * torch.randn(x["a"].shape[0], self.hidden)
        rec_a = ((self.dec_a(z) - x["a"]) ** 2).sum(-1).mean()
        rec_b = ((self.dec_b(z) - x["b"]) ** 2).sum(-1).mean()
        if self.training:
            if self.nan_from is not None and self.calls >= self.nan_from:
                rec_a = rec_a * float("nan")
            if self.interrupt_at is not None and self.calls == self.interrupt_at:
                os.kill(os.getpid(), signal.SIGINT)
            if self.delay:
                time.sleep(self.delay)
            self.calls += 1
        loss = rec_a + rec_b
        if self.inf_grad:
            loss = loss + torch.sqrt(self.enc.weight * 0).sum()  # finite value, NaN gradient
        return Out(loss, {"rec/a": rec_a, "rec/b": rec_b})


def build(cfg: dict) -> ToyModel:
    return ToyModel(**cfg)


def problem():
    return ToyData(128, seed=1), ToyData(64, seed=2)


def fresh(**kw) -> ToyModel:
    torch.manual_seed(123)
    return ToyModel(**kw)


def params(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(p: dict, q: dict):
    assert p.keys() == q.keys()
    for k in p:
        assert torch.equal(p[k], q[k]), k


def fit(model, epochs, **kw):
    train, val = problem()
    t = Trainer(model, max_epochs=epochs, batch_size=16, lr=1e-2, progress=False, **{"device": "cpu", **kw})
    t.fit(train, val)
    return t


# ---------------------------------------------------------------------------- learning and files
def test_validation_loss_drops_and_run_folder(tmp_path):
    t = fit(fresh(), 5, out=tmp_path)
    h = t.history
    assert [e["epoch"] for e in h] == [1, 2, 3, 4, 5]
    assert h[-1]["val/loss"] < 0.5 * h[0]["val/loss"]
    assert {"train/loss", "val/loss", "train/rec/a", "val/rec/b", "time"} <= set(h[0])
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(s)["epoch"] for s in lines] == [1, 2, 3, 4, 5]
    csv = (tmp_path / "metrics.csv").read_text().splitlines()
    assert len(csv) == 6 and "val/loss" in csv[0].split(",")
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model"] == {"hidden": 4, "inf_grad": False} and cfg["trainer"]["batch_size"] == 16
    assert cfg["seed"] == 0 and {"torch", "pyro", "mmvae", "python"} <= set(cfg["versions"])
    assert {p.name for p in tmp_path.glob("*.pt")} == {"last.pt", "best.pt"}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_seed_reproducibility():
    a, b, c = fit(fresh(), 2, seed=0), fit(fresh(), 2, seed=0), fit(fresh(), 2, seed=1)
    assert_same(params(a.model), params(b.model))
    assert any(not torch.equal(v, params(c.model)[k]) for k, v in params(a.model).items())


def test_amp_ignored_on_cpu():
    with pytest.warns(UserWarning, match="amp"):
        fit(fresh(), 1, amp=True, device="cpu")


def test_signal_handlers_restored():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    fit(fresh(), 1)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


# ---------------------------------------------------------------------------- resume
def test_exact_resume_from_epoch_checkpoint(tmp_path):
    full = fit(fresh(), 4, out=tmp_path / "full")
    fit(fresh(), 2, out=tmp_path / "part")
    assert read_checkpoint(tmp_path / "part")["epoch"] == 2
    resumed = fit(ToyModel(), 4, out=tmp_path / "part", resume=tmp_path / "part" / "last.pt")
    assert_same(params(full.model), params(resumed.model))
    strip = [{k: v for k, v in e.items() if k != "time"} for e in full.history]
    assert strip == [{k: v for k, v in e.items() if k != "time"} for e in resumed.history]
    assert len((tmp_path / "part" / "metrics.jsonl").read_text().splitlines()) == 4


def test_mid_epoch_resume(tmp_path, capsys):
    full = fit(fresh(), 3)
    part = fit(fresh(interrupt_at=13), 3, out=tmp_path)  # 8 batches per epoch: stops in epoch 2
    assert part.interrupted
    assert "--resume" in capsys.readouterr().err
    state = read_checkpoint(tmp_path)
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 6, 14)
    resumed = fit(ToyModel(), 3, out=tmp_path, resume=tmp_path)
    assert not resumed.interrupted
    assert_same(params(full.model), params(resumed.model))
    assert [e["train/loss"] for e in full.history] == [e["train/loss"] for e in resumed.history]


# ---------------------------------------------------------------------------- checkpoint files
def test_checkpoint_loads_weights_only_and_rebuilds(tmp_path):
    t = fit(fresh(), 1, out=tmp_path)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["format"] == "mmvae-checkpoint"
    assert {"model", "optimizer", "epoch", "step_in_epoch", "global_step", "rng", "config", "trainer",
            "history", "mmvae_version", "torch_version", "pyro_version"} <= set(state)
    model = load_model(tmp_path, builder=build)
    assert not model.training
    assert_same(params(t.model), params(model))
    assert resolve_checkpoint(tmp_path) == tmp_path / "last.pt"


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def test_malicious_checkpoint_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"format": "mmvae-checkpoint", "model": _Evil(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refus.*unpickle arbitrary objects"):
        read_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_not_a_checkpoint(tmp_path):
    torch.save({"model": {}}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="format"):
        read_checkpoint(tmp_path / "plain.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError):
        read_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        read_checkpoint(tmp_path / "missing")


def test_atomic_save_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1, "w": torch.ones(3)})
    before = path.read_bytes()

    def broken_save(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"epoch": 2, "w": torch.zeros(3)})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    monkeypatch.undo()
    assert read_checkpoint(path)["epoch"] == 1


# ---------------------------------------------------------------------------- non-finite steps
def test_nonfinite_loss_steps_skipped():
    model = fresh(nan_from=0)
    start = params(model)
    with pytest.warns(RuntimeWarning, match="non-finite terms: rec/a"):
        t = fit(model, 1, max_nonfinite=100)
    assert_same(start, params(model))
    assert t.opt.state_dict()["state"] == {}


def test_nonfinite_gradients_skipped():
    model = fresh(inf_grad=True)
    start = params(model)
    with pytest.warns(RuntimeWarning, match="non-finite gradients"):
        fit(model, 1, max_nonfinite=100)
    assert_same(start, params(model))


def test_nonfinite_stops_with_last_checkpoint_intact(tmp_path):
    model = fresh(nan_from=8)  # epoch 1 is clean, epoch 2 is all NaN
    with pytest.warns(RuntimeWarning), pytest.raises(NonFiniteLossError, match="last.pt"):
        fit(model, 3, out=tmp_path, max_nonfinite=3)
    state = read_checkpoint(tmp_path)
    assert state["epoch"] == 1 and state["step_in_epoch"] == 0
    assert_same(state["model"], params(model))


# ---------------------------------------------------------------------------- processes
SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import torch
from test_trainer import ToyModel, problem
from mmvae.trainer import Trainer
train, val = problem()
torch.manual_seed(123)
t = Trainer(ToyModel(delay={delay}), max_epochs={epochs}, batch_size=16, lr=1e-2, progress=False, device="cpu",
            out={out!r})
t.fit(train, val)
{after}
sys.exit(130 if t.interrupted else 0)
"""


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def test_sigint_subprocess_then_resume(tmp_path):
    run = tmp_path / "run"
    code = SCRIPT.format(tests=str(TESTS), delay=0.02, epochs=1000, out=str(run), after="")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (run / "last.pt").exists():
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() else "slow"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted by SIGINT" in err and "--resume" in err
    state = read_checkpoint(run)
    epochs = state["epoch"] + 1
    resumed = fit(ToyModel(), epochs, out=run, resume=run)
    full = fit(fresh(), epochs)
    assert_same(params(full.model), params(resumed.model))


def test_ddp_two_processes_agree(tmp_path):
    after = f"torch.save(t.model.state_dict(), {str(tmp_path)!r} + f'/rank{{t_rank}}.pt')"
    code = SCRIPT.format(tests=str(TESTS), delay=0, epochs=2, out=str(tmp_path / "run"), after=after)
    code = code.replace("t.fit(train, val)", "t.fit(train, val)\nimport os\nt_rank = os.environ['RANK']")
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(code))
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(script)], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    p0, p1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert_same(p0, p1)
    assert_same(p0, read_checkpoint(tmp_path / "run")["model"])
    history = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2] and history[1]["val/loss"] < history[0]["val/loss"]
    assert len(read_checkpoint(tmp_path / "run")["rng"]["torch"]) == 2


def test_tensorboard_scalars_when_installed(tmp_path, monkeypatch):
    """With a (stand-in) torch.utils.tensorboard importable, every epoch's numbers go to its SummaryWriter."""
    import types

    seen = []

    class Writer:
        def __init__(self, logdir):
            seen.append(("dir", logdir))

        def add_scalar(self, tag, value, step):
            seen.append((tag, value, step))

        def flush(self):
            pass

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    t = fit(fresh(), 2, out=tmp_path)
    assert seen[0] == ("dir", str(tmp_path / "tensorboard"))
    logged = {(tag, step): v for tag, v, step in (s for s in seen[1:])}
    assert logged[("val/loss", 2)] == t.history[1]["val/loss"] and ("train/loss", 1) in logged
