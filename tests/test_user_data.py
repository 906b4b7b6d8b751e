"""Your own data (mmvae/datasets/files.py): `--dataset file.npz` and `--dataset folder/`, read back, their errors,
and the command line end to end (train, evaluate, impute) on tiny files the tests write."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mmvae import InputError
from mmvae.cli import main as cli_main
from mmvae.datasets import get_dataset, read_npz
from mmvae.datasets.files import nan_rows
from mmvae.validation import observed_rows

N = 30


def _write_npz(path, labels=True, split=False):
    """A tiny .npz: a [1, 8, 8] image modality in [0, 1], a vector and tokens, with missing rows in each."""
    rng = np.random.default_rng(0)
    y = np.arange(N) % 2  # two classes, the image brightness tells them apart
    img = (0.2 + 0.6 * y[:, None, None, None] + 0.1 * rng.random((N, 1, 8, 8))).astype(np.float32)
    vec = (rng.normal(size=(N, 4)) + 3 * y[:, None]).astype(np.float32)
    tok = rng.integers(0, 5, (N, 3))
    img[[0, 1]] = np.nan
    vec[2] = np.nan
    tok_avail = np.ones(N, dtype=bool)
    tok_avail[[3, 4]] = False
    extra = {"labels": y} if labels else {}
    if split:
        extra["split"] = (np.arange(N) % 3 == 0).astype(np.int64)
    np.savez(path, img=img, vec=vec, tok=tok, tok__avail=tok_avail, **extra)
    return path


def _write_folder(root, split=False):
    """Two modalities of PNGs paired by stem: 'grey' [1, 8, 8] lacks stem s03, 'rgb' [3, 8, 8] lacks s05; with
    `split`, a split.csv that puts s00, s04, s08 in the test split."""
    root.mkdir()
    (root / "grey").mkdir()
    (root / "rgb").mkdir()
    rng = np.random.default_rng(1)
    for i in range(12):
        level = 40 + 160 * (i % 2)
        if i != 3:
            Image.fromarray(np.full((8, 8), level, dtype=np.uint8) + rng.integers(0, 20, (8, 8), dtype=np.uint8),
                            "L").save(root / "grey" / f"s{i:02d}.png")
        if i != 5:
            Image.fromarray(np.full((8, 8, 3), level, dtype=np.uint8), "RGB").save(root / "rgb" / f"s{i:02d}.png")
    (root / "labels.csv").write_text("stem,label\n" + "".join(f"s{i:02d},{i % 2}\n" for i in range(12)))
    if split:
        (root / "split.csv").write_text("".join(f"s{i:02d},{'test' if i % 4 == 0 else 'train'}\n" for i in range(12)))
    return root


def test_npz_modalities_likelihoods_missing_rows_and_labels(tmp_path):
    path = _write_npz(tmp_path / "d.npz")
    train, test = get_dataset(str(path), "train"), get_dataset(str(path), "test")
    assert (len(train), len(test)) == (27, 3)  # 10% held out
    assert train.likelihoods["img"] == "laplace" and train.likelihoods["vec"] == "gaussian"
    assert train.likelihoods["tok"] == {"name": "categorical", "num_classes": 5}
    assert train.shapes == {"img": (1, 8, 8), "vec": (4,), "tok": (3,)}
    both = torch.cat([train.avail, test.avail]).sum(0)
    assert both.tolist() == [N - 2, N - 1, N - 2]  # two NaN image rows, one NaN vector row, two masked tokens
    assert train.num_classes == test.num_classes == 2
    # rows and labels stay paired: the image brightness gives the class
    for ds in (train, test):
        seen = ds.avail[:, 0]
        bright = ds.data["img"][seen].mean((1, 2, 3)) > 0.5
        assert torch.equal(bright.long(), ds.labels[seen])
    # the held-out rows follow the seed, and the two splits never overlap
    other = get_dataset(str(path), "test", seed=1)
    assert not torch.equal(other.data["vec"], test.data["vec"])
    assert torch.allclose(get_dataset(str(path), "test").data["vec"], test.data["vec"], equal_nan=True)
    with np.load(path) as f:
        src = np.sort(f["vec"][:, 0][~np.isnan(f["vec"][:, 0])])
    got = torch.cat([train.data["vec"][:, 0], test.data["vec"][:, 0]])
    assert np.array_equal(np.sort(got[~got.isnan()].numpy()), src)  # every row once, in one split only


def test_npz_split_array_and_nan_rule(tmp_path):
    path = _write_npz(tmp_path / "d.npz", split=True)
    test = get_dataset(str(path), "test")
    assert len(test) == 10  # rows 0, 3, ..., 27
    assert test.avail[:, 0].tolist()[:2] == [False, True]  # row 0: image missing; row 3: image observed
    assert test.avail[:, 2].tolist()[:2] == [True, False]  # row 3: tokens masked by tok__avail
    a = np.random.default_rng(2).normal(size=(6, 2, 3)).astype(np.float32)
    a[[1, 4]] = np.nan
    for arr in (a, np.zeros((3, 2), dtype=np.int64)):
        assert nan_rows(arr).tolist() == observed_rows(torch.from_numpy(arr)).tolist()


def test_image_folder_paired_by_stem(tmp_path):
    root = _write_folder(tmp_path / "imgs")
    train, test = get_dataset(str(root), "train"), get_dataset(str(root), "test")
    assert train.modalities == ["grey", "rgb"]
    assert train.shapes == {"grey": (1, 8, 8), "rgb": (3, 8, 8)}
    assert set(train.likelihoods.values()) == {"laplace"}
    assert len(train) + len(test) == 12 and len(test) == 1
    full = get_dataset(str(root), "train", test_fraction=0.0)
    assert full.avail[:, 0].tolist().count(False) == 1 and not full.avail[3, 0] and not full.avail[5, 1]
    expect = torch.tensor([(40 + 160 * (i % 2)) / 255.0 for i in range(12)])
    assert torch.allclose(full.data["rgb"][:, 0, 0, 0][full.avail[:, 1]], expect[full.avail[:, 1]])
    assert full.labels.tolist() == [i % 2 for i in range(12)]
    test = get_dataset(str(_write_folder(tmp_path / "split", split=True)), "test")
    assert len(test) == 3 and test.labels.tolist() == [0, 0, 0] and test.avail.all()


def _raises(fn, *parts):
    with pytest.raises(InputError) as e:
        fn()
    for p in parts:
        assert p in str(e.value), str(e.value)


def test_errors_name_the_file_key_and_problem(tmp_path):
    _raises(lambda: get_dataset(str(tmp_path / "nope.npz")), "nope.npz", "no such file")
    _raises(lambda: get_dataset("nosuchname"), "unknown dataset 'nosuchname'")
    bad = tmp_path / "bad.npz"
    x = np.zeros((4, 3), dtype=np.float32)
    x[1, 0] = np.inf  # NaN there would be a gap
    np.savez(bad, x=x)
    _raises(lambda: get_dataset(str(bad)), "bad.npz", "'x'", "row 1 holds an infinite value")
    np.savez(bad, x=np.zeros((4, 3)), split=np.array([0, 1, 2, 0]))
    _raises(lambda: get_dataset(str(bad)), "'split'", "values must be one of [0, 1]", "got 2")
    np.savez(bad, x=np.zeros((4, 3)), labels=np.zeros((4, 2), dtype=int))
    _raises(lambda: get_dataset(str(bad)), "'labels'", "expected integers [N] = [4]")
    np.savez(bad, x=np.zeros((4, 3)), y__avail=np.ones(4, dtype=bool))
    _raises(lambda: get_dataset(str(bad)), "'y__avail'", "masks no modality")
    np.savez(bad, x=np.zeros((4, 3)), split=np.zeros(4, dtype=int))
    _raises(lambda: get_dataset(str(bad), "test"), "the test split is empty")
    np.savez(bad, x=np.zeros((4, 3)), z=np.zeros((5, 3)))
    _raises(lambda: get_dataset(str(bad)), "ragged")
    _raises(lambda: read_npz(bad, ["x"]), "array 'z' is not a modality of this model")
    root = _write_folder(tmp_path / "imgs")
    Image.fromarray(np.zeros((6, 8), dtype=np.uint8), "L").save(root / "grey" / "s11.png")
    _raises(lambda: get_dataset(str(root)), "s11.png", "shape [1, 6, 8]", "modality 'grey' has [1, 8, 8]")
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8), "L").save(root / "grey" / "s11.png")
    (root / "labels.csv").write_text("s00,1\n")
    _raises(lambda: get_dataset(str(root)), "labels.csv", "no entry for stem 's01'")
    (root / "labels.csv").unlink()
    (root / "rgb" / "s07.png").write_bytes(b"not a png")
    _raises(lambda: get_dataset(str(root)), "s07.png", "not a readable image")


def test_cli_missing_path_exits_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_main(["train", "--dataset", str(tmp_path / "absent.npz"), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mmvae train: error:") and "absent.npz" in err[0]
    assert not out.exists()


def _train_evaluate(data, run, monkeypatch, *extra):
    """train 1 epoch from another folder (so the stored path must be absolute), then evaluate --quick."""
    monkeypatch.chdir(data.parent)
    assert cli_main(["train", "--dataset", data.name, "--out", str(run), "--epochs", "1", "--batch-size", "16",
                     "--device", "cpu", "--quiet"]) == 0
    assert json.loads((run / "config.json").read_text())["dataset"]["name"] == str(data.resolve())
    monkeypatch.chdir(run)
    assert cli_main(["evaluate", str(run), "--quick", "--device", "cpu", "--set", "classifier_epochs=1",
                     "--set", "probe_n_train=20", "--set", "joint_samples=20", "--set", "map_points=20",
                     *extra]) == 0
    return json.loads((run / "metrics.json").read_text())


@pytest.mark.slow
def test_cli_end_to_end_on_npz_with_and_without_labels(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    data = _write_npz(tmp_path / "data" / "d.npz")
    metrics = _train_evaluate(data, tmp_path / "run", monkeypatch, "--set", "min_accuracy=0")
    assert "per_size" in metrics["coherence"] and "skipped" not in metrics["latent"]
    assert "imputation" in metrics
    filled = tmp_path / "filled.npz"
    assert cli_main(["impute", str(tmp_path / "run"), "--input", str(data), "--out", str(filled)]) == 0
    with np.load(filled) as f:
        assert not np.isnan(f["img"]).any() and not np.isnan(f["vec"]).any()
        assert np.array_equal(f["labels"], np.arange(N) % 2) and "tok__avail" not in f.files
        with np.load(data) as src:
            assert np.array_equal(f["vec"][3:], src["vec"][3:])  # observed rows are kept as they were
    nolab = _write_npz(tmp_path / "data" / "nolabels.npz", labels=False)
    metrics = _train_evaluate(nolab, tmp_path / "run2", monkeypatch, "--metrics", "coherence,latent")
    assert metrics["coherence"] == {"skipped": "the dataset has no class labels"}
    assert metrics["latent"] == {"skipped": "the dataset has no class labels"}


@pytest.mark.slow
def test_cli_end_to_end_on_image_folder(tmp_path, monkeypatch):
    root = _write_folder(tmp_path / "imgs", split=True)
    metrics = _train_evaluate(root, tmp_path / "run", monkeypatch, "--set", "min_accuracy=0")
    assert "per_size" in metrics["coherence"]
    src = tmp_path / "in.npz"
    grey = np.full((2, 1, 8, 8), 0.5, dtype=np.float32)
    np.savez(src, grey=grey, rgb=np.full((2, 3, 8, 8), np.nan, dtype=np.float32))
    assert cli_main(["impute", str(tmp_path / "run"), "--input", str(src), "--out", str(tmp_path / "o.npz")]) == 0
    with np.load(tmp_path / "o.npz") as f:
        assert f["rgb"].shape == (2, 3, 8, 8) and np.isfinite(f["rgb"]).all()


class _PlainDataset(torch.utils.data.Dataset):
    """A torch Dataset that is not a MultimodalDataset: samples one at a time, as a file-backed set would."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        return self.ds[i]


