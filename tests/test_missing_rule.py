"""The one missing-data rule: a row entirely NaN (float), entirely -1 (integer) or entirely masked is missing; a
row with only some such entries is observed and kept as it is (gaps)."""
import numpy as np
import pytest
import torch

from mmvae.datasets import MultimodalDataset, get_dataset, missing_rows
from mmvae.datasets.files import load_npz_dataset, nan_rows
from mmvae.errors import InputError
from mmvae.validation import observed_rows


def test_missing_rows_floats_tokens_bools_and_masks():
    x = torch.randn(5, 4, 2)  # [N, T, C]
    x[1] = float("nan")  # missing row
    x[2, 3:] = float("nan")  # a time gap at the end: observed
    x[3, :, 1] = float("nan")  # a dropped channel: observed
    assert missing_rows(x).tolist() == [False, True, False, False, False]
    tok = torch.tensor([[3, 1, 0], [-1, -1, -1], [2, -1, -1], [0, 0, 0]])  # [N, L]
    assert missing_rows(tok).tolist() == [False, True, False, False]
    assert not missing_rows(torch.zeros(3, 2, dtype=torch.bool)).any()  # bool rows are never missing
    a = np.ma.masked_array(np.arange(12.0).reshape(4, 3), mask=[[1, 1, 1], [1, 0, 0], [0] * 3, [1, 1, 1]])
    assert missing_rows(a).tolist() == [True, False, False, True]
    b = np.ma.masked_array(np.array([[1, -1], [5, 6]]), mask=[[1, 0], [0, 0]])  # masked + -1: all absent
    assert missing_rows(b).tolist() == [True, False]
    assert missing_rows(x.numpy()).tolist() == missing_rows(x).tolist()


def test_the_rule_is_the_models_rule():
    x = torch.randn(6, 3)
    x[[0, 4]] = float("nan")
    x[2, 1] = float("nan")
    tok = torch.randint(0, 4, (6, 5))
    tok[[1, 3]] = -1
    tok[5, 2:] = -1
    for t in (x, tok, torch.ones(6, 2, dtype=torch.bool)):
        assert torch.equal(~missing_rows(t), observed_rows(t))
        assert nan_rows(t.numpy()).tolist() == observed_rows(t).tolist()


def test_dataset_derives_avail_and_keeps_gaps():
    x = torch.randn(4, 5, 2)  # [N, T, C]
    x[0] = float("nan")
    x[1, 2:] = float("nan")  # variable length: NaN padding at the end
    tok = torch.tensor([[1, 2, 3], [-1, -1, -1], [4, -1, -1], [0, 1, 2]])  # row 1 missing, row 2 padded
    ds = MultimodalDataset({"x": x, "tok": tok})
    assert ds.avail.tolist() == [[False, True], [True, False], [True, True], [True, True]]
    assert "available=0.75" in repr(ds)
    assert ds.data["x"][1, 2:].isnan().all() and not ds.data["x"][1, :2].isnan().any()  # the gap is kept
    assert ds.data["tok"][2].tolist() == [4, -1, -1]  # padding is kept
    assert ds.likelihoods == {"x": "gaussian", "tok": "categorical"}
    given = MultimodalDataset({"x": x, "tok": tok}, avail=torch.ones(4, 2, dtype=torch.bool))
    assert given.avail.all()  # an explicit mask is taken as it is
    assert MultimodalDataset({"x": x[:0]}).avail.shape == (0, 1)


def _write(path, **extra):
    """Tokens [12, 6] (rows 2, 7 missing as -1, rows 3, 5 padded with -1), a NaN-padded float sequence [12, 8, 3]
    of lengths 3..8 (row 4 missing), integer counts [12, 4] and labels."""
    rng = np.random.default_rng(0)
    tok = rng.integers(0, 7, (12, 6))
    tok[[2, 7]] = -1
    tok[3, 4:] = -1
    tok[5, 1:] = -1
    seq = rng.normal(size=(12, 8, 3)).astype(np.float32)
    lengths = 3 + np.arange(12) % 6
    for i, n in enumerate(lengths):
        seq[i, n:] = np.nan
    seq[4] = np.nan
    counts = rng.poisson(2.0, (12, 4))
    np.savez(path, tok=tok, seq=seq, counts=counts, labels=np.arange(12) % 3, **extra)
    return tok, seq, counts


