"""Your own encoders, decoders and likelihoods survive a checkpoint: `mmvae.register_network` /
`mmvae.register_likelihood` (mmvae/registry.py), `mmvae.load` without `modalities=`, and `mmvae --import MODULE`.

The parts live in a module file the tests write, as a user's would; the run is trained once (one epoch, tiny data).
Outputs of the reloaded model are compared exactly (torch.equal): the same weights run the same computation.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import mmvae
from mmvae import InputError, Modality, MultimodalVAE, Trainer
from mmvae.cli import main as cli_main
from mmvae.cli.imports import import_module
from mmvae.datasets import MultimodalDataset
from mmvae.likelihoods import LIKELIHOODS, Gaussian, make_likelihood
from mmvae.networks import NETWORKS

MODULE = "my_mmvae_parts"
PARTS = textwrap.dedent('''
    """A user's own parts: a Conv1d encoder/decoder pair for [3, 16] sequences, a Student-t likelihood and a
    fixed-scale Gaussian under another name."""
    import pyro.distributions as pdist
    from torch import nn

    import mmvae
    from mmvae.likelihoods import Gaussian, Likelihood


    @mmvae.register_network
    class SeqEncoder(nn.Module):
        def __init__(self, channels, length, out_dim, hidden=8, kernel=(3,)):
            super().__init__()
            k = kernel[0]
            self.net = nn.Sequential(nn.Conv1d(channels, hidden, k, padding=k // 2), nn.SiLU(), nn.Flatten(),
                                     nn.Linear(hidden * length, out_dim))

        def forward(self, x):
            return self.net(x)


    @mmvae.register_network("SeqDecoder")
    class Conv1dDecoder(nn.Module):
        def __init__(self, in_dim, channels, length, hidden=8):
            super().__init__()
            self.shape = (hidden, length)
            self.stem = nn.Linear(in_dim, hidden * length)
            self.conv = nn.Conv1d(hidden, channels, 3, padding=1)

        def forward(self, z):
            return self.conv(self.stem(z).view(-1, *self.shape))


    @mmvae.register_likelihood
    class StudentT(Likelihood):
        name = "student_t"

        def __init__(self, df=4.0, scale=0.5):
            super().__init__()
            self.df, self.scale = df, scale

        def dist(self, params, event_dims):
            return pdist.StudentT(self.df, params, self.scale).to_event(event_dims)


    class FixedGaussian(Gaussian):
        def __init__(self, sigma=0.3):
            super().__init__(scale=sigma)


    mmvae.register_likelihood(FixedGaussian, name="fixed_gaussian")
''')
OURS = {"networks": ("SeqEncoder", "SeqDecoder"), "likelihoods": ("student_t", "fixed_gaussian")}
HINT = "register it with mmvae.register_network before loading, or pass --import MODULE on the command line"


def _restore(snapshot: dict) -> None:
    """Put NETWORKS and LIKELIHOODS back as they were."""
    for registry, before in ((NETWORKS, snapshot["networks"]), (LIKELIHOODS, snapshot["likelihoods"])):
        registry.clear()
        registry.update(before)


@pytest.fixture
def clean_registries():
    """Registrations made inside a test are undone after it."""
    snapshot = {"networks": dict(NETWORKS), "likelihoods": dict(LIKELIHOODS)}
    yield
    _restore(snapshot)


@pytest.fixture
def unregistered(monkeypatch):
    """The registry as in a fresh process that never imported the user's module (restored after the test)."""
    for name in OURS["networks"]:
        monkeypatch.delitem(NETWORKS, name)
    for name in OURS["likelihoods"]:
        monkeypatch.delitem(LIKELIHOODS, name)
    monkeypatch.delitem(sys.modules, MODULE)


def _data(n=24, seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"seq": torch.randn(n, 3, 16, generator=g), "vec": torch.randn(n, 4, generator=g)}


def _modalities(parts) -> dict[str, Modality]:
    return {"seq": Modality(parts.SeqEncoder(3, 16, 2 * 3, kernel=(3,)), parts.Conv1dDecoder(3, 3, 16),
                            parts.StudentT(df=3.0), shape=(3, 16)),
            "vec": Modality(likelihood=parts.FixedGaussian(sigma=0.2), shape=(4,))}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    """(run folder, module folder, trained model, parts module): one epoch with the user's registered parts."""
    snapshot = {"networks": dict(NETWORKS), "likelihoods": dict(LIKELIHOODS)}
    folder = tmp_path_factory.mktemp("user_module")
    (folder / f"{MODULE}.py").write_text(PARTS)
    parts = import_module(str(folder / f"{MODULE}.py"))
    torch.manual_seed(0)
    model = MultimodalVAE(_modalities(parts), shared_dim=2, private_dim={"seq": 1, "vec": 1}, aggregator="mopoe")
    run = tmp_path_factory.mktemp("run")
    Trainer(model, max_epochs=1, batch_size=8, device="cpu", progress=False, out=run).fit(MultimodalDataset(_data()))
    yield run, folder, model.eval(), parts
    _restore(snapshot)
    sys.modules.pop(MODULE, None)


