"""Issue 5.5: determinism. `seed=` makes CPU training reproducible bit for bit (for the library and for the CLI,
where the seed also fixes the initial weights); the run folder records the seed, the versions of torch, pyro and
mmvae, and the full configuration."""
from __future__ import annotations

import json
from importlib import metadata

import cli_driver
import pytest
import torch
from reliability_helpers import params, same, toy, toy_model

import mmvae
from mmvae import cli
from mmvae.checkpoint import read_checkpoint
from mmvae.datasets import DATASETS
from mmvae.trainer import Trainer


def _train(preset, seed, model_seed=0, epochs=2, out=None):
    data = toy(48).drop(0.3, seed=2)
    model = toy_model(data, preset, seed=model_seed)
    t = Trainer(model, max_epochs=epochs, batch_size=16, progress=False, device="cpu", seed=seed, out=out)
    t.fit(data, val=toy(16, "test"))
    return t


@pytest.mark.parametrize("preset", ["mopoe", "mmvae", "mmvm", "mmvaeplus", "dmvae"])
def test_same_seed_same_bits(preset):
    a, b, c = _train(preset, 5), _train(preset, 5), _train(preset, 6)
    assert same(params(a.model), params(b.model))
    assert [h["train/loss"] for h in a.history] == [h["train/loss"] for h in b.history]
    assert not same(params(a.model), params(c.model))


def _cli(out, seed, capsys):
    code = cli.main(["train", "--dataset", "tiny", "--epochs", "2", "--batch-size", "16", "--seed", str(seed),
                     "--device", "cpu", "--quiet", "--out", str(out)])
    capsys.readouterr()
    assert code == 0
    return read_checkpoint(out)


def test_cli_seed_reproducible_and_recorded(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(DATASETS, "tiny", cli_driver.tiny)
    torch.manual_seed(12345)  # whatever the global RNG holds, --seed decides
    a = _cli(tmp_path / "a", 4, capsys)
    torch.manual_seed(999)
    b = _cli(tmp_path / "b", 4, capsys)
    c = _cli(tmp_path / "c", 5, capsys)
    untimed = lambda s: [{k: v for k, v in h.items() if k != "time"} for h in json.loads(s["history"])]  # noqa: E731
    assert same(a["model"], b["model"]) and untimed(a) == untimed(b)
    assert not same(a["model"], c["model"])
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg["seed"] == 4 and cfg["settings"]["seed"] == 4 and cfg["trainer"]["seed"] == 4
    assert cfg["versions"]["torch"] == torch.__version__
    assert cfg["versions"]["pyro"] == metadata.version("pyro-ppl")
    assert cfg["versions"]["mmvae"] == mmvae.__version__
    assert cfg["threads"] == torch.get_num_threads()
    # the full configuration: the model rebuilds from it alone, and every training setting is there
    assert cfg["model"] == json.loads(a["config"])
    rebuilt = mmvae.MultimodalVAE.from_config(cfg["model"])
    rebuilt.load_state_dict(a["model"])
    assert {"dataset", "model", "epochs", "batch_size", "lr", "seed", "device", "drop_rate", "max_nonfinite"} <= \
        set(cfg["settings"])
    assert {"max_epochs", "batch_size", "lr", "seed", "optimizer", "max_nonfinite"} <= set(cfg["trainer"])


def test_run_folder_of_the_library_trainer(tmp_path):
    t = _train("mmvm", 3, out=tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["seed"] == 3 and cfg["model"] == json.loads(json.dumps(t.model.config()))
    assert {"torch", "pyro", "mmvae", "python"} <= set(cfg["versions"])
