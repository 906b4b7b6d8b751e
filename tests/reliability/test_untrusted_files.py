"""Issue 5.4: untrusted files. Checkpoints load with weights_only=True only, so a file carrying a pickled object
is refused without running it, through every door (read_checkpoint, mmvae.load, Trainer(resume=), `mmvae impute`,
`mmvae train --resume`); config files are data; a checkpoint records the mmvae version and the model config, and
loading it into an incompatible model says what differs."""
from __future__ import annotations

import json

import pytest
import torch
from reliability_helpers import count, params, same, toy, toy_model

import mmvae
from mmvae import CheckpointError, Modality, cli
from mmvae.checkpoint import read_checkpoint, save_checkpoint
from mmvae.networks import MLPDecoder, MLPEncoder
from mmvae.trainer import Trainer


class Payload:
    """Unpickling this creates the marker file (it would run `open(marker, "w")`)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    data = toy(32)
    model = toy_model(data, "mopoe", shared_dim=2)
    Trainer(model, max_epochs=1, batch_size=16, progress=False, device="cpu", out=run).fit(data)
    return run, model, data


def _evil_files(folder, good_state):
    marker = folder / "pwned"
    folder.mkdir(exist_ok=True)
    # 1: the whole file is an object; 2: a valid checkpoint with one object hidden in it; 3: the object in a run folder
    torch.save(Payload(marker), folder / "object.pt")
    torch.save({**good_state, "extra": Payload(marker)}, folder / "hidden.pt")
    (folder / "run").mkdir(exist_ok=True)
    torch.save({**good_state, "model": {**good_state["model"], "x": Payload(marker)}}, folder / "run" / "last.pt")
    return marker, [folder / "object.pt", folder / "hidden.pt", folder / "run"]


def test_pickled_objects_are_refused_everywhere(trained, tmp_path, capsys):
    run, model, data = trained
    marker, files = _evil_files(tmp_path, read_checkpoint(run))
    for path in files:
        for load in (read_checkpoint, mmvae.load):
            with pytest.raises(CheckpointError, match="refusing to unpickle"):
                load(path)
        with pytest.raises(CheckpointError, match="refusing to unpickle"):
            Trainer(toy_model(data), max_epochs=2, progress=False, device="cpu", resume=path).fit(data)
        code = cli.main(["impute", str(path), "--input", str(tmp_path / "x.npz"), "--out", str(tmp_path / "y.npz")])
        err = capsys.readouterr().err
        assert code == 2 and "refusing to unpickle" in err and "Traceback" not in err
        code = cli.main(["train", "--dataset", "toy", "--epochs", "1", "--device", "cpu", "--quiet",
                         "--resume", str(path), "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert code == 2 and "refusing to unpickle" in err
        assert not marker.exists(), "the payload ran"
    # the crafted files are real: unpickling them without weights_only would run the payload
    torch.load(files[0], weights_only=False)
    assert marker.exists()


def test_damaged_checkpoints_are_refused(trained, tmp_path):
    run, _, _ = trained
    good = (run / "last.pt").read_bytes()
    cases = {"truncated.pt": good[: len(good) // 2], "empty.pt": b"", "text.pt": b"epoch = 3\n"}
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(CheckpointError, match="not a readable checkpoint"):
            mmvae.load(tmp_path / name)
    torch.save({"model": {}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not an mmvae checkpoint"):
        mmvae.load(tmp_path / "foreign.pt")


def test_checkpoint_records_version_and_config(trained):
    run, model, _ = trained
    state = read_checkpoint(run)
    assert state["mmvae_version"] == mmvae.__version__
    assert {"torch_version", "pyro_version"} <= set(state)
    assert json.loads(state["config"]) == json.loads(json.dumps(model.config()))
    loaded = mmvae.load(run)
    assert same(params(loaded), state["model"]) and loaded.config() == model.config()


def _modalities(data, latent):
    return {m: Modality(MLPEncoder(data.shapes[m], 2 * latent, hidden=(16,)),
                        MLPDecoder(latent, data.shapes[m], hidden=(16,)), "gaussian") for m in data.modalities}


def test_incompatible_configuration_says_what_differs(trained):
    run, _, data = trained
    # user networks built for a latent of 3 where the checkpoint has 2
    with pytest.raises(CheckpointError) as info:
        mmvae.load(run, modalities=_modalities(data, 3))
    msg = str(info.value)
    assert "configuration differs" in msg and "modalities.m0.encoder.out_dim: checkpoint 4, model 6" in msg
    assert "weights differ" in msg and "modalities.m0.encoder.net.2.weight: checkpoint [4, 16], model [6, 16]" in msg
    # resuming into a model with another shared_dim / hidden size
    for other, expected in [(toy_model(data, "mopoe", shared_dim=3), "shared_dim: checkpoint 2, model 3"),
                            (toy_model(data, "mmvm", shared_dim=2), "prior.name: checkpoint 'normal', model 'mmvamp'")]:
        with pytest.raises(CheckpointError) as info:
            Trainer(other, max_epochs=2, progress=False, device="cpu", resume=run).fit(data)
        assert expected in str(info.value) and "weights differ" in str(info.value), str(info.value)


def test_compatible_but_different_configuration_warns_on_resume(trained, tmp_path):
    run, _, data = trained
    model = toy_model(data, "mopoe", shared_dim=2, beta=0.5)
    with pytest.warns(UserWarning, match=r"different model configuration: objective.beta: checkpoint 1.0, model 0.5"):
        Trainer(model, max_epochs=2, batch_size=16, progress=False, device="cpu", resume=run,
                out=tmp_path).fit(data)


def test_tampered_config_is_an_error_not_a_crash(trained, tmp_path):
    run, _, _ = trained
    state = read_checkpoint(run)
    cfg = json.loads(state["config"])
    cfg["modalities"]["m0"]["encoder"]["type"] = "os.system"
    save_checkpoint(tmp_path / "net.pt", {**state, "config": json.dumps(cfg)})
    save_checkpoint(tmp_path / "json.pt", {**state, "config": "{not json"})
    cfg = json.loads(state["config"])
    cfg["future_option"] = 1
    save_checkpoint(tmp_path / "future.pt", {**state, "config": json.dumps(cfg), "mmvae_version": "9.0.0"})
    for name, fragment in [("net.pt", "cannot rebuild"), ("json.pt", "not valid JSON"),
                           ("future.pt", "made with mmvae 9.0.0")]:
        with pytest.raises(CheckpointError, match=fragment):
            mmvae.load(tmp_path / name)


def test_config_files_are_data_never_executed(tmp_path, capsys):
    """Strings that look like code stay strings: they fail as unknown names, and nothing runs."""
    marker = tmp_path / "pwned"
    payload = f"__import__('os').system('touch {marker}')"
    for name, text in [("a.toml", f'model = "{payload}"'), ("b.toml", f'dataset = "{payload}"'),
                       ("c.json", json.dumps({"device": payload, "dataset": "toy", "epochs": 1}))]:
        (tmp_path / name).write_text(text)
        count("bad_input_cases")
        code = cli.main(["train", "--config", str(tmp_path / name), "--out", str(tmp_path / "run"), "--quiet"])
        err = capsys.readouterr().err
        assert code != 0 and "Traceback" not in err and payload in err, err
        assert not marker.exists()