def _outputs(model: MultimodalVAE) -> list[torch.Tensor]:
    """Deterministic outputs: posterior means, decoder parameters at fixed codes, log-likelihoods of the data."""
    x = _data(5, seed=1)
    emb = model.embed(x)
    out = [emb["shared"], *emb["private"].values()]
    with torch.no_grad():
        for name, mod in model.modalities.items():
            params = mod.decoder(torch.linspace(-1, 1, 5 * 3).view(5, 3))
            out += [params, mod.likelihood.log_prob(params, x[name]), mod.likelihood.mean(params)]
    return out


def test_registered_parts_are_stored_by_name_and_load_without_modalities(trained):
    run, _, model, _ = trained
    cfg = model.config()["modalities"]
    assert cfg["seq"]["encoder"] == {"type": "SeqEncoder", "channels": 3, "length": 16, "out_dim": 6, "hidden": 8,
                                     "kernel": [3]}
    assert cfg["seq"]["decoder"] == {"type": "SeqDecoder", "in_dim": 3, "channels": 3, "length": 16, "hidden": 8}
    assert cfg["seq"]["likelihood"] == {"name": "student_t", "df": 3.0, "scale": 0.5}
    assert cfg["vec"]["likelihood"] == {"name": "fixed_gaussian", "sigma": 0.2}  # not Gaussian's own config
    loaded = mmvae.load(run)
    assert loaded.config() == json.loads(json.dumps(model.config()))
    assert type(loaded.modalities["seq"].encoder) is type(model.modalities["seq"].encoder)
    assert all(torch.equal(a, b) for a, b in zip(_outputs(loaded), _outputs(model)))


def test_a_registered_likelihood_round_trips_through_make_likelihood(trained):
    _, _, _, parts = trained
    for lik in (parts.StudentT(df=2.5), parts.FixedGaussian(sigma=0.1)):
        again = make_likelihood(lik.config())
        assert type(again) is type(lik) and again.config() == lik.config()
    assert float(make_likelihood("fixed_gaussian").log_scale.exp()) == pytest.approx(0.3)


def test_an_unregistered_type_names_the_modality_the_type_and_the_fix(trained, unregistered):
    run, _, model, parts = trained
    with pytest.raises(InputError) as info:
        mmvae.load(run)
    msg = str(info.value)
    assert "modality 'seq'" in msg and "encoder type 'SeqEncoder'" in msg and HINT in msg, msg
    assert isinstance(info.value, mmvae.CheckpointError)  # it comes from a checkpoint, too
    NETWORKS.update(SeqEncoder=parts.SeqEncoder, SeqDecoder=parts.Conv1dDecoder)
    with pytest.raises(InputError, match=r"modality 'seq'.*likelihood 'student_t'.*mmvae.register_likelihood"):
        mmvae.load(run)
    del NETWORKS["SeqEncoder"], NETWORKS["SeqDecoder"]
    loaded = mmvae.load(run, modalities=_modalities(parts))  # `modalities=` still works
    assert all(torch.equal(a, b) for a, b in zip(_outputs(loaded), _outputs(model)))


def _impute_files(tmp_path: Path) -> list[str]:
    """`impute` arguments: a .npz whose 'vec' is missing in every row."""
    x = {k: v.numpy() for k, v in _data(6, seed=2).items()}
    x["vec"][:] = np.nan
    np.savez(tmp_path / "in.npz", **x)
    return ["--input", str(tmp_path / "in.npz"), "--out", str(tmp_path / "out.npz")]


