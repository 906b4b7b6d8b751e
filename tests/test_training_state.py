"""The one checkpoint layout (`TrainingState`) and the two forms `Trainer(optimizer=)` takes."""
from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn

from mmvae import InputError
from mmvae.checkpoint import TrainingState
from mmvae.errors import CheckpointError
from mmvae.trainer import Trainer


def _state() -> TrainingState:
    model = nn.Linear(2, 1)
    return TrainingState(model=model.state_dict(), optimizer=torch.optim.Adam(model.parameters()).state_dict(),
                         epoch=2, global_step=9, step_in_epoch=3, config={"a": 1}, trainer={"seed": 0},
                         history=[{"epoch": 1, "train/loss": 1.5}], best_val=0.5,
                         epoch_sums={"n": 4.0, "loss": 2.0, "terms": {}}, epoch_time=1.25,
                         rng={"torch": [torch.get_rng_state()], "cuda": [[]]})


def test_round_trip_keeps_every_field_and_the_stored_keys():
    state = _state()
    stored = state.to_dict()
    assert set(stored) == {"config", "trainer", "extra", "history", "model", "optimizer", "epoch", "step_in_epoch",
                           "global_step", "step", "nonfinite_streak", "best_val", "epoch_sums", "epoch_time", "rng"}
    assert stored["step"] == stored["global_step"] == 9 and isinstance(stored["history"], str)
    back = TrainingState.from_dict(stored)
    assert back.history == state.history and back.config == state.config and back.epoch_sums == state.epoch_sums
    assert (back.epoch, back.global_step, back.step_in_epoch, back.best_val) == (2, 9, 3, 0.5)
    assert torch.equal(back.rng["torch"][0], state.rng["torch"][0])
    assert "scaler" in TrainingState(**{**vars(state), "scaler": {"scale": 1.0}}).to_dict()


def test_an_older_checkpoint_without_the_optional_keys_loads_with_defaults():
    minimal = {k: v for k, v in _state().to_dict().items() if k in TrainingState.REQUIRED}
    back = TrainingState.from_dict(minimal)
    assert (back.step_in_epoch, back.nonfinite_streak, back.best_val, back.epoch_time) == (0, 0, math.inf, 0.0)
    assert back.history == [] and back.trainer == {} and back.config is None and back.scaler is None


def test_a_dict_without_the_required_keys_is_refused_by_name():
    with pytest.raises(CheckpointError, match="lacks optimizer, global_step"):
        TrainingState.from_dict({"model": {}, "epoch": 1})


def test_optimizer_is_none_or_a_callable_of_the_parameters():
    model = nn.Linear(2, 1)
    assert Trainer(model).settings()["optimizer"] == "Adam"
    sgd = functools.partial(torch.optim.SGD, lr=0.1)
    assert Trainer(model, optimizer=sgd).settings()["optimizer"] == "SGD"
    for bad, why in [(torch.optim.SGD(model.parameters(), lr=0.1), "built already"), ("sgd", "not callable")]:
        with pytest.raises(InputError, match=f"functools.partial.*{why}"):
            Trainer(model, optimizer=bad)
