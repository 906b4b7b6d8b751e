"""Tests of mmvae.datasets: determinism, PolyDigits structure, missing-modality handling, batching, IDX files."""
import gzip
import itertools

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import mmvae.datasets.idx as idx_module
from mmvae.datasets import MultimodalDataset, PolyDigits, SharedPrivateToy, get_dataset, read_idx
from mmvae.datasets.idx import find_fashion_mnist
from mmvae.datasets.polydigits import _digits, split_indices
from mmvae.datasets.toy import quadrant
from mmvae.errors import InputError


@pytest.fixture(scope="module")
def poly():
    return PolyDigits("train", seed=0)


@pytest.fixture(scope="module")
def poly_test():
    return PolyDigits("test", seed=0)


@pytest.fixture(scope="module")
def toy():
    return SharedPrivateToy("train", seed=0)


def indexed(n=103, m=3):
    """A dataset whose every entry names its row: data[k][i] = i, targets[i] = i."""
    rows = torch.arange(n, dtype=torch.float32)
    return MultimodalDataset({f"m{j}": rows[:, None].repeat(1, 2) + 1000 * j for j in range(m)},
                             targets=torch.arange(n))


# ----- PolyDigits -----
def test_polydigits_shapes_and_ranges(poly, poly_test):
    n_train, n_test = split_indices("train").size, split_indices("test").size
    assert len(poly) == 2 * n_train and len(poly_test) == n_test
    assert poly.modalities == [f"m{m}" for m in range(5)]
    for name in poly.modalities:
        x = poly.data[name]
        assert x.dtype == torch.float32 and x.shape == (len(poly), 3, 16, 16)
        assert x.min() >= 0 and x.max() <= 1
        assert poly.shapes[name] == (3, 16, 16) and poly.likelihoods[name] == "laplace"
    assert poly.num_classes == 10 and poly.targets.dtype == torch.long
    assert poly.avail.all() and poly.avail.shape == (len(poly), 5)
    assert torch.equal(poly.labels, poly.targets)


def test_polydigits_split_is_fixed_stratified_and_disjoint():
    train, test = split_indices("train"), split_indices("test")
    _, labels = _digits()
    assert np.intersect1d(train, test).size == 0 and train.size + test.size == labels.size
    share = np.bincount(labels[test], minlength=10) / np.bincount(labels, minlength=10)
    assert np.all(np.abs(share - 0.2) < 0.02)


def test_polydigits_deterministic_per_seed(poly):
    again = PolyDigits("train", seed=0)
    other = PolyDigits("train", seed=1)
    assert all(torch.equal(poly.data[k], again.data[k]) for k in poly.modalities)
    assert torch.equal(poly.targets, again.targets) and torch.equal(poly.sources, again.sources)
    assert not torch.equal(poly.sources, other.sources)
    assert not torch.equal(poly.data["m0"], other.data["m0"])


def test_polydigits_tuples_share_class_but_not_source(poly, poly_test):
    _, labels = _digits()
    src = poly.sources  # [N, M]
    assert torch.equal(torch.from_numpy(labels)[src], poly.targets[:, None].expand_as(src))
    assert np.isin(src.numpy(), split_indices("train")).all()
    assert np.isin(poly_test.sources.numpy(), split_indices("test")).all()
    pairs = list(itertools.combinations(range(src.shape[1]), 2))
    distinct = torch.stack([src[:, i] != src[:, j] for i, j in pairs]).all(0)  # [N]
    assert distinct.float().mean() > 0.8
    # and the pixels differ too: the digit strokes are different images, not one image recoloured
    d = [(poly.data[f"m{i}"] - poly.data[f"m{i}"].mean((2, 3), keepdim=True)).abs().mean(1) for i in range(2)]
    assert not torch.allclose(d[0], d[1], atol=0.05)


def test_polydigits_class_proportions_follow_split(poly):
    _, labels = _digits()
    expected = 2 * np.bincount(labels[split_indices("train")], minlength=10)
    assert np.array_equal(np.bincount(poly.targets.numpy(), minlength=10), expected)


def test_polydigits_backgrounds_differ_in_mean_colour(poly):
    means = torch.stack([poly.data[k].mean((0, 2, 3)) for k in poly.modalities])  # [M, 3]
    dist = torch.cdist(means, means) + torch.eye(len(means))
    assert dist.min() > 0.15


def test_polydigits_options():
    ds = PolyDigits("test", num_modalities=2, size=28, n_tuples=50, seed=3)
    assert len(ds) == 50 and ds.shapes == {"m0": (3, 28, 28), "m1": (3, 28, 28)}
    dropped = PolyDigits("test", n_tuples=200, drop_rate=0.4)
    assert dropped.avail.any(1).all() and not dropped.avail.all()
    with pytest.raises(ValueError, match="split"):
        PolyDigits("valid")


