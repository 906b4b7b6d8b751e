"""Choosing ready-made networks: "auto" from the shape, a family by name per modality (Python, CLI, TOML), and the
choice surviving a checkpoint."""
import json

import pytest
import torch

from mmvae import MultimodalVAE, cli
from mmvae.datasets import MultimodalDataset
from mmvae.errors import InputError
from mmvae.modality import Modality
from mmvae.models import build, default_modalities
from mmvae.models.presets import parse_networks


def _data(n=24):
    g = torch.Generator().manual_seed(0)
    return MultimodalDataset({"series": torch.randn(n, 16, 3, generator=g), "vec": torch.randn(n, 5, generator=g),
                              "img": torch.rand(n, 1, 8, 8, generator=g),
                              "tok": torch.randint(6, (n, 10), generator=g)})


def _types(model):
    return {n: type(m.encoder).__name__ for n, m in model.modalities.items()}


def test_auto_picks_from_the_shape_and_a_family_can_be_named_per_modality():
    data = _data()
    assert _types(build("mopoe", data)) == {"series": "TemporalConvEncoder", "vec": "MLPEncoder",
                                             "img": "ConvEncoder", "tok": "MLPEncoder"}
    assert set(_types(build("mopoe", data, networks="mlp")).values()) == {"MLPEncoder"}
    chosen = _types(build("mopoe", data, networks="series=transformer,tok=tconv"))
    assert chosen == {"series": "TransformerSeqEncoder", "vec": "MLPEncoder", "img": "ConvEncoder",
                      "tok": "TemporalConvEncoder"}
    assert _types(build("mopoe", data, networks={"tok": "transformer"}))["tok"] == "TransformerSeqEncoder"


@pytest.mark.parametrize("networks, message", [
    ("lstm", "unknown family 'lstm'"),
    ("audio=tconv", "unknown modality 'audio'"),
    ("series=tconv,vec", "NAME=FAMILY"),
])
def test_bad_network_choices_name_the_problem(networks, message):
    with pytest.raises(InputError, match=message):
        parse_networks(networks, list(_data().modalities))


def test_a_family_that_does_not_fit_the_shape_names_the_modality():
    with pytest.raises(InputError, match=r"modality 'vec': networks 'tconv' need a float \[T, C\] series"):
        build("mopoe", _data(), networks={"vec": "tconv"})
    with pytest.raises(InputError, match=r"modality 'series': networks 'conv' need float \[C, H, W\] images"):
        build("mopoe", _data(), networks={"series": "conv"})
    with pytest.raises(InputError, match="unknown networks 'rnn'"):
        Modality(shape=(4, 3), networks="rnn")


def test_sequence_networks_rebuild_from_the_config_with_the_same_outputs():
    data = _data()
    torch.manual_seed(0)
    model = build("mmvm", data, networks="series=transformer,tok=tconv").eval()
    again = MultimodalVAE.from_config(json.loads(json.dumps(model.config()))).eval()  # no dropout
    again.load_state_dict(model.state_dict())
    x = {n: data.data[n][:6] for n in data.modalities}
    x["series"][:3, 12:] = float("nan")  # padded to 16 steps
    x["tok"][:2, 7:] = -1
    assert torch.equal(model.embed(x)["shared"], again.embed(x)["shared"])
    assert model.config()["modalities"]["series"]["networks"] == "transformer"
    assert default_modalities(data)["series"].networks == "auto"


def test_the_cli_takes_networks_as_an_option(tmp_path, capsys):
    code = cli.main(["train", "--dataset", "spikes", "--n-train", "64", "--n-test", "32", "--epochs", "1",
                     "--networks", "rat0=transformer,rat1=mlp", "--out", str(tmp_path / "run"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    mods = cfg["model"]["modalities"]
    assert mods["rat0"]["encoder"]["type"] == "TransformerSeqEncoder"
    assert mods["rat1"]["encoder"]["type"] == "MLPEncoder"
    assert mods["rat2"]["encoder"]["type"] == "TemporalConvEncoder"
    assert cfg["settings"]["networks"] == "rat0=transformer,rat1=mlp"
    code = cli.main(["train", "--dataset", "spikes", "--n-train", "64", "--epochs", "1", "--networks", "rat9=mlp",
                     "--out", str(tmp_path / "bad"), "--quiet"])
    assert code == 2 and "unknown modality 'rat9'" in capsys.readouterr().err