def test_npz_round_trip_partly_missing_tokens_and_nan_padded_sequences(tmp_path):
    path = tmp_path / "d.npz"
    tok, seq, counts = _write(path, counts__likelihood="poisson")
    ds = load_npz_dataset(path, "train", test_fraction=0.0)
    assert len(ds) == 12 and ds.shapes == {"tok": (6,), "seq": (8, 3), "counts": (4,)}
    assert ds.avail[:, 0].tolist() == [i not in (2, 7) for i in range(12)]
    assert ds.avail[:, 1].tolist() == [i != 4 for i in range(12)]
    assert ds.avail[:, 2].all()
    seen = ds.avail[:, 0].numpy()
    assert ds.data["tok"].dtype == torch.int64 and np.array_equal(ds.data["tok"].numpy()[seen], tok[seen])
    assert (ds.data["tok"][~ds.avail[:, 0]] == -1).all()  # a missing token row stays missing by the rule
    assert ds.data["tok"][3].tolist()[4:] == [-1, -1] and ds.data["tok"][5].tolist()[1:] == [-1] * 5
    assert ds.likelihoods["tok"] == {"name": "categorical", "num_classes": int(tok[seen].max()) + 1}
    assert np.array_equal(ds.data["seq"].numpy(), seq, equal_nan=True)  # the NaN padding loads as it is
    assert ds.likelihoods["seq"] == "gaussian"
    assert ds.likelihoods["counts"] == "poisson" and ds.data["counts"].dtype == torch.float32
    assert np.array_equal(ds.data["counts"].numpy(), counts.astype(np.float32))
    assert torch.equal(ds.avail, MultimodalDataset(ds.data).avail)  # the reader and the dataset agree
    assert ds.labels.tolist() == [i % 3 for i in range(12)]
    both = [get_dataset(str(path), s) for s in ("train", "test")]  # the default 10% test split still works
    assert sum(len(d) for d in both) == 12


def test_npz_integer_counts_default_to_tokens_and_poisson_by_keyword(tmp_path):
    path = tmp_path / "d.npz"
    _, _, counts = _write(path)
    assert load_npz_dataset(path, test_fraction=0.0).likelihoods["counts"]["name"] == "categorical"
    c = counts.copy()
    c[0, 1] = -1  # a gap in a count row: NaN in the float counts
    c[1] = -1  # a missing count row (the tuple stays: `v` is observed)
    np.savez(path, counts=c, v=np.zeros((12, 1), dtype=np.float32), counts__likelihood="categorical")
    ds = load_npz_dataset(path, test_fraction=0.0, likelihoods={"counts": "poisson"})  # the keyword wins
    assert ds.likelihoods["counts"] == "poisson" and ds.avail[:, 0].tolist() == [i != 1 for i in range(12)]
    assert ds.data["counts"][0].isnan().tolist() == [False, True, False, False]
    named = load_npz_dataset(path, test_fraction=0.0)  # "categorical" by name still counts the classes
    assert named.likelihoods["counts"] == {"name": "categorical", "num_classes": int(c.max()) + 1}
    with pytest.raises(InputError, match="likelihood given for 'nope'"):
        load_npz_dataset(path, likelihoods={"nope": "poisson"})


def test_npz_masked_array_as_data_and_mask(tmp_path):
    a = np.ma.masked_array(np.arange(24).reshape(6, 4), mask=False)
    a[1] = np.ma.masked  # a missing row
    a[2, 3] = np.ma.masked  # a gap: -1 in the tokens
    f = np.ma.masked_array(np.ones((6, 2, 2), dtype=np.float32), mask=False)
    f[0] = np.ma.masked
    f[3, 1] = np.ma.masked  # a gap: NaN in the floats
    path = tmp_path / "m.npz"
    np.savez(path, tok=a.data, tok__mask=np.ma.getmaskarray(a), x=f.data, x__mask=np.ma.getmaskarray(f))
    ds = load_npz_dataset(path, test_fraction=0.0)
    assert ds.avail.tolist() == [[True, False], [False, True], [True, True], [True, True], [True, True],
                                 [True, True]]
    assert ds.data["tok"][2].tolist() == [8, 9, 10, -1] and ds.data["tok"][4].tolist() == [16, 17, 18, 19]
    assert ds.data["x"][3].isnan().tolist() == [[False, False], [True, True]]
    assert ds.likelihoods["tok"] == {"name": "categorical", "num_classes": 24}


def test_npz_errors_name_the_file_key_and_problem(tmp_path):
    path = tmp_path / "bad.npz"
    x = np.zeros((4, 3), dtype=np.float32)
    x[1, 2] = np.inf
    np.savez(path, x=x)
    with pytest.raises(InputError, match=r"bad.npz: array 'x' \(modality 'x'\): row 1 holds an infinite value"):
        load_npz_dataset(path)
    np.savez(path, tok=np.array([[0, 1], [-2, 1], [3, 4]]))
    with pytest.raises(InputError, match=r"'tok'.*must be >= 0 \(-1 for padding\), got -2"):
        load_npz_dataset(path)
    np.savez(path, tok=np.zeros((3, 2), dtype=int), tok__mask=np.zeros(3, dtype=bool))
    with pytest.raises(InputError, match=r"'tok__mask': expected a bool mask of the shape of 'tok' \[3, 2\]"):
        load_npz_dataset(path)
    np.savez(path, tok=np.zeros((3, 2), dtype=int), y__mask=np.zeros((3, 2), dtype=bool))
    with pytest.raises(InputError, match="'y__mask' masks no modality"):
        load_npz_dataset(path)
    np.savez(path, tok=np.zeros((3, 2), dtype=int), y__likelihood="poisson")
    with pytest.raises(InputError, match="'y__likelihood' names the likelihood of no modality"):
        load_npz_dataset(path)
    np.savez(path, tok=np.zeros((3, 2), dtype=int), tok__likelihood=np.zeros(3))
    with pytest.raises(InputError, match="'tok__likelihood': expected one string naming a likelihood"):
        load_npz_dataset(path)