@pytest.mark.slow
def test_torch_dataset_through_dataloader_gives_the_in_memory_losses(tmp_path):
    from mmvae import Trainer
    from mmvae.datasets.loader import LoaderDataset
    from mmvae.models import build

    train = get_dataset(str(_write_npz(tmp_path / "d.npz")), "train")
    val = get_dataset(str(tmp_path / "d.npz"), "test")
    histories = []
    for wrap in (lambda d: d, _PlainDataset, lambda d: LoaderDataset(_PlainDataset(d), num_workers=2)):
        torch.manual_seed(0)
        model = build("mopoe", train)
        histories.append(Trainer(model, max_epochs=2, batch_size=8, device="cpu", seed=3, progress=False)
                         .fit(wrap(train), val=wrap(val)))
    for key in ("train/loss", "val/loss"):
        ref = [h[key] for h in histories[0]]
        assert len(ref) == 2 and all(np.isfinite(ref))
        for other in histories[1:]:
            assert [h[key] for h in other] == pytest.approx(ref, rel=1e-6, abs=1e-6)


def test_evaluators_read_a_torch_dataset_as_the_in_memory_one(tmp_path, one_thread):
    from mmvae.datasets import PolyDigits
    from mmvae.datasets.loader import LoaderDataset
    from mmvae.evaluation import (
        as_eval_data,
        conditional_coherence,
        imputation_error,
        latent_classification,
        train_classifiers,
    )
    from mmvae.models import build

    train = PolyDigits("train", num_modalities=2, n_tuples=64, seed=0).drop(0.3, seed=1)
    test = PolyDigits("test", num_modalities=2, n_tuples=40, seed=0).drop(0.3, seed=2)
    torch.manual_seed(0)
    model = build("mopoe", train, shared_dim=4).eval()
    a, b = as_eval_data(test), as_eval_data(LoaderDataset(_PlainDataset(test), num_workers=0))
    assert b.names == a.names and torch.equal(b.avail, a.avail) and torch.equal(b.labels, a.labels)
    assert all(torch.equal(b.data[m].nan_to_num(), a.data[m].nan_to_num()) for m in a.names)  # dropped rows: NaN
    assert b.num_classes == 10
    sub = as_eval_data(_PlainDataset(test), n=7, seed=3)  # n random rows, the same rule as in memory
    assert torch.equal(sub.labels, as_eval_data(test, n=7, seed=3).labels)
    results = []
    for tr, te in ((train, test), (_PlainDataset(train), _PlainDataset(test))):
        clfs = train_classifiers(tr, te, epochs=1, device="cpu")
        torch.manual_seed(1)
        coh = conditional_coherence(model, te, clfs, n_samples=1, min_accuracy=None)  # 1-epoch classifiers
        torch.manual_seed(1)
        imp = imputation_error(model, te, n_samples=2)
        probe = latent_classification(model, tr, te, n_train=50)
        results.append((coh, imp, probe, {m: c.test_accuracy for m, c in clfs.items()}))
    for r0, r1 in zip(*results):
        assert json.dumps(r0, sort_keys=True, default=str) == json.dumps(r1, sort_keys=True, default=str)
    with pytest.raises(InputError, match="no modality 'm9'"):
        as_eval_data(_PlainDataset(test), names=["m0", "m9"])
