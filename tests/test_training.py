"""End-to-end training of the real model with the real Trainer: loss goes down, resume is exact, README runs."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmvae import Modality, MultimodalVAE, Trainer
from mmvae.datasets import PolyDigits, SharedPrivateToy
from mmvae.models import build

ROOT = Path(__file__).resolve().parents[1]


def _model(dataset, aggregator="mopoe", private_dim=0, seed=0):
    torch.manual_seed(seed)
    mods = {n: Modality(shape=dataset.shapes[n], likelihood=dataset.likelihoods[n]) for n in dataset.modalities}
    return MultimodalVAE(mods, shared_dim=4, private_dim=private_dim, aggregator=aggregator)


@pytest.mark.parametrize("name", ["toy", "polydigits"])
def test_short_training_lowers_validation_loss_clearly(name):
    if name == "toy":
        train, val = SharedPrivateToy("train", n=1024), SharedPrivateToy("test", n=256)
    else:
        train, val = PolyDigits("train", n_tuples=512), PolyDigits("test", n_tuples=128)
    model = _model(train, private_dim=2)
    trainer = Trainer(model, max_epochs=4, batch_size=128, lr=2e-3, device="cpu", progress=False)
    before = trainer.evaluate(val)["val/loss"]  # the untrained model, same estimator
    after = trainer.fit(train, val=val)[-1]["val/loss"]
    assert after < before - 0.15 * abs(before), (before, after)  # a relative drop of more than 15 %


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_resume_from_epoch_2_equals_uninterrupted_epoch_4(tmp_path):
    train, val = PolyDigits("train", n_tuples=256), PolyDigits("test", n_tuples=64)
    make = lambda: build("mopoe", train, shared_dim=4)  # noqa: E731
    torch.manual_seed(0)
    straight = make()
    Trainer(straight, max_epochs=4, batch_size=64, device="cpu", seed=3, progress=False,
            out=tmp_path / "a").fit(train, val=val)
    torch.manual_seed(0)
    first = make()
    Trainer(first, max_epochs=2, batch_size=64, device="cpu", seed=3, progress=False,
            out=tmp_path / "b").fit(train, val=val)
    resumed = make()  # fresh weights: everything must come from the checkpoint
    history = Trainer(resumed, max_epochs=4, batch_size=64, device="cpu", seed=3, progress=False,
                      out=tmp_path / "b", resume=tmp_path / "b" / "last.pt").fit(train, val=val)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    a, b = _params(straight), _params(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _readme_python() -> str:
    text = (ROOT / "README.md").read_text()
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


def test_readme_example_is_the_example_script():
    assert _readme_python() == (ROOT / "examples" / "quickstart.py").read_text().split('"""\n', 2)[-1]


def test_readme_example_runs_as_pasted(tmp_path):
    """The README's first python block, in a fresh interpreter, from an unrelated folder."""
    out = subprocess.run([sys.executable, "-c", _readme_python()], cwd=tmp_path, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "'m1': (8, 3, 16, 16)" in out.stdout and "'m2': (8, 3, 16, 16)" in out.stdout


def test_demo_command_trains_imputes_and_reports(tmp_path):
    """README command 1's job in miniature (one epoch): a run folder, imputed file, metrics and report."""
    import numpy as np

    from mmvae import cli

    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--epochs", "1", "--device", "cpu", "--quiet"]) == 0
    filled = np.load(out / "demo_imputed.npz")
    assert sorted(filled.files) == ["m0", "m1", "m2", "m3", "m4"]
    assert all(np.isfinite(filled[k]).all() for k in filled.files)
    report = (out / "report.md").read_text()
    assert "Coherence" in report and (out / "metrics.json").exists() and (out / "last.pt").exists()