def _cli(args: list[str], pythonpath: Path) -> subprocess.CompletedProcess:
    repo = Path(mmvae.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(pythonpath), str(repo)]), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "mmvae.cli", "--threads", "1", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_the_command_line_loads_the_run_with_import_and_explains_without(trained, tmp_path):
    run, folder, _, _ = trained
    files = _impute_files(tmp_path)
    done = _cli(["--import", MODULE, "impute", str(run), *files], folder)
    assert done.returncode == 0, done.stderr
    with np.load(tmp_path / "out.npz") as f:
        assert f["vec"].shape == (6, 4) and np.isfinite(f["vec"]).all()
    failed = _cli(["impute", str(run), *files], folder)  # no --import: the module is on the path but not imported
    assert failed.returncode == 2 and "Traceback" not in failed.stderr, failed.stderr
    assert "modality 'seq'" in failed.stderr and "'SeqEncoder'" in failed.stderr and HINT in failed.stderr


def test_import_takes_a_file_path_after_the_command_too(trained, tmp_path, unregistered, capsys):
    run, folder, _, _ = trained
    files = _impute_files(tmp_path)
    assert cli_main(["impute", str(run), *files, "--import", str(folder / f"{MODULE}.py")]) == 0
    assert MODULE in sys.modules and "SeqEncoder" in NETWORKS
    assert cli_main(["--import", "no_such_mmvae_module", "impute", str(run), *files]) == 2
    assert "--import no_such_mmvae_module: no module named 'no_such_mmvae_module'" in capsys.readouterr().err
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    assert cli_main(["--import", str(broken), "impute", str(run), *files]) == 2
    assert f"--import {broken}: importing it raised RuntimeError: boom" in capsys.readouterr().err


def test_registration_rules(clean_registries):
    class Net(nn.Linear):
        pass

    class Other(nn.Linear):
        pass

    assert mmvae.register_network(Net) is Net and mmvae.register_network(Net) is Net  # again: a no-op
    assert mmvae.register_network(name="Other2")(Other) is Other and NETWORKS["Other2"] is Other
    with pytest.raises(InputError, match=r"the network name 'Net' is taken by .*Net; register .*Other under an"):
        mmvae.register_network(Other, "Net")
    with pytest.raises(InputError, match="Other is already registered as the network 'Other2'"):
        mmvae.register_network(Other, "Other3")
    with pytest.raises(InputError, match="'MLPEncoder' is taken"):
        mmvae.register_network(Other, "MLPEncoder")
    with pytest.raises(InputError, match="expects an nn.Module subclass"):
        mmvae.register_network(lambda: None)

    class Lik(Gaussian):
        name = "lik_a"

    with pytest.raises(InputError, match=r"Lik.name is 'lik_a'; register it as 'lik_a'"):
        mmvae.register_likelihood(Lik, "lik_b")
    with pytest.raises(InputError, match="taken"):
        mmvae.register_likelihood(type("G", (Gaussian,), {}), "gaussian")
    with pytest.raises(InputError, match="subclass of mmvae.likelihoods.Likelihood"):
        mmvae.register_likelihood(Net)


def test_an_argument_a_checkpoint_cannot_store_is_named_at_save_time(clean_registries, tmp_path):
    @mmvae.register_network
    class Wrapped(nn.Module):
        def __init__(self, inner: nn.Module, out_dim: int):
            super().__init__()
            self.inner, self.out_dim = inner, out_dim

        def forward(self, x):
            return self.inner(x)

    mods = {"a": Modality(Wrapped(nn.Linear(6, 4), 4), Wrapped(nn.Linear(2, 6), 6), shape=(6,))}
    model = MultimodalVAE(mods, 2)
    with pytest.raises(InputError, match=r"modality 'a': encoder 'Wrapped': argument 'inner' = Linear\(.*not JSON"):
        model.config()
    with pytest.raises(InputError, match=r"modality 'a': encoder 'Wrapped': argument 'inner'"):
        Trainer(model, max_epochs=1, device="cpu", progress=False, out=tmp_path).fit(
            MultimodalDataset({"a": torch.randn(4, 6)}))


def test_a_class_with_its_own_spec_keeps_it_under_the_registered_name(clean_registries):
    @mmvae.register_network("Tiny")
    class TinyLinear(nn.Linear):
        @property
        def spec(self):
            return {"type": "whatever", "in_features": self.in_features, "out_features": self.out_features}

    mods = {"a": Modality(TinyLinear(6, 4), TinyLinear(2, 6), shape=(6,))}
    cfg = json.loads(json.dumps(MultimodalVAE(mods, 2).config()))
    assert cfg["modalities"]["a"]["encoder"] == {"type": "Tiny", "in_features": 6, "out_features": 4}
    again = MultimodalVAE.from_config(cfg)
    assert type(again.modalities["a"].decoder) is TinyLinear
