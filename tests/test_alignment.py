"""Alignment metrics: known answers for the modality gap, retrieval recall@k and held-out CCA (perfect inputs score
perfectly, useless ones at chance), brute-force ranking as the oracle of the tie-aware recall, and the `alignment`
group of `evaluate_run` writing its section, plot and JSON on a tiny trained run.

Statistical bounds are loose (several standard deviations at the seeds used); every seed is fixed."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

from mmvae.datasets import MultimodalDataset
from mmvae.evaluation import (
    canonical_correlations,
    evaluate_run,
    latent_alignment,
    modality_gap,
    render_report,
    retrieval_recall,
)
from mmvae.evaluation.alignment import cca_fit

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- modality gap
def test_modality_gap_of_identical_embeddings_is_zero_and_of_e1_against_e2_is_sqrt2():
    a = torch.randn(300, 6, generator=gen(0))
    assert modality_gap(a, a) == pytest.approx(0.0, abs=1e-12)
    assert modality_gap(a, 5 * a) == pytest.approx(0.0, abs=1e-6)  # scale-free: normalised first
    e1, e2 = torch.eye(6)[0], torch.eye(6)[1]
    scales = torch.rand(300, 1, generator=gen(1)) + 0.5
    assert modality_gap(scales * e1, 2 * scales[:200] * e2) == pytest.approx(math.sqrt(2), abs=1e-12)
    assert modality_gap(e1[None], -e1[None]) == pytest.approx(2.0)  # the largest gap
    # concentrated near e1 and e2 (small noise): close to sqrt(2)
    near1 = e1 + 0.01 * torch.randn(500, 6, generator=gen(2))
    near2 = e2 + 0.01 * torch.randn(500, 6, generator=gen(3))
    assert modality_gap(near1, near2) == pytest.approx(math.sqrt(2), abs=1e-3)


# ---------------------------------------------------------------- retrieval
def brute_force_recall(a: torch.Tensor, b: torch.Tensor, k: int) -> float:
    """Reference: the rank of b_i among all b_j by cosine similarity to a_i (no ties in continuous data)."""
    sim = torch.nn.functional.normalize(a.double(), dim=1) @ torch.nn.functional.normalize(b.double(), dim=1).T
    order = sim.argsort(1, descending=True)
    rank = (order == torch.arange(len(a))[:, None]).double().argmax(1)
    return float((rank < k).double().mean())


def test_retrieval_of_identical_embeddings_is_perfect_both_ways():
    a = torch.randn(400, 8, generator=gen(0))
    r = retrieval_recall(a, a.clone())
    assert r == {"a->b": {1: 1.0, 5: 1.0}, "b->a": {1: 1.0, 5: 1.0}}
    assert retrieval_recall(a, 3 * a)["a->b"][1] == 1.0  # cosine: scale-free


def test_retrieval_of_independent_embeddings_is_at_chance():
    N = 2000
    a, b = torch.randn(N, 8, generator=gen(0)), torch.randn(N, 8, generator=gen(1))
    r = retrieval_recall(a, b)
    for way in ("a->b", "b->a"):
        for k in (1, 5):
            sd = math.sqrt(k / N * (1 - k / N) / N)  # hits ~ Binomial(N, k/N)
            assert abs(r[way][k] - k / N) < 5 * sd + 1e-9, (way, k, r[way][k])


def test_retrieval_of_a_constant_embedding_is_exactly_chance():
    """Every candidate ties with the match: ties are a random order, so recall@k = k / N, not 1."""
    N = 50
    r = retrieval_recall(torch.ones(N, 4), torch.randn(N, 4, generator=gen(0)))
    assert r["a->b"][1] == pytest.approx(1 / N) and r["a->b"][5] == pytest.approx(5 / N)


def test_retrieval_matches_brute_force_ranks_in_any_chunking():
    a = torch.randn(157, 5, generator=gen(0))
    b = a + 0.8 * torch.randn(157, 5, generator=gen(1))  # partly aligned: recall between chance and 1
    whole, chunked = retrieval_recall(a, b, ks=(1, 5, 10), chunk=10_000), retrieval_recall(a, b, ks=(1, 5, 10),
                                                                                           chunk=7)
    assert whole == chunked
    for k in (1, 5, 10):
        assert whole["a->b"][k] == pytest.approx(brute_force_recall(a, b, k))
        assert whole["b->a"][k] == pytest.approx(brute_force_recall(b, a, k))
    assert 5 / 157 < whole["a->b"][5] < 1.0


# ---------------------------------------------------------------- canonical correlations
def test_cca_of_an_invertible_linear_map_is_one_and_of_independent_data_is_zero():
    x = torch.randn(4000, 6, generator=gen(0)).double().numpy()
    R = torch.randn(6, 6, generator=gen(1)).double().numpy() + 3 * np.eye(6)  # invertible
    y = x @ R + 1.0
    rho = canonical_correlations(x[:2000], y[:2000], x[2000:], y[2000:])  # fit on train, scored on test
    assert rho.shape == (6,) and rho.min() >= 0.99
    noise = torch.randn(4000, 6, generator=gen(2)).double().numpy()
    rho = canonical_correlations(x[:2000], noise[:2000], x[2000:], noise[2000:])
    assert np.abs(rho).max() < 0.2


def test_cca_recovers_known_correlations_per_direction():
    """y_j = rho_j x_j + sqrt(1 - rho_j^2) e_j, mixed by rotations: the canonical correlations are the rho_j."""
    rho = np.array([0.9, 0.6, 0.3, 0.0])
    x = torch.randn(20_000, 4, generator=gen(0)).double().numpy()
    e = torch.randn(20_000, 4, generator=gen(1)).double().numpy()
    y = rho * x + np.sqrt(1 - rho ** 2) * e
    qa, _ = np.linalg.qr(torch.randn(4, 4, generator=gen(2)).double().numpy())
    qb, _ = np.linalg.qr(torch.randn(4, 4, generator=gen(3)).double().numpy())
    got = canonical_correlations(x[:10_000] @ qa, y[:10_000] @ qb, x[10_000:] @ qa, y[10_000:] @ qb)
    assert got == pytest.approx(rho, abs=0.03)
    _, _, _, _, train = cca_fit(x @ qa, y @ qb)
    assert train == pytest.approx(rho, abs=0.03)


def test_in_sample_cca_is_inflated_when_n_is_not_much_larger_than_d():
    """Why the directions are fit on the training split: on 40 rows of two independent 10-dim blocks the in-sample
    top correlation is large, held out it is not."""
    a, b = torch.randn(2, 1040, 10, generator=gen(0)).double().numpy()
    in_sample = canonical_correlations(a[:40], b[:40])
    held_out = canonical_correlations(a[:40], b[:40], a[40:], b[40:])
    assert in_sample[0] > 0.7 and abs(held_out[0]) < 0.3


def test_cca_of_constant_blocks_is_zero_not_nan():
    a = torch.randn(100, 3, generator=gen(0)).double().numpy()
    rho = canonical_correlations(a, np.ones((100, 2)), a, np.ones((100, 2)))
    assert rho.shape == (2,) and np.all(rho == 0.0)


# ---------------------------------------------------------------- the evaluator on stubs
class EmbedStub:
    """The `embed` verb only: the shared code of a singleton subset is that modality's data."""

    def __init__(self, names):
        self.names = list(names)

    def embed(self, x, avail):
        z = sum(avail[:, i, None].float() * x[m] for i, m in enumerate(self.names))  # [R, D]
        return {"shared": z}


