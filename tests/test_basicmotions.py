"""--dataset basicmotions: aeon's BasicMotions as accelerometer and gyroscope [T, 3] series.

Every test runs on a stand-in `aeon.datasets` (random series of aeon's shapes and labels), so the loader's logic is
tested where aeon is not installed, and again on the real data wherever aeon is installed.
"""
import importlib.util
import sys
import types

import numpy as np
import pytest
import torch

from mmvae.datasets import DATASETS, get_dataset
from mmvae.datasets.basicmotions import CLASSES, BasicMotions, load_split, num_windows
from mmvae.errors import InputError

SOURCES = ["stand-in"] + (["aeon"] if importlib.util.find_spec("aeon") is not None else [])


def _fake_load_basic_motions(split=None):
    """aeon's contract: X float64 [40, 6, 100], y [40] lowercase activity names, 10 of each, per split."""
    rng = np.random.default_rng({"train": 0, "test": 1}[split])
    y = np.repeat(["standing", "running", "walking", "badminton"], 10)
    X = rng.normal(size=(40, 6, 100)) * np.arange(1, 7)[:, None] + np.arange(6)[:, None]  # channels differ
    return X + np.array([CLASSES.index(v) for v in y])[:, None, None], y


@pytest.fixture(params=SOURCES, autouse=True)
def source(request, monkeypatch):
    if request.param == "stand-in":
        fake = types.ModuleType("aeon.datasets")
        fake.load_basic_motions = _fake_load_basic_motions
        monkeypatch.setitem(sys.modules, "aeon", types.ModuleType("aeon"))
        monkeypatch.setitem(sys.modules, "aeon.datasets", fake)
    return request.param


@pytest.fixture
def train():
    return get_dataset("basicmotions", "train")


def test_registered_shapes_dtype_likelihood(train):
    assert "basicmotions" in DATASETS
    assert train.modalities == ["accelerometer", "gyroscope"]
    assert train.shapes == {"accelerometer": (50, 3), "gyroscope": (50, 3)}
    assert all(t.dtype == torch.float32 for t in train.data.values())
    assert train.likelihoods == {"accelerometer": "gaussian", "gyroscope": "gaussian"}
    assert train.avail.all() and train.targets.dtype == torch.long
    assert train.classes == list(CLASSES) == ["standing", "running", "walking", "badminton"]
    full = BasicMotions("test", window=None)
    assert len(full) == 40 and full.shapes == {"accelerometer": (100, 3), "gyroscope": (100, 3)}


def test_channels_are_aeons_split_in_two_and_time_first(source):
    X, y = load_split("train")  # [40, 6, 100], [40]
    if source == "stand-in":
        assert np.allclose(X, _fake_load_basic_motions("train")[0])
        assert y.tolist() == np.repeat(np.arange(4), 10).tolist()
    ds = BasicMotions("train", window=None)
    mean, std = X.mean((0, 2)), X.std((0, 2))  # [6]
    raw = ds.data["gyroscope"].numpy() * std[3:] + mean[3:]  # [40, 100, 3]
    assert np.allclose(raw, X[:, 3:].transpose(0, 2, 1), atol=1e-4)
    raw = ds.data["accelerometer"].numpy() * std[:3] + mean[:3]
    assert np.allclose(raw, X[:, :3].transpose(0, 2, 1), atol=1e-4)


def test_standardised_with_train_statistics():
    for window in (None, 50):
        tr = BasicMotions("train", window=window)
        for t in tr.data.values():  # [N, T, 3]
            tol = 1e-4 if window is None else 0.1  # windows overlap, so steps near the middle count more
            assert torch.allclose(t.mean((0, 1)), torch.zeros(3), atol=tol)
            assert torch.allclose(t.std((0, 1), correction=0), torch.ones(3), atol=tol)
    te = BasicMotions("test", window=None)
    X_tr, _ = load_split("train")
    X_te, _ = load_split("test")
    expect = (X_te[:, :3] - X_tr.mean((0, 2))[:3, None]) / X_tr.std((0, 2))[:3, None]  # train statistics
    assert np.allclose(te.data["accelerometer"].numpy(), expect.transpose(0, 2, 1), atol=1e-5)
    own = (X_te[:, :3] - X_te.mean((0, 2))[:3, None]) / X_te.std((0, 2))[:3, None]
    assert not np.allclose(te.data["accelerometer"].numpy(), own.transpose(0, 2, 1), atol=1e-3)


@pytest.mark.parametrize("window, stride", [(50, 10), (32, 8), (32, 16), (100, 5), (99, 7), (None, 8)])
def test_window_count_and_contents(window, stride):
    ds = BasicMotions("train", window=window, stride=stride)
    per_series = 1 if window is None else 1 + (100 - window) // stride
    assert num_windows(100, window, stride) == per_series
    assert len(ds) == 40 * per_series
    full = BasicMotions("train", window=None)
    for i in (0, len(ds) - 1, len(ds) // 2):
        s, start = int(ds.series[i]), int(ds.start[i])
        T = ds.shapes["gyroscope"][0]
        assert torch.equal(ds.data["gyroscope"][i], full.data["gyroscope"][s, start:start + T])
        assert ds.labels[i] == full.labels[s]  # a window keeps its series' class


def test_labels_all_four_classes_balanced(train):
    for ds in (train, BasicMotions("test")):
        assert ds.num_classes == 4
        assert ds.labels.min() >= 0 and ds.labels.max() <= 3
        assert ds.labels.bincount(minlength=4).tolist() == [len(ds) // 4] * 4


def test_deterministic_and_subset_keeps_series(train):
    again = get_dataset("basicmotions", "train", seed=3)  # the seed changes nothing: the data are fixed
    for k in train.modalities:
        assert torch.equal(train.data[k], again.data[k])
    assert torch.equal(train.labels, again.labels)
    sub = train.subset([5, 100])
    assert sub.series.tolist() == train.series[[5, 100]].tolist() and sub.start.tolist() == [50, 40]


def test_bad_window_and_split():
    with pytest.raises(InputError, match="window must be None or 1..100"):
        BasicMotions("train", window=101)
    with pytest.raises(InputError, match="stride must be >= 1"):
        BasicMotions("train", stride=0)
    with pytest.raises(InputError, match="split must be one of"):
        BasicMotions("valid")


def test_missing_aeon_is_a_clear_error(monkeypatch):
    for mod in [m for m in sys.modules if m == "aeon" or m.startswith("aeon.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "aeon", None)  # import aeon now raises ImportError
    with pytest.raises(InputError) as e:
        get_dataset("basicmotions", "train")
    assert str(e.value) == ('--dataset basicmotions needs the optional package aeon: '
                            'pip install "mmvae[basicmotions]"')