# ----- SharedPrivateToy -----
def test_toy_shapes_targets_and_labels(toy):
    assert len(toy) == 4000 and len(SharedPrivateToy("test", n=None)) == 1000
    assert toy.modalities == ["m0", "m1", "m2"] and toy.shapes == {f"m{m}": (20,) for m in range(3)}
    assert all(lik == {"name": "gaussian", "scale": 0.1} for lik in toy.likelihoods.values())
    assert toy.targets["shared"].shape == (4000, 2) and toy.targets["m1"].shape == (4000, 2)
    assert toy.num_classes == 4 and torch.equal(toy.labels, quadrant(toy.targets["shared"]))
    assert torch.bincount(toy.labels, minlength=4).min() > 800  # quadrants of N(0, I) are equally likely


def test_toy_factors_reproduce_x_through_fixed_maps(toy):
    s = toy.targets["shared"]
    for m, name in enumerate(toy.modalities):
        residual = toy.data[name] - toy.maps[m](torch.cat([s, toy.targets[name]], 1))
        assert abs(residual.std().item() - toy.noise) < 0.005 and abs(residual.mean().item()) < 0.005
    # the maps depend on the seed only: the test split's maps explain the train data
    test = SharedPrivateToy("test", seed=0, n=10)
    x0 = test.maps[0](torch.cat([s, toy.targets["m0"]], 1))
    assert (toy.data["m0"] - x0).std() < 0.06
    assert not torch.equal(test.targets["shared"], s[:10])


def test_toy_deterministic_per_seed(toy):
    again, other = SharedPrivateToy("train", seed=0), SharedPrivateToy("train", seed=1)
    assert all(torch.equal(toy.data[k], again.data[k]) for k in toy.modalities)
    assert not torch.equal(toy.maps[0].w1, other.maps[0].w1)
    assert not torch.equal(toy.targets["shared"], other.targets["shared"])
    # private factors matter: x_m is not a function of s alone
    z = torch.cat([toy.targets["shared"], torch.zeros(len(toy), 2)], 1)
    assert (toy.data["m0"] - toy.maps[0](z)).std() > 0.1


# ----- MultimodalDataset: drop, subset, getitem -----
@pytest.mark.parametrize("rate", [0.2, 0.5, 0.8])
def test_drop_keeps_one_modality_and_writes_nan(poly, rate):
    d = poly.drop(rate, seed=1)
    assert d.avail.any(1).all()
    m = len(poly.modalities)
    expected = rate - rate ** m / m  # rows that lost all M entries get one back
    assert abs((~d.avail).float().mean().item() - expected) < 0.02
    for j, name in enumerate(poly.modalities):
        missing = ~d.avail[:, j]
        assert torch.isnan(d.data[name][missing]).all()
        assert torch.equal(d.data[name][~missing], poly.data[name][~missing])
    assert poly.avail.all() and not torch.isnan(poly.data["m0"]).any()  # the original is untouched
    assert torch.equal(d.targets, poly.targets) and torch.equal(d.sources, poly.sources)
    assert torch.equal(poly.drop(rate, seed=1).avail, d.avail)
    assert not torch.equal(poly.drop(rate, seed=2).avail, d.avail)


def test_drop_integer_data_and_already_missing():
    tokens = torch.arange(1, 601).reshape(200, 3)
    avail = torch.ones(200, 2, dtype=torch.bool)
    avail[:50, 0] = False
    ds = MultimodalDataset({"tok": tokens, "x": torch.randn(200, 4)}, avail, torch.zeros(200, dtype=torch.long))
    assert ds.likelihoods == {"tok": "categorical", "x": "gaussian"}
    d = ds.drop(0.9, seed=0)
    assert d.avail.any(1).all() and not d.avail[:50, 0].any()  # a missing entry never comes back
    assert (d.data["tok"][~d.avail[:, 0]] == -1).all()  # a missing token row is all -1, by the one rule
    assert torch.equal(d.data["tok"][d.avail[:, 0]], tokens[d.avail[:, 0]])
    assert d.avail[:50, 1].all()  # the only available modality of those rows is kept


def test_subset_indexes_everything(poly, toy):
    idx = torch.tensor([5, 2, 9])
    sub = poly.subset(idx)
    assert len(sub) == 3 and torch.equal(sub.data["m3"], poly.data["m3"][idx])
    assert torch.equal(sub.sources, poly.sources[idx]) and torch.equal(sub.labels, poly.targets[idx])
    mask = torch.zeros(len(toy), dtype=torch.bool)
    mask[:7] = True
    tsub = toy.subset(mask)
    assert len(tsub) == 7 and torch.equal(tsub.targets["m2"], toy.targets["m2"][:7])
    assert torch.equal(tsub.labels, toy.labels[:7])


def test_getitem_and_dataloader_collate(poly, toy):
    x, a, y = poly[3]
    assert x["m0"].shape == (3, 16, 16) and a.shape == (5,) and y == poly.targets[3]
    xb, ab, yb = next(iter(DataLoader(poly, batch_size=8)))
    assert xb["m4"].shape == (8, 3, 16, 16) and ab.shape == (8, 5) and torch.equal(yb, poly.targets[:8])
    xb, ab, yb = next(iter(DataLoader(toy, batch_size=4)))
    assert xb["m1"].shape == (4, 20) and yb["shared"].shape == (4, 2) and torch.equal(yb["m0"], toy.targets["m0"][:4])