def stub_data(n: int, identical: bool, seed: int, drop: bool = False) -> MultimodalDataset:
    z = torch.randn(n, 4, generator=gen(seed))
    data = {m: z.clone() if identical else torch.randn(n, 4, generator=gen(seed + 10 * i + 1))
            for i, m in enumerate(("a", "b", "c"))}
    avail = torch.ones(n, 3, dtype=torch.bool)
    if drop:
        avail[::4, 1] = False  # a quarter of the tuples miss b
    return MultimodalDataset(data, avail=avail)


def test_latent_alignment_of_identical_unimodal_codes_is_perfect_and_of_independent_ones_at_chance():
    model = EmbedStub(["a", "b", "c"])
    good = latent_alignment(model, stub_data(600, True, 0), stub_data(400, True, 1, drop=True), n_train=None)
    assert set(good["modality_gap"]) == {"a+b", "a+c", "b+c"} and len(good["retrieval"]["recall@1"]) == 6
    assert max(good["modality_gap"].values()) == pytest.approx(0.0, abs=1e-9)
    assert good["retrieval"]["mean"] == {"recall@1": 1.0, "recall@5": 1.0}
    assert good["retrieval"]["n"]["a->b"] == 300 and good["retrieval"]["n"]["a->c"] == 400  # rows observing both
    assert good["retrieval"]["chance"]["recall@5"]["b->a"] == pytest.approx(5 / 300)
    assert min(min(c) for c in good["cca"]["correlations"].values()) >= 0.99
    assert good["cca"]["n"]["a+b"] == {"train": 600, "test": 300}
    bad = latent_alignment(model, stub_data(3000, False, 0), stub_data(1000, False, 1), n_train=None)
    assert bad["retrieval"]["mean"]["recall@1"] < 0.01 and bad["retrieval"]["mean"]["recall@5"] < 0.015
    assert abs(bad["cca"]["mean_all"]) < 0.1
    json.dumps(bad)  # plain numbers and lists: metrics.json takes it as it is


