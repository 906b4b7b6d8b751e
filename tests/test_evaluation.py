"""Evaluators: metrics that can fail (perfect and noise stubs), known answers, sklearn as an oracle for the probe,
one batched pass per subset size, an importance-sampling estimate checked against brute-force prior sampling, and a
report whose every embedded PNG exists."""
from __future__ import annotations

import json
import math
import re
import shutil

import numpy as np
import pytest
import torch

from mmvae import Modality, MultimodalVAE
from mmvae.datasets import MultimodalDataset
from mmvae.errors import InputError
from mmvae.evaluation import (
    Classifier,
    check_accuracy,
    compare_runs,
    conditional_coherence,
    conditional_loglik,
    evaluate_run,
    imputation_error,
    joint_coherence,
    latent_classification,
    linear_probe,
    load_classifiers,
    r2_table,
    save_classifiers,
    train_classifiers,
)
from mmvae.evaluation.classifiers import classifiers_match
from mmvae.evaluation.probe import linear_probes, subset_embeddings
from mmvae.evaluation.subset_batches import as_eval_data
from mmvae.networks import MLPDecoder, MLPEncoder

C = 10  # classes


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def separable(n: int, M: int = 5, d: int = 8, seed: int = 0) -> MultimodalDataset:
    """M vector modalities whose class (balanced, n % C == 0) is plain to see: x_m = 3 * P_m[y] + noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % C
    patterns = torch.randn(M, C, d, generator=torch.Generator().manual_seed(99))
    data = {f"m{m}": 3 * patterns[m][y] + 0.3 * torch.randn(n, d, generator=g) for m in range(M)}
    return MultimodalDataset(data, targets=y, num_classes=C)


class PerfectStub:
    """Returns the real target modality of every row (the evaluators pass full tensors; avail says what counts)."""

    def __init__(self, names):
        self.names, self.calls = list(names), []

    def impute(self, observed, targets=None, n_samples=1, avail=None):
        self.calls.append(avail.shape[0])
        out = {t: observed[t].clone() for t in targets}
        return {t: v.expand(n_samples, *v.shape).clone() for t, v in out.items()} if n_samples > 1 else out

    def sample(self, n):
        y = torch.randint(0, C, (n,))
        return {m: self.real[m][y] for m in self.names}


class NoiseStub(PerfectStub):
    """Ignores its input: pure Gaussian noise of the right shape."""

    def impute(self, observed, targets=None, n_samples=1, avail=None):
        self.calls.append(avail.shape[0])
        lead = (n_samples,) if n_samples > 1 else ()
        return {t: 3 * torch.randn(*lead, *observed[t].shape) for t in targets}


@pytest.fixture(scope="module")
def data5():
    return separable(400, seed=1), separable(200, seed=2)


@pytest.fixture(scope="module")
def classifiers5(data5):
    train, test = data5
    return train_classifiers(train, test, epochs=4, lr=3e-3, device="cpu", seed=0)


# ---------------------------------------------------------------- coherence
def test_classifiers_are_accurate_and_carry_their_checksum(classifiers5, data5):
    accs = check_accuracy(classifiers5, 0.99)
    assert set(accs) == {f"m{m}" for m in range(5)} and min(accs.values()) >= 0.99
    assert classifiers_match(classifiers5, data5[0])
    assert not classifiers_match(classifiers5, separable(400, seed=3))


def test_perfect_model_scores_one_and_noise_scores_chance(classifiers5, data5):
    test = data5[1]
    perfect = conditional_coherence(PerfectStub(test.modalities), test, classifiers5)
    assert len(perfect["matrix"]) == sum(math.comb(5, s) * (5 - s) for s in range(1, 5))  # 75 cells
    assert "m0+m2->m1" in perfect["matrix"]
    assert perfect["mean"] == 1.0 and all(v == 1.0 for v in perfect["per_size"].values())
    noise = conditional_coherence(NoiseStub(test.modalities), test, classifiers5, n_samples=3)
    assert abs(noise["mean"] - 1 / C) < 0.05
    assert max(noise["matrix"].values()) < 0.3

    stub = PerfectStub(test.modalities)
    stub.real = test.data  # the prior "samples" real tuples of one random class each: every classifier agrees
    assert joint_coherence(stub, classifiers5, n=300)["joint"] == 1.0
    noise = NoiseStub(test.modalities)
    noise.sample = lambda n: {m: 3 * torch.randn(n, 8) for m in test.modalities}
    assert joint_coherence(noise, classifiers5, n=300)["joint"] < 0.2


def test_coherence_is_one_impute_call_per_subset_size():
    """All subsets of 5 modalities on 2,000 test tuples: exactly one batched call per subset size."""
    test = separable(2000, seed=4)
    stub = PerfectStub(test.modalities)
    clfs = {m: Classifier((8,), C) for m in test.modalities}
    conditional_coherence(stub, test, clfs, batch_size=20_000)
    assert stub.calls == [math.comb(5, s) * 2000 for s in (1, 2, 3, 4)]


def test_weak_classifier_is_refused_by_name(classifiers5):
    weak = dict(classifiers5)
    weak["m3"] = Classifier((8,), C)
    weak["m3"].meta = {"test_accuracy": 0.4}
    with pytest.raises(InputError, match=r"'m3'.*0\.400.*threshold 0\.900"):
        check_accuracy(weak, 0.9)
    test = separable(50, seed=5)
    for score in (lambda: conditional_coherence(PerfectStub(test.modalities), test, weak),
                  lambda: joint_coherence(PerfectStub(test.modalities), weak, n=10)):
        with pytest.raises(InputError, match=r"'m3'.*0\.400.*threshold 0\.800"):  # the Python API checks too
            score()
    assert conditional_coherence(PerfectStub(test.modalities), test, weak, min_accuracy=None)["mean"] < 1.0


def test_joint_coherence_reports_how_much_one_class_takes(classifiers5, data5):
    test = data5[1]
    stub = PerfectStub(test.modalities)
    stub.real = test.data
    spread = joint_coherence(stub, classifiers5, n=400, seed=0)
    assert spread["joint"] == 1.0 and spread["top_class_share"] < 1.5 / C  # samples spread over the classes
    one = test.labels == 0
    stub.sample = lambda n: {m: test.data[m][one][:1].expand(n, -1) for m in test.modalities}
    stuck = joint_coherence(stub, classifiers5, n=400)
    assert stuck["joint"] == 1.0 and stuck["top_class_share"] == 1.0  # all agree, because all are one class


def test_classifiers_round_trip_with_weights_only(tmp_path, classifiers5):
    images = MultimodalDataset({"img": torch.rand(40, 3, 8, 8)}, targets=torch.arange(40) % 4)
    conv = train_classifiers(images, images, epochs=1, device="cpu")
    assert conv["img"].spec["kind"] == "conv"
    both = {**classifiers5, **conv}
    save_classifiers(both, tmp_path)
    torch.load(tmp_path / "classifiers.pt", weights_only=True)
    back = load_classifiers(tmp_path)
    assert set(back) == set(both)
    x = torch.rand(5, 3, 8, 8)
    assert torch.equal(back["img"](x), both["img"].eval()(x))
    assert back["m0"].meta["checksum"] == classifiers5["m0"].meta["checksum"]


# ---------------------------------------------------------------- imputation
def test_imputation_error_of_perfect_and_noise_models(data5):
    test = data5[1]
    perfect = imputation_error(PerfectStub(test.modalities), test, n_samples=3)
    assert perfect["error_mean"] == 0.0 and perfect["spread_mean"] == 0.0
    noisy = imputation_error(NoiseStub(test.modalities), test, n_samples=3)
    cell = noisy["matrix"]["m0+m1->m4"]
    assert cell["error"] > 5 and cell["spread"] > 2 and cell["error_of_mean"] < cell["error"]


def tiny_vae(dims, shared=2, private=0, seed=0):
    """A MoPoE VAE over vector modalities with one-hidden-layer networks of width 32."""
    torch.manual_seed(seed)
    priv = private if isinstance(private, dict) else dict.fromkeys(dims, private)
    mods = {n: Modality(MLPEncoder((d,), 2 * (shared + priv.get(n, 0)), hidden=(32,)),
                        MLPDecoder(shared + priv.get(n, 0), (d,), hidden=(32,)),
                        likelihood={"name": "gaussian", "scale": 1.0}, shape=(d,)) for n, d in dims.items()}
    return MultimodalVAE(mods, shared_dim=shared, private_dim=private, aggregator="mopoe").eval()


def test_conditional_loglik_matches_brute_force_prior_sampling():
    """log p(x_m | x_S) by importance sampling from q(z | x_S) equals the same ratio p(x_m, x_S) / p(x_S) estimated
    with 200k draws from the prior, private latents included (and not drawn from the cross-modal r(w) != p(w))."""
    torch.manual_seed(0)
    model = tiny_vae({"a": 2, "b": 3, "c": 2}, shared=2, private={"a": 1, "c": 1})
    with torch.no_grad():
        model.private_prior_logvar["c"].fill_(-4.0)  # r(w_c), for cross-generation only: p(w_c) is N(0, I)
        for n in model.names:  # make every x_j depend strongly on z and on its private w_j
            first = model.modalities[n].decoder.net[0].weight
            first[:, :2] *= 3.0
            first[:, 2:] *= 6.0
    x = {"a": torch.randn(3, 2), "b": torch.randn(3, 3), "c": torch.randn(3, 2)}
    data = MultimodalDataset(x)
    est = conditional_loglik(model, data, K=2000)

    with torch.no_grad():
        S = 200_000
        z = torch.randn(S, 1, 2)
        ll = {}
        for n in model.names:
            d = model.private_dims[n]
            w = torch.randn(S, 1, d) if d else None
            ll[n] = model.modalities[n].likelihood.log_prob(model.decode(n, z, w), x[n])  # [S, 3]
    for key, sub, target in (("a->b", ["a"], "b"), ("b->c", ["b"], "c"), ("a+b->c", ["a", "b"], "c"),
                             ("b+c->a", ["b", "c"], "a")):
        lv = sum(ll[s] for s in sub)
        ref = (torch.logsumexp(lv + ll[target], 0) - torch.logsumexp(lv, 0)).mean()
        assert est["matrix"][key]["loglik"] == pytest.approx(float(ref), abs=0.05), key


def test_real_model_on_data_with_missing_modalities(classifiers5):
    """A real model on a test set with 40% of entries missing (NaN): every metric is finite, and a cell counts only
    the tuples that observe its subset (and, for errors, its target)."""
    test = separable(300, seed=5).drop(0.4, seed=0)
    model = tiny_vae(dict.fromkeys(test.modalities, 8), shared=3, private=1)
    coh = conditional_coherence(model, test, classifiers5)
    imp = imputation_error(model, test, n_samples=2)
    ll = conditional_loglik(model, test, K=3)
    lat = latent_classification(model, separable(200, seed=6).drop(0.4, seed=1), test, n_train=None)
    assert len(coh["matrix"]) == 75 and all(0.0 <= v <= 1.0 for v in coh["matrix"].values())
    a = test.avail
    assert coh["counts"]["m0+m1->m2"] == int((a[:, 0] & a[:, 1]).sum()) < 300
    for cells in (imp["matrix"], ll["matrix"]):
        assert all(math.isfinite(x) for cell in cells.values() for x in cell.values())
    assert len(lat["subsets"]) == 31 and all(math.isfinite(v) for v in lat["subsets"].values())


# ---------------------------------------------------------------- latent probe
def test_torch_probe_matches_sklearn_on_digits():
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    tr, te = slice(0, 1000), slice(1000, None)
    ref = LogisticRegression(C=1.0, max_iter=5000).fit(X[tr], y[tr]).score(X[te], y[te])
    ours = linear_probe(torch.tensor(X[tr]), torch.tensor(y[tr]), torch.tensor(X[te]), torch.tensor(y[te]))
    assert abs(ours - ref) <= 0.01
    # the batched fit (different feature sets and row counts, padded) gives each problem's own answer
    Xt, yt = torch.tensor(X), torch.tensor(y)
    probs = [(Xt[:1000, :40], yt[:1000]), (Xt[:700], yt[:700])]
    tests = [(Xt[1000:, :40], yt[1000:]), (Xt[1000:], yt[1000:])]
    batched = linear_probes(probs, tests, 10, standardize=False)
    single = [linear_probe(a, b, c, d) for (a, b), (c, d) in zip(probs, tests)]
    assert np.allclose(batched, single, atol=0.006)


def test_latent_classification_and_fast_embeddings_agree_with_embed(data5):
    train, test = data5
    model = tiny_vae(dict.fromkeys(train.modalities, 8), shared=4, private=1)

    class EmbedOnly:  # only the `embed` verb: the reference path
        names = model.names

        def embed(self, x, avail):
            return model.embed(x, avail)

    ev = as_eval_data(test, model.names)
    fast, ref = subset_embeddings(model, ev), subset_embeddings(EmbedOnly(), ev)
    assert len(fast["shared"]) == 31 and set(fast["private"]) == set(model.names)
    for kind in ("shared", "private"):
        for key, (rows, z) in fast[kind].items():
            assert torch.equal(rows, ref[kind][key][0]) and torch.allclose(z, ref[kind][key][1], atol=1e-5)
    res = latent_classification(model, train, test, n_train=300)
    assert res["n_train"] == 300 and len(res["subsets"]) == 31 and len(res["private"]) == 5
    assert 0.0 <= res["mean"] <= 1.0


# ---------------------------------------------------------------- disentanglement
def test_r2_table_known_answers():
    g = torch.Generator().manual_seed(0)
    f = {"shared": torch.randn(2000, 2, generator=g), "m0": torch.randn(2000, 3, generator=g)}
    blocks = {"identity": f["shared"].clone(), "rotated": f["shared"] @ torch.tensor([[0.6, 0.8], [-0.8, 0.6]]),
              "constant": torch.ones(2000, 2), "independent": torch.randn(2000, 4, generator=g)}
    t = r2_table(blocks, f)
    assert t["identity"]["shared"] > 0.999 and t["rotated"]["shared"] > 0.999
    assert abs(t["constant"]["shared"]) < 0.01 and abs(t["independent"]["shared"]) < 0.02
    assert abs(t["identity"]["m0"]) < 0.02
    # against scikit-learn on a noisy partial relation, fit on one set, scored on another
    from sklearn.linear_model import LinearRegression
    from sklearn.metrics import r2_score

    x = torch.randn(600, 3, generator=g, dtype=torch.float64)
    y = x[:, :2] @ torch.tensor([[1.0, 0.5], [0.0, 2.0]], dtype=torch.float64) + torch.randn(600, 2, generator=g,
                                                                                              dtype=torch.float64)
    ours = r2_table({"b": x[:400]}, {"f": y[:400]}, {"b": x[400:]}, {"f": y[400:]})["b"]["f"]
    ref = r2_score(y[400:].numpy(), LinearRegression().fit(x[:400].numpy(), y[:400].numpy()).predict(x[400:].numpy()))
    assert ours == pytest.approx(ref, abs=1e-6)


# ---------------------------------------------------------------- report
@pytest.fixture(scope="module")
def run_dir(toy_run):
    """A tiny run folder written by the real Trainer on the SharedPrivateToy dataset named in config.json."""
    return toy_run("toy_mopoe", shared_dim=2, private_dim=2)


SMALL = dict(classifier_epochs=3, min_accuracy=0.0, joint_samples=100, probe_n_train=200, imputation_samples=3,
             imputation_n_tuples=60, loglik_K=4, map_points=100, plot_tuples=3)


def test_report_embeds_existing_pngs(run_dir, tmp_path):
    out = run_dir
    res = evaluate_run(run_dir, device="cpu", quick=True, **SMALL)
    report = (out / "report.md").read_text()
    pngs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert {"coherence.png", "generation_grid.png", "latent_map.png", "training_curves.png"} <= set(pngs)
    for name in pngs:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["settings"]["dataset"] == "toy" and saved["settings"]["probe_n_train"] == 200
    for key in ("coherence", "latent", "imputation", "disentanglement", "time_s", "classifiers"):
        assert key in saved, key
    assert "r2" in saved["disentanglement"] and "shared" in saved["disentanglement"]["r2"]
    assert (run_dir / "classifiers" / "classifiers.pt").is_file()  # cached in the run folder
    again = evaluate_run(run_dir, metrics=("coherence",), out=tmp_path / "again", device="cpu", quick=True, **SMALL)
    assert again["classifiers"]["source"] == "cached"
    assert again["coherence"]["mean"] == pytest.approx(res["coherence"]["mean"])


def test_runs_on_the_same_data_share_their_classifiers(run_dir, tmp_path, monkeypatch):
    """A second run on the same data reuses the first one's classifiers from the user cache (a study trains them
    once per dataset); share_classifiers=False trains its own."""
    import shutil

    monkeypatch.setenv("MMVAE_CACHE", str(tmp_path / "cache"))
    for name in "abc":
        shutil.copytree(run_dir, tmp_path / name, ignore=shutil.ignore_patterns("classifiers", "metrics.json"))
    a = evaluate_run(tmp_path / "a", metrics=("coherence",), device="cpu", quick=True, **SMALL)
    b = evaluate_run(tmp_path / "b", metrics=("coherence",), device="cpu", quick=True, **SMALL)
    assert (a["classifiers"]["source"], b["classifiers"]["source"]) == ("trained", "shared")
    assert b["classifiers"]["per_modality"] == a["classifiers"]["per_modality"]
    assert (tmp_path / "b" / "classifiers" / "classifiers.pt").is_file()  # copied into the run folder too
    entries = sorted((tmp_path / "cache" / "classifiers").iterdir())
    c = evaluate_run(tmp_path / "c", metrics=("coherence",), device="cpu", quick=True, share_classifiers=False,
                     **SMALL)
    assert c["classifiers"]["source"] == "trained"
    assert sorted((tmp_path / "cache" / "classifiers").iterdir()) == entries


def test_compare_runs_one_table_one_plot(run_dir, tmp_path):
    """Runs with a metrics.json are read as they are; a run without one is evaluated first."""
    if not (run_dir / "metrics.json").exists():
        evaluate_run(run_dir, metrics=("coherence",), device="cpu", quick=True, **SMALL)
    other = tmp_path / "toy_copy"
    shutil.copytree(run_dir, other)
    (other / "metrics.json").unlink()
    res = compare_runs([run_dir, other], out=tmp_path / "cmp", device="cpu", quick=True, metrics=("coherence",),
                       **SMALL)
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert len(res["runs"]) == 2 and "toy_copy" in md and "(coherence.png)" in md
    assert (tmp_path / "cmp" / "coherence.png").stat().st_size > 0


@pytest.mark.parametrize("key, value", [("loglik_K", 0), ("probe_n_train", -1), ("min_accuracy", 1.5),
                                        ("min_accuracy", float("nan")), ("share_classifiers", 1),
                                        ("joint_samples", 2.5), ("batch_rows", 0)])
def test_evaluation_settings_refuse_values_out_of_range(key, value):
    from mmvae.evaluation import EvalSettings

    with pytest.raises(InputError, match=f"evaluation setting '{key}'"):
        EvalSettings().override(**{key: value})
    assert EvalSettings().override(batch_rows=None, min_accuracy=0, loglik_K=3).loglik_K == 3


def test_the_report_renders_missing_numbers_as_n_a():
    from mmvae.evaluation import render_report

    settings = {"dataset": "toy", "split": "test", "n_test": 10, "seed": 0, "device": "cpu"}
    md = render_report({"run": "r", "settings": settings, "time_s": None,
                        "classifiers": {"source": "trained", "min_accuracy": None, "per_modality": {}},
                        "coherence": {"refused": "weak classifiers"}})
    assert "Evaluation took n/a s" in md and "test accuracy n/a" in md