def test_constructor_checks():
    with pytest.raises(ValueError, match="samples"):
        MultimodalDataset({"a": torch.zeros(3, 1), "b": torch.zeros(4, 1)})
    with pytest.raises(ValueError, match="avail"):
        MultimodalDataset({"a": torch.zeros(3, 1)}, torch.ones(3, 2, dtype=torch.bool))
    unlabelled = MultimodalDataset({"a": torch.zeros(3, 1)})
    assert unlabelled.num_classes is None and unlabelled.avail.all() and unlabelled[0][2] == -1


# ----- batches -----
def test_batches_in_order_and_sizes():
    ds = indexed(103)
    batches = list(ds.batches(10))
    assert len(batches) == ds.num_batches(10) == 11 and len(batches[-1][2]) == 3
    assert torch.equal(torch.cat([y for _, _, y in batches]), torch.arange(103))
    x, a, y = batches[4]
    assert torch.equal(x["m1"][:, 0], y.float() + 1000) and a.shape == (10, 3)
    assert len(list(ds.batches(10, drop_last=True))) == ds.num_batches(10, drop_last=True) == 10


def test_batches_shuffle_covers_every_index_once():
    ds = indexed(103)
    seen = torch.cat([y for _, _, y in ds.batches(16, shuffle=True, generator=torch.Generator().manual_seed(0))])
    assert not torch.equal(seen, torch.arange(103))
    assert torch.equal(seen.sort().values, torch.arange(103))
    for x, _, y in ds.batches(16, shuffle=True, generator=torch.Generator().manual_seed(0)):
        assert torch.equal(x["m2"][:, 1], y.float() + 2000)  # rows of x, avail and y stay aligned


def test_batches_start_resumes_mid_epoch():
    ds = indexed(103)
    full = [y for _, _, y in ds.batches(16, shuffle=True, generator=torch.Generator().manual_seed(5))]
    rest = [y for _, _, y in ds.batches(16, shuffle=True, generator=torch.Generator().manual_seed(5), start=3)]
    assert len(rest) == len(full) - 3 and all(torch.equal(a, b) for a, b in zip(full[3:], rest))


@pytest.mark.parametrize("shuffle", [False, True])
def test_batches_shard_disjointly_across_ranks(shuffle):
    ds, world = indexed(103), 4
    shards = [torch.cat([y for _, _, y in ds.batches(8, shuffle=shuffle, generator=torch.Generator().manual_seed(1),
                                                     rank=r, world=world)]) for r in range(world)]
    assert all(len(s) == 103 // world for s in shards)
    assert all(ds.num_batches(8, world=world) == 4 for _ in shards)
    union = torch.cat(shards)
    assert len(union.unique()) == len(union)
    with pytest.raises(ValueError, match="rank"):
        next(ds.batches(8, rank=4, world=4))


# ----- registry -----
def test_get_dataset_registry():
    assert isinstance(get_dataset("toy", "test", n=20, seed=2), SharedPrivateToy)
    assert isinstance(get_dataset("PolyDigits", "test", n_tuples=10), PolyDigits)
    with pytest.raises(InputError, match="polydigits"):
        get_dataset("mnist", "train")


# ----- IDX files -----
def write_idx(path, array, code, compress=False):
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    raw = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dtype,code", [(np.uint8, 0x08), (np.int8, 0x09), (np.int16, 0x0B), (np.int32, 0x0C),
                                        (np.float32, 0x0D), (np.float64, 0x0E)])
def test_read_idx_round_trip(tmp_path, dtype, code, compress):
    rng = np.random.default_rng(0)
    array = (rng.standard_normal((4, 5, 3)) * 50).astype(dtype)
    path = tmp_path / ("a.idx.gz" if compress else "a.idx")
    write_idx(path, array, code, compress)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.shape == array.shape and np.array_equal(back, array)
    labels = np.arange(7, dtype=np.uint8)
    write_idx(tmp_path / "l", labels, 0x08)
    assert np.array_equal(read_idx(tmp_path / "l"), labels)


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "bad")
    write_idx(tmp_path / "short", np.zeros((3, 4), np.uint8), 0x08)
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-2])
    with pytest.raises(ValueError, match="bytes"):
        read_idx(tmp_path / "short")


def test_find_fashion_mnist_by_glob(tmp_path, monkeypatch):
    monkeypatch.setattr(idx_module.shutil, "which", lambda _: None)  # as on a system without dpkg
    assert find_fashion_mnist(tmp_path) is None
    folder = tmp_path / "dataset-fashion-mnist"
    folder.mkdir()
    for stem in idx_module.FASHION_FILES.values():
        (folder / (stem + ".gz")).write_bytes(b"")
    found = find_fashion_mnist(tmp_path)
    assert set(found) == {"train_images", "train_labels", "test_images", "test_labels"}
    assert found["test_labels"].endswith("t10k-labels-idx1-ubyte.gz")