def test_latent_alignment_skips_a_single_modality():
    one = MultimodalDataset({"a": torch.randn(10, 2)})
    assert "skipped" in latent_alignment(EmbedStub(["a"]), one, one)


# ---------------------------------------------------------------- evaluate_run and the report
@pytest.fixture(scope="module")
def run_dir(toy_run):
    """A tiny run folder written by the real Trainer on the toy dataset named in config.json."""
    return toy_run("toy_align", shared_dim=3, private_dim=1)


def test_evaluate_run_alignment_writes_its_section_plot_and_json(run_dir, tmp_path):
    res = evaluate_run(run_dir, metrics=("alignment",), out=tmp_path, device="cpu", quick=True, map_points=100,
                       plot_tuples=2, alignment_n_train=200)
    al = res["alignment"]
    saved = json.loads((tmp_path / "metrics.json").read_text())["alignment"]
    assert saved["modality_gap"] == pytest.approx(al["modality_gap"])
    assert saved["cca"]["fit"] == "train split" and saved["n_train"] == 200
    names = ["m0", "m1", "m2"] if "m0+m1" in al["modality_gap"] else None
    assert names is not None, al["modality_gap"]
    assert len(al["retrieval"]["recall@1"]) == 6 and all(len(c) == 3 for c in al["cca"]["correlations"].values())
    for p, g in al["modality_gap"].items():
        assert 0.0 <= g <= 2.0, p
    assert "alignment" in res["timings_s"] and res["plots"]["alignment"] == "alignment.png"
    assert (tmp_path / "alignment.png").stat().st_size > 0
    report = (tmp_path / "report.md").read_text()
    assert "## Cross-modal alignment" in report and "(alignment.png)" in report
    assert re.search(r"\| m0->m1 \| [01]\.\d{3} \| [01]\.\d{3} \|", report)
    assert "| m0+m1 | " in report and "rho_1" in report
    assert "coherence" not in res and "latent" not in res  # only the group asked for


def test_the_report_says_why_alignment_was_skipped():
    settings = {"dataset": "toy", "split": "test", "n_test": 10, "seed": 0, "device": "cpu"}
    md = render_report({"run": "r", "settings": settings,
                        "alignment": {"skipped": "alignment needs at least two modalities"}})
    assert "## Cross-modal alignment" in md and "Skipped: alignment needs at least two modalities" in md


def test_alignment_is_in_the_default_metrics_and_the_cli_help():
    import argparse

    from mmvae.cli.commands import add_evaluate_arguments
    from mmvae.evaluation import METRICS

    parser = argparse.ArgumentParser()
    add_evaluate_arguments(parser)
    assert "alignment" in METRICS and "alignment" in " ".join(parser.format_help().split())
