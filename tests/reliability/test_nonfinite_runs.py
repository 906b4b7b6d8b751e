"""Issue 14.3 and 14.4 (options): nothing non-finite is saved or called good. The weights are checked after each
step as well as the loss; an epoch whose validation loss is not finite is never last.pt or best.pt; a run that
never made a finite step exits non-zero; a checkpoint with non-finite weights is refused by `impute` and
`evaluate`. Options that are NaN, infinite, zero or negative counts are refused, and `--lr` on resume is applied
to the optimiser and recorded truthfully."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fault_helpers import TRAIN, copy_run, one_error_line, run_cli, train_run
from reliability_helpers import count, toy, toy_model

from mmvae.checkpoint import read_checkpoint, save_checkpoint
from mmvae.errors import InputError, NonFiniteLossError
from mmvae.trainer import Trainer


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_run(tmp_path_factory.mktemp("nonfinite") / "run", 1, "--lr", "0.01")


def test_lr_inf_in_trainer_stops_without_saving(tmp_path):
    data = toy(32)
    with pytest.raises(NonFiniteLossError, match="made the weights non-finite.*no checkpoint was written"):
        Trainer(toy_model(data), max_epochs=2, batch_size=16, lr=float("inf"), progress=False, device="cpu",
                out=tmp_path).fit(data, data)
    assert not (tmp_path / "last.pt").exists() and not (tmp_path / "best.pt").exists()
    count("nonfinite_checkpoint")


def test_diverging_run_exits_nonzero_and_saves_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, *TRAIN, "--epochs", "2", "--lr", "1e30", "--out", out)
    line = one_error_line(err, "train")
    assert code == 3 and "not finite" not in stdout and "trained" not in stdout, (stdout, err)
    assert "no checkpoint was written" in line and "good" not in line
    assert not (out / "last.pt").exists() and not (out / "best.pt").exists()
    count("nonfinite_checkpoint")


def test_divergence_after_good_epochs_keeps_the_good_checkpoints(trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path / "run")
    last, best = (run / "last.pt").read_bytes(), (run / "best.pt").read_bytes()
    code, _, err = run_cli(capsys, *TRAIN, "--epochs", "3", "--lr", "1e30", "--out", run, "--resume", run)
    line = one_error_line(err, "train")
    assert code == 3 and f"the last checkpoint {run / 'last.pt'} is intact (saved with finite" in line, err
    assert (run / "last.pt").read_bytes() == last and (run / "best.pt").read_bytes() == best
    count("nonfinite_checkpoint")


def test_checkpoint_with_nonfinite_weights_is_refused(trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path / "run")
    state = read_checkpoint(run)
    key = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][key] = torch.full_like(state["model"][key], float("nan"))
    save_checkpoint(run / "last.pt", state)
    (run / "best.pt").unlink()
    x = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
    np.savez(tmp_path / "in.npz", m0=x, m1=np.full_like(x, np.nan), m2=x)
    code, _, err = run_cli(capsys, "impute", run, "--input", tmp_path / "in.npz", "--out", tmp_path / "out.npz")
    assert code == 2 and "weights are not finite" in one_error_line(err, "impute")
    assert not (tmp_path / "out.npz").exists()
    code, _, err = run_cli(capsys, "evaluate", run, "--quick", "--metrics", "imputation", "--device", "cpu")
    assert code == 2 and "weights are not finite" in one_error_line(err, "evaluate")
    assert not (run / "metrics.json").exists()
    count("nonfinite_checkpoint", 2)


@pytest.mark.parametrize("args", [["--epochs", "0"], ["--lr", "nan"], ["--lr", "inf"], ["--drop-rate", "nan"],
                                  ["--beta", "nan"], ["--batch-size", "0"], ["--max-nonfinite", "0"]])
def test_train_options_nan_inf_and_zero_counts_refused(tmp_path, capsys, args):
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, *TRAIN, *args, "--out", out)
    assert code == 2 and one_error_line(err, "train").startswith("mmvae train: error: command line: option")
    assert not (out / "last.pt").exists()
    count("bad_input_cases")


@pytest.mark.parametrize("text", ["lr = inf", "lr = nan", "drop_rate = nan", "epochs = 0"])
def test_config_file_nan_and_zero_refused(tmp_path, capsys, text):
    (tmp_path / "c.toml").write_text(text + "\n")
    code, _, err = run_cli(capsys, *TRAIN, "--config", tmp_path / "c.toml", "--out", tmp_path / "run")
    assert code == 2 and "c.toml: option" in one_error_line(err, "train")
    count("bad_input_cases")


def test_trainer_refuses_zero_epochs():
    data = toy(16)
    with pytest.raises(InputError, match="max_epochs"):
        Trainer(toy_model(data), max_epochs=0, progress=False, device="cpu")


def _lr(run):
    state = read_checkpoint(run)
    config = json.loads((run / "config.json").read_text())
    return ({g["lr"] for g in state["optimizer"]["param_groups"]}, config["trainer"]["lr"],
            config["settings"]["lr"])


def test_resume_applies_and_records_the_lr(trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path / "run")
    assert _lr(run) == ({0.01}, 0.01, 0.01)
    code, _, err = run_cli(capsys, *TRAIN, "--epochs", "2", "--lr", "0.002", "--out", run, "--resume", run)
    assert code == 0, err
    assert _lr(run) == ({0.002}, 0.002, 0.002)  # the optimiser uses the lr config.json records
    code, _, err = run_cli(capsys, *TRAIN, "--epochs", "3", "--out", run, "--resume", run)
    assert code == 0, err
    assert _lr(run) == ({0.002}, 0.002, 0.002)  # without --lr: the checkpoint's, not the table default
