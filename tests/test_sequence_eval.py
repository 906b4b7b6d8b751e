"""Evaluation of sequence [T, C] and count modalities: the temporal coherence classifier, bits per spike against the
training mean rates, the imputation error per time step with NaN padding, and the sequence figures of the report."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import scipy.stats as st
import torch

from mmvae import Modality, MultimodalVAE
from mmvae.datasets import DATASETS, MultimodalDataset
from mmvae.evaluation import evaluate_run, imputation_error, render_report
from mmvae.evaluation.classifiers import Classifier, accuracy, default_kind, fit_classifier, load_classifiers
from mmvae.evaluation.counts import bits_per_spike, count_bits_per_spike, null_rates, training_null_rates
from mmvae.evaluation.sequences import TemporalNet, sequence_imputation_error, step_error_sums, valid_steps
from mmvae.evaluation.subset_batches import as_eval_data

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def sine_classes(n: int, seed: int, T: int = 64, pad: bool = True):
    """Class y in {0, 1, 2} is the frequency (1, 2 or 4 cycles) of a sine/cosine pair [T, 2] of random phase, in
    noise; with pad, each row is NaN-padded after a random length in [T/2, T]."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    t = torch.arange(T) / T
    a = 2 * math.pi * torch.tensor([1.0, 2.0, 4.0])[y][:, None] * t + 2 * math.pi * torch.rand(n, 1, generator=g)
    x = torch.stack([a.sin(), a.cos()], -1) + 0.3 * torch.randn(n, T, 2, generator=g)  # [N, T, 2]
    if pad:
        length = torch.randint(T // 2, T + 1, (n,), generator=g)
        x[torch.arange(T)[None] >= length[:, None]] = float("nan")
    return x, y


# ---------------------------------------------------------------- classifier
def test_default_architecture_by_shape():
    assert [default_kind(s) for s in ((3, 28, 28), (10,), (64, 2), (4, 2))] == ["conv", "mlp", "temporal", "mlp"]
    assert default_kind((64,), vocab=20) == "tokens"


def test_temporal_classifier_reads_the_frequency_of_padded_sines():
    x, y = sine_classes(600, 0)
    xt, yt = sine_classes(300, 1)
    assert bool(x.isnan().any()) and valid_steps(x).sum(1).min() >= 32
    torch.manual_seed(0)
    clf = Classifier(x.shape[1:], 3, hidden=32)
    assert clf.spec["kind"] == "temporal"
    fit_classifier(clf, x, y, epochs=5, batch_size=64)
    assert torch.isfinite(clf(xt[:8])).all()  # padding never reaches the logits as NaN
    assert accuracy(clf, xt, yt) > 0.8  # chance is 1/3


# ---------------------------------------------------------------- per-step imputation error
def test_temporal_classifier_logits_do_not_depend_on_the_padding_after_a_series():
    torch.manual_seed(0)
    net = TemporalNet(3, 16, 4)
    x = torch.randn(2, 20, 3)
    pad = lambda t, n: torch.cat([t, torch.full((t.shape[0], n, 3), float("nan"))], 1)  # noqa: E731
    short, long = net(pad(x[:, :12], 8)), net(pad(x[:, :12], 30))
    torch.testing.assert_close(short, long, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(short, net(x[:, :12]), rtol=1e-5, atol=1e-6)  # and equal to the unpadded series
    assert not torch.allclose(short, net(x), atol=1e-3)  # the steps after 12 do count when they are data


def test_step_error_sums_skip_nan_padding_by_hand():
    g = torch.Generator().manual_seed(0)
    true = torch.randn(3, 4, 2, generator=g)
    true[0, 2:] = float("nan")  # row 0 padded after 2 steps
    true[1, 3] = float("nan")  # row 1 after 3
    imputed = torch.randn(2, 3, 4, 2, generator=g)  # [n, R, T, C]
    s, c = step_error_sums(imputed, true)
    for r in range(3):
        for t in range(4):
            valid = not bool(true[r, t].isnan().all())
            ref = float(((imputed[:, r, t] - true[r, t]) ** 2).sum()) if valid else 0.0
            assert float(s[r, t]) == pytest.approx(ref)
            assert float(c[r, t]) == (4.0 if valid else 0.0)  # 2 samples x 2 channels
    wild = imputed.clone()
    wild[:, 0, 2:], wild[:, 1, 3] = 1e6, -1e6  # whatever is imputed at padded steps never counts
    assert torch.equal(step_error_sums(wild, true)[0], s)


class ZeroStub:
    """Imputes zeros: its error at a step is the mean of the real x^2 over the valid entries there."""

    def __init__(self, names):
        self.names = list(names)

    def impute(self, observed, targets=None, n_samples=1, avail=None):
        lead = (n_samples,) if n_samples > 1 else ()
        return {t: torch.zeros(*lead, *observed[t].shape) for t in targets}


def padded_pair(n: int = 12, T: int = 10):
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(n, T, 2, generator=g), torch.randn(n, T, 3, generator=g)
    a[: n // 2, T - 4:] = float("nan")  # half the rows padded for the last 4 steps
    a[0, 3:] = float("nan")
    return MultimodalDataset({"a": a, "b": b})


def test_imputation_error_per_step_counts_only_valid_entries():
    data = padded_pair()
    a = data.data["a"]
    res = sequence_imputation_error(ZeroStub(["a", "b"]), data, n_samples=3)
    hand = torch.nanmean((a ** 2).transpose(0, 1).reshape(a.shape[1], -1), 1)  # [T]: over rows and channels
    np.testing.assert_allclose(res["matrix"]["b->a"]["per_step"], hand.numpy(), rtol=1e-6)
    assert res["matrix"]["b->a"]["mse"] == pytest.approx(float(torch.nanmean(a ** 2)))
    assert res["matrix"]["a->b"]["mse"] == pytest.approx(float((data.data["b"] ** 2).mean()))
    assert res["per_step_per_size"]["a"]["1"] == pytest.approx(res["matrix"]["b->a"]["per_step"])
    imp = imputation_error(ZeroStub(["a", "b"]), data, n_samples=2)  # padding no longer turns the MSE into NaN
    rows = torch.nanmean((a ** 2).flatten(1), 1)  # [N]: each row's MSE over its valid entries
    assert imp["matrix"]["b->a"]["error"] == pytest.approx(float(rows.mean()))


# ---------------------------------------------------------------- bits per spike
class LookupStub:
    """Returns given rates for each row it recognises by its observed values (counts of high rate never repeat)."""

    def __init__(self, data: dict, rates: dict):
        self.names, self.data, self.rates = list(data), data, rates
        self.modalities = {}

    def impute(self, observed, targets=None, n_samples=1, avail=None):
        name = next(iter(observed))
        hit = (observed[name][:, None] == self.data[name][None]).flatten(2).all(-1)  # [B, N]
        assert bool((hit.sum(1) == 1).all())
        rows = hit.float().argmax(1)
        out = {t: self.rates[t][rows] for t in targets}
        return {t: v.expand(n_samples, *v.shape) for t, v in out.items()} if n_samples > 1 else out


def poisson_counts(n: int, seed: int, T: int = 10, C: int = 6):
    g = torch.Generator().manual_seed(seed)
    rates = {m: 2 + 6 * torch.rand(n, T, C, generator=g, dtype=torch.float64) for m in ("s0", "s1")}
    return {m: torch.poisson(r, generator=g) for m, r in rates.items()}, rates


def test_bits_per_spike_of_true_rates_by_hand_and_of_the_training_mean_is_zero():
    train, _ = poisson_counts(300, 0)
    test, rates = poisson_counts(200, 1)
    null = training_null_rates(MultimodalDataset(train), ["s0", "s1"])
    assert torch.allclose(null["s0"], train["s0"].reshape(-1, 6).mean(0))
    res = count_bits_per_spike(LookupStub(test, rates), MultimodalDataset(test), ["s0", "s1"], n_samples=1,
                               null=null)
    for m in ("s0", "s1"):
        x = test[m].numpy()
        hand = (st.poisson.logpmf(x, rates[m].numpy()).sum() - st.poisson.logpmf(x, null[m].numpy()).sum()) / (
            x.sum() * math.log(2))
        assert res["self"][m] == pytest.approx(hand, rel=1e-9) and res["cross"][m] == pytest.approx(hand, rel=1e-9)
        assert hand > 0.05  # true rates beat the mean rate
    means = {m: null[m].expand(200, 10, 6) for m in ("s0", "s1")}
    flat = count_bits_per_spike(LookupStub(test, means), MultimodalDataset(test), ["s0", "s1"], n_samples=2,
                                null=null)
    assert flat["self"] == pytest.approx({"s0": 0.0, "s1": 0.0}, abs=1e-12)
    assert flat["mean_cross"] == pytest.approx(0.0, abs=1e-12)
    own = bits_per_spike(test["s0"], means["s0"])  # against the test set's own means instead: not zero
    assert own < 0 and null_rates(test["s0"]).shape == (6,)


def test_the_counts_group_is_skipped_without_count_modalities():
    from types import SimpleNamespace

    from mmvae.evaluation.run import SECTIONS
    from mmvae.evaluation.settings import METRICS

    mods = {m: Modality(shape=(16, 2), likelihood="gaussian") for m in ("a", "b")}
    out = SECTIONS["counts"](SimpleNamespace(model=MultimodalVAE(mods, shared_dim=2)))
    assert "counts" in METRICS and set(out["counts"]) == {"skipped"}


def test_the_report_has_no_counts_section_without_count_modalities():
    settings = {"dataset": "toy", "split": "test", "n_test": 10, "seed": 0, "device": "cpu"}
    md = render_report({"run": "r", "settings": settings, "counts": {"skipped": "no modality has a count "
                                                                                "likelihood"}})
    assert "bits per spike" not in md.lower()
    md = render_report({"run": "r", "settings": settings, "counts": {
        "self": {"spk": 0.25}, "cross": {"spk": 0.125}, "n_rows": {"spk": 10}, "mean_self": 0.25,
        "mean_cross": 0.125, "n_samples": 3, "null": "training set per-neuron mean rates"}})
    assert "| spk | 0.250 | 0.125 | 10 |" in md


# ---------------------------------------------------------------- a run on a tiny sequence dataset
def tiny_sequences(split: str = "train", seed: int = 0, n_train: int | None = None, n_test: int | None = None,
                   pad: bool = True):
    """Two sensor modalities [16, 2] (sines of class frequency and a shared phase) and Poisson counts [16, 5]
    whose rates follow the same sine; label = frequency class. With pad, every other row of s0 is 12 steps long
    (NaN-padded)."""
    n = (n_train or 240) if split == "train" else (n_test or 90)
    g = torch.Generator().manual_seed(seed * 2 + (split == "test"))
    y = torch.arange(n) % 3
    t = torch.arange(16) / 16
    a = 2 * math.pi * (1 + y[:, None]) * t + 2 * math.pi * torch.rand(n, 1, generator=g)  # [N, T]
    s0 = torch.stack([a.sin(), a.cos()], -1) + 0.1 * torch.randn(n, 16, 2, generator=g)
    s1 = torch.stack([(a + 1).sin(), 0.5 * a.sin()], -1) + 0.1 * torch.randn(n, 16, 2, generator=g)
    gain = torch.linspace(0.5, 1.5, 5)
    spk = torch.poisson((1.0 + a.sin()[..., None] * gain * 0.8).exp(), generator=g)  # [N, T, 5]
    if pad:
        s0[::2, 12:] = float("nan")
    return MultimodalDataset({"s0": s0, "s1": s1, "spk": spk}, labels=y, num_classes=3,
                             likelihoods={"s0": "gaussian", "s1": "gaussian", "spk": "poisson"})


@pytest.fixture(scope="module")
def seq_run(tmp_path_factory):
    """A run folder written by the real Trainer on tiny_sequences, registered as dataset "tiny_seq"."""
    from mmvae import Trainer

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(DATASETS, "tiny_seq", tiny_sequences)
        train = tiny_sequences("train")
        lik = {"s0": "gaussian", "s1": "gaussian", "spk": "poisson"}
        mods = {n: Modality(shape=train.shapes[n], likelihood=lik[n]) for n in train.modalities}
        torch.manual_seed(0)
        model = MultimodalVAE(mods, shared_dim=3, private_dim=1, aggregator="mopoe")
        out = tmp_path_factory.mktemp("runs") / "seq"
        Trainer(model, max_epochs=3, batch_size=60, device="cpu", out=out, progress=False,
                extra_config={"dataset": {"name": "tiny_seq", "seed": 0}, "preset": "mopoe"}).fit(train, val=train)
        res = evaluate_run(out, device="cpu", quick=True, classifier_epochs=4, min_accuracy=0.0, joint_samples=50,
                           probe_n_train=100, imputation_samples=3, imputation_n_tuples=40, loglik_K=4,
                           map_points=60, plot_tuples=2, trace_draws=4, counts_samples=2)
        yield out, res


def test_report_of_a_sequence_run_embeds_its_figures(seq_run):
    out, res = seq_run
    report = (out / "report.md").read_text()
    pngs = set(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report))
    want = {"sequence_traces.png", "count_rasters.png", "latent_trajectories.png", "step_error.png",
            "generation_grid.png", "latent_map.png"}
    assert want <= pngs
    for name in pngs:
        assert (out / name).stat().st_size > 1000, name
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## Sequences" in report and "## Count modalities: bits per spike" in report
    saved = json.loads((out / "metrics.json").read_text())
    assert set(saved["counts"]["self"]) == {"spk"} and set(saved["counts"]["cross"]) == {"spk"}
    step = saved["imputation"]["per_step"]
    assert len(step["matrix"]["s1+spk->s0"]["per_step"]) == 16 and set(step["per_step_per_size"]) == {"s0", "s1",
                                                                                                     "spk"}
    kinds = {m: c.spec["kind"] for m, c in load_classifiers(out / "classifiers").items()}
    assert kinds == {"s0": "temporal", "s1": "temporal", "spk": "temporal"}
    assert res["classifiers"]["per_modality"]["s0"]["test_accuracy"] > 0.8  # frequencies are plain to see


def test_counts_metric_equals_bits_per_spike_against_the_training_means(seq_run):
    from mmvae.loading import load

    out, res = seq_run
    model = load(out).eval()
    train, test = tiny_sequences("train"), tiny_sequences("test")
    torch.manual_seed(0)  # the evaluation's Timer seeds every step with the evaluation seed
    ref = count_bits_per_spike(model, test, ["spk"], n_samples=2, null=training_null_rates(train, ["spk"]))
    assert res["counts"]["self"]["spk"] == pytest.approx(ref["self"]["spk"], rel=1e-6)
    assert res["counts"]["cross"]["spk"] == pytest.approx(ref["cross"]["spk"], rel=1e-6)
    assert res["counts"]["self"]["spk"] != pytest.approx(count_bits_per_spike(model, test, ["spk"], n_samples=2)[
        "self"]["spk"], abs=1e-9)  # another null (the test means) gives another number


def test_sensor_traces_leave_padded_steps_undrawn(seq_run, monkeypatch, tmp_path):
    from mmvae.evaluation import sequence_plots
    from mmvae.loading import load

    figs = []
    monkeypatch.setattr(sequence_plots, "_save", lambda fig, path: figs.append(fig) or path)
    model = load(seq_run[0]).eval()
    data = tiny_sequences("test")
    data.data["s0"][:, 12:] = float("nan")  # every row padded after 12 steps
    sequence_plots.sensor_traces(model, data, tmp_path / "t.png", ["s0", "s1"], n_tuples=2, n_draws=3)
    axes = figs[0].axes
    s0 = [ax for ax in axes if ax.get_title().startswith("s0")]
    s1 = [ax for ax in axes if ax.get_title().startswith("s1")]
    assert len(s0) == len(s1) == 4  # 2 tuples x 2 channels each
    for ax in s0:  # imputed mean and real: drawn up to step 12, NaN (not drawn) after
        for line in ax.lines:
            y = np.asarray(line.get_ydata(), dtype=float)
            assert np.isfinite(y[:12]).all() and np.isnan(y[12:]).all()
    assert all(np.isfinite(np.asarray(line.get_ydata(), dtype=float)).all() for ax in s1 for line in ax.lines)


def test_generation_grid_draws_sequences_as_lines(seq_run, monkeypatch, tmp_path):
    from mmvae.evaluation import plots
    from mmvae.loading import load

    figs = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figs.append(fig) or path)
    out, _ = seq_run
    model = load(out).eval()
    plots.generation_grid(model, tiny_sequences("test"), tmp_path / "g.png", n_tuples=2)
    axes = figs[0].axes
    assert axes and all(not ax.images and ax.lines for ax in axes)  # every modality is a sequence here
    assert as_eval_data(tiny_sequences("test")).data["spk"].shape[1:] == (16, 5)
