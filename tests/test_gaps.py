"""Gaps: NaN (floats) or -1 (tokens) entries inside an observed row are masked out of the likelihood per element;
a row made only of them is a missing modality. Draws from the likelihood for impute / sample."""
import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from mmvae import MultimodalVAE
from mmvae.errors import InputError
from mmvae.likelihoods import make_likelihood
from mmvae.modality import Modality
from mmvae.validation import check_inputs, fill_gaps, gaps, observed_rows


def _model(seed=0, encoder=None):
    torch.manual_seed(seed)
    mods = {"a": Modality(shape=(6,)) if encoder is None else Modality(encoder, nn.Linear(2, 6), shape=(6,)),
            "t": Modality(shape=(5,), likelihood={"name": "categorical", "num_classes": 4}),
            "c": Modality(shape=(3,), likelihood="poisson")}
    return MultimodalVAE(mods, shared_dim=2)


def _batch(B=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"a": torch.randn(B, 6, generator=g), "t": torch.randint(4, (B, 5), generator=g),
            "c": torch.randint(5, (B, 3), generator=g).float()}


def test_masked_log_prob_sums_only_the_observed_entries_as_scipy_does():
    rng = np.random.default_rng(0)
    present = torch.from_numpy(rng.random((4, 7)) > 0.3)
    x = torch.from_numpy(rng.standard_normal((4, 7))).float()
    params = torch.from_numpy(rng.standard_normal((3, 4, 7))).float()  # [L, B, D]
    got = make_likelihood({"name": "gaussian", "scale": 0.5}).log_prob(params, x, present=present)
    want = (stats.norm.logpdf(x.numpy(), params.numpy(), 0.5) * present.numpy()).sum(-1)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)
    counts = torch.from_numpy(rng.poisson(2.0, (4, 7))).float()
    got = make_likelihood("poisson").log_prob(params, counts, present=present)
    rate = torch.nn.functional.softplus(params).numpy()
    want = (stats.poisson.logpmf(counts.numpy(), rate) * present.numpy()).sum(-1)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)
    row = torch.tensor([True, False, True, True])  # a missing row scores 0 even where entries are present
    got = make_likelihood("poisson").log_prob(params, counts, mask=row, present=present)
    assert (got[:, 1] == 0).all()
    np.testing.assert_allclose(got[:, [0, 2, 3]].numpy(), want[:, [0, 2, 3]], rtol=1e-5)


def test_decoder_output_at_a_gap_changes_no_log_likelihood():
    x = torch.randint(4, (3, 5))
    x[1, 2] = -1
    present = ~gaps(x)
    params = torch.randn(3, 5, 4)
    lik = make_likelihood({"name": "categorical", "num_classes": 4})
    base = lik.log_prob(params, fill_gaps(x), present=present)
    changed = params.clone()
    changed[1, 2] = 100.0 * torch.randn(4)
    assert torch.equal(base, lik.log_prob(changed, fill_gaps(x), present=present))
    changed[1, 3, 0] += 1.0  # an observed entry does change it
    assert not torch.equal(base[1], lik.log_prob(changed, fill_gaps(x), present=present)[1])


def test_the_loss_has_no_gradient_at_a_gap_and_stays_finite():
    model, x = _model(), _batch()
    x["a"][1, 2] = float("nan")
    x["t"][2, 3] = -1
    seen = {}

    def grab(mod, inputs, out):
        out.retain_grad()
        seen.setdefault(mod, []).append(out)

    hooks = [model.modalities[n].decoder.register_forward_hook(grab) for n in ("a", "t")]
    out = model(x)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for h in hooks:
        h.remove()
    (da,), (dt,) = (seen[model.modalities[n].decoder] for n in ("a", "t"))
    # decoder rows are [K * B] flattened with B last; every draw of sample 1, entry 2 has zero gradient
    ga, gt = da.grad.view(-1, 6, 6), dt.grad.view(-1, 6, 5, 4)
    assert (ga[:, 1, 2] == 0).all() and (ga[:, 1, 3] != 0).any()
    assert (gt[:, 2, 3] == 0).all() and (gt[:, 2, 2] != 0).any()


