"""Issue 5.2: numerical faults. Log-variances stay in a safe range; a non-finite loss (or gradient) stops the step
before the optimiser touches the weights and says which term and modality went non-finite; after `max_nonfinite`
such steps in a row training stops, with the last good checkpoint intact and a message saying so."""
from __future__ import annotations

import warnings

import cli_driver
import pytest
import torch
from reliability_helpers import params, same, toy, toy_model

from mmvae import cli
from mmvae.checkpoint import read_checkpoint
from mmvae.datasets import DATASETS
from mmvae.gaussian import LOGVAR_BOUND
from mmvae.trainer import NonFiniteLossError, Trainer


def test_logvar_soft_clamped_for_extreme_encoder_outputs():
    data = toy(16)
    model = toy_model(data, "mopoe")
    with torch.no_grad():
        for m in model.modalities.values():
            last = m.encoder.net[-1]
            last.weight.mul_(1e4)
            last.bias.fill_(1e4)
    x, avail = model.check(data.data)
    enc = model.encode(x, avail)
    assert float(enc.experts.logvar.detach().abs().max()) <= LOGVAR_BOUND  # tanh saturates at the bound in float32
    out = model(data.data)
    out.loss.backward()
    assert bool(torch.isfinite(out.loss))
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None)


def _poison(model, modality: str, from_call: int):
    """Make `modality`'s decoder output NaN from the `from_call`-th training forward on (0-based)."""
    calls = {"n": -1}

    def count(module, args):
        if module.training and torch.is_grad_enabled():
            calls["n"] += 1

    def poison(module, args, out):
        return out * float("nan") if calls["n"] >= from_call else out

    model.register_forward_pre_hook(count)
    model.modalities[modality].decoder.register_forward_hook(poison)
    return calls


def test_nonfinite_step_skipped_then_training_stops_with_good_checkpoint(tmp_path):
    data = toy(48)  # 3 batches of 16 per epoch
    model = toy_model(data, "mopoe")
    _poison(model, "m1", from_call=3)  # epoch 1 is clean, epoch 2 is poisoned from its first step
    snapshots = []
    model.register_forward_pre_hook(lambda m, a: snapshots.append(params(m)) if m.training else None)
    t = Trainer(model, max_epochs=5, batch_size=16, progress=False, device="cpu", out=tmp_path, max_nonfinite=3)
    with warnings.catch_warnings(record=True) as caught, pytest.raises(NonFiniteLossError) as info:
        warnings.simplefilter("always")
        t.fit(data)
    msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(msgs) == 3
    assert all("nll/m1" in m and "nll/m0" not in m and "skipped without updating the weights" in m for m in msgs)
    # the optimiser never touched the weights after the first bad step, nor its own state
    assert same(snapshots[3], params(model)) and same(snapshots[3], snapshots[4]) and same(snapshots[4], snapshots[5])
    assert all(int(s["step"]) == 3 for s in t.opt.state_dict()["state"].values())
    message = str(info.value)
    assert "3 consecutive steps" in message and "last.pt is intact" in message and "stopped training" in message
    state = read_checkpoint(tmp_path)
    assert state["epoch"] == 1 and same(state["model"], params(model))
    assert all(bool(torch.isfinite(v).all()) for v in state["model"].values() if v.is_floating_point())
    log = (tmp_path / "train.log").read_text()
    assert log.count("non-finite terms: nll/m1") == 3


def test_streak_resets_after_a_good_step():
    data = toy(48)
    model = toy_model(data, "mopoe")
    calls = {"n": -1}
    model.register_forward_pre_hook(lambda m, a: calls.__setitem__("n", calls["n"] + 1) if m.training else None)
    model.modalities["m0"].decoder.register_forward_hook(
        lambda m, a, out: out * float("inf") if calls["n"] % 2 == 1 else out)  # every other step is bad
    t = Trainer(model, max_epochs=3, batch_size=16, progress=False, device="cpu", max_nonfinite=2)
    with pytest.warns(RuntimeWarning, match="nll/m0"):
        history = t.fit(data)
    assert len(history) == 3 and all(torch.isfinite(v).all() for v in params(model).values())


def test_nonfinite_gradient_skipped():
    """A finite loss with a NaN gradient is skipped too, before the optimiser step; an epoch in which no step was
    finite ends the run (issue 14: training that never made a finite step is an error, not a result)."""
    data = toy(32)
    model = toy_model(data, "mmvm")
    weights = lambda: {k: v.detach().clone() for k, v in model.named_parameters()}  # noqa: E731 (not buffers)
    start = weights()
    weight = model.modalities["m2"].encoder.net[0].weight
    weight.register_hook(lambda g: g * float("nan"))
    with pytest.warns(RuntimeWarning, match="non-finite gradients"):
        t = Trainer(model, max_epochs=1, batch_size=16, progress=False, device="cpu", max_nonfinite=10)
        with pytest.raises(NonFiniteLossError, match="train/loss is nan"):
            t.fit(data)
    assert same(start, weights()) and t.opt.state_dict()["state"] == {}


def test_cli_reports_nonfinite_stop(tmp_path, capsys, monkeypatch):
    """A diverging run (lr 1e30) ends `mmvae train` with exit code 3 and a message, not a traceback."""
    monkeypatch.setitem(DATASETS, "tiny", cli_driver.tiny)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        code = cli.main(["train", "--dataset", "tiny", "--epochs", "3", "--lr", "1e30", "--max-nonfinite", "2",
                         "--batch-size", "16", "--device", "cpu", "--quiet", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "training stopped on non-finite losses" in err and "2 consecutive steps" in err
    assert "Traceback" not in err