def test_encoders_see_gaps_as_zeros_unless_they_handle_nan():
    class Spy(nn.Linear):
        handles_nan = False

        def forward(self, x):
            self.seen = x.clone()
            return super().forward(torch.nan_to_num(x))

    for handles in (False, True):
        spy = Spy(6, 4)
        spy.handles_nan = handles
        model, x = _model(encoder=spy), _batch()
        x["a"][1, 2] = float("nan")
        model(x)
        assert bool(spy.seen[1, 2].isnan()) is handles and bool(spy.seen[1, 2] == 0) is not handles


def test_rows_made_only_of_gaps_are_missing_with_or_without_a_mask():
    model, x = _model(), _batch()
    x["a"][0] = float("nan")
    x["t"][1] = -1
    x["a"][2, 0] = float("nan")  # a gap, not a missing row
    assert observed_rows(x["a"]).tolist() == [False, True, True, True, True, True]
    assert observed_rows(x["t"]).tolist() == [True, False, True, True, True, True]
    for mask in (None, torch.ones(6, 3, dtype=torch.bool)):
        _, avail = check_inputs(model.modalities, model.names, x, mask)
        assert avail[:, 0].tolist() == [False, True, True, True, True, True]
        assert avail[:, 1].tolist() == [True, False, True, True, True, True]
    only = {"a": x["a"]}  # sample 0 then observes nothing
    with pytest.raises(InputError, match=r"sample\(s\) \[0\] have no observed modality"):
        model(only)


def test_integer_counts_are_cast_and_draws_are_counts_and_tokens():
    model, x = _model(), _batch()
    x["c"] = x["c"].long()
    assert torch.isfinite(model(x).loss)
    torch.manual_seed(0)
    drawn = model.impute({"a": x["a"]}, draw=True, n_samples=3)
    assert drawn["c"].shape == (3, 6, 3) and (drawn["c"] == drawn["c"].round()).all() and (drawn["c"] >= 0).all()
    assert drawn["t"].dtype == torch.long and drawn["t"].shape == (3, 6, 5)
    assert 0 <= int(drawn["t"].min()) and int(drawn["t"].max()) < 4
    means = model.impute({"a": x["a"]}, n_samples=3)
    assert not (means["c"] == means["c"].round()).all()  # rates, not counts
    gen = model.sample(400, draw=True)
    rate = model.sample(400)["c"]
    assert (gen["c"] == gen["c"].round()).all() and abs(float(gen["c"].mean() - rate.mean())) < 0.2


def test_impute_file_fills_missing_rows_and_gaps_and_keeps_observed_entries(tmp_path):
    from mmvae import Trainer
    from mmvae.datasets import MultimodalDataset
    from mmvae.impute_file import impute_npz

    x = _batch(32)
    x["c"] = x["c"].long()
    data = MultimodalDataset(x, likelihoods={"t": {"name": "categorical", "num_classes": 4}, "c": "poisson"})
    Trainer(_model(), max_epochs=1, batch_size=16, progress=False, device="cpu", out=tmp_path / "run").fit(data)
    a, t, c = x["a"].numpy().copy(), x["t"].numpy().copy(), x["c"].numpy().copy()
    a[0] = np.nan  # a missing row
    a[1, 2] = np.nan  # a gap
    t[2] = -1  # a missing token row
    t[3, 4] = -1  # a token gap
    np.savez(tmp_path / "in.npz", a=a, t=t, c=c)
    report = impute_npz(tmp_path / "run" / "last.pt", tmp_path / "in.npz", tmp_path / "out.npz", draw=True)
    out = np.load(tmp_path / "out.npz")
    assert report["imputed"] == 2 and report["filled_gaps"] == 2 and sorted(report["targets"]) == ["a", "t"]
    assert np.isfinite(out["a"]).all() and out["t"].dtype == np.int64 and (out["t"] >= 0).all()
    keep = ~np.isnan(a)
    np.testing.assert_array_equal(out["a"][keep], a[keep])  # observed entries untouched
    np.testing.assert_array_equal(out["t"][t >= 0], t[t >= 0])
    np.testing.assert_array_equal(out["c"], c)
    with pytest.raises(InputError, match="--draw .* --n-samples"):
        impute_npz(tmp_path / "run" / "last.pt", tmp_path / "in.npz", tmp_path / "o2.npz", draw=True, n_samples=3)
