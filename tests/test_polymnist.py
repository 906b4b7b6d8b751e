"""Tests of the PolyMNIST layout reader, the PolyMNIST builder (determinism and recipe), and --dataset polyfashion."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import mmvae.datasets.polyfashion as polyfashion_module
from mmvae.cli import main
from mmvae.datasets import get_dataset
from mmvae.datasets.polymnist import PolyMNIST, build_polymnist
from mmvae.errors import InputError
from mmvae.evaluation.run_files import dataset_spec

H = W = 28
CLASSES = 3


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test gets its own MMVAE_CACHE, so nothing lands in the user's cache folder."""
    monkeypatch.setenv("MMVAE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def write_layout(root, n_tuples=6, n_mod=2, split="train", seed=0):
    """root/split/m{k}/{i}.{label}.png with random pixels; -> (images uint8 [N, M, 3, H, W], labels [N])."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n_tuples, n_mod, 3, H, W), dtype=np.uint8)
    labels = np.arange(n_tuples) % CLASSES
    for k in range(n_mod):
        (root / split / f"m{k}").mkdir(parents=True, exist_ok=True)
        for i in range(n_tuples):
            Image.fromarray(images[i, k].transpose(1, 2, 0)).save(root / split / f"m{k}" / f"{i}.{labels[i]}.png")
    return images, labels


def write_idx(path, array):
    """An uncompressed IDX file (uint8): magic 00 00 08 ndim, big-endian uint32 sizes, the bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    path.write_bytes(header + array.tobytes())


def write_source(folder, n_train=36, n_test=15, seed=0):
    """Tiny MNIST-format files: 3 classes, images with both bright (> 128) and dark pixels."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n, stem in (("train", n_train, "train"), ("test", n_test, "t10k")):
        images = rng.integers(0, 256, size=(n, H, W), dtype=np.uint8)
        labels = rng.permutation(np.arange(n) % CLASSES).astype(np.uint8)
        write_idx(folder / f"{stem}-images-idx3-ubyte", images)
        write_idx(folder / f"{stem}-labels-idx1-ubyte", labels)
        out[split] = (images, labels.astype(np.int64))
    return out


def write_backgrounds(folder, n=5, side=36, seed=0):
    """n random RGB images of side x side pixels, named bg0.png ..; -> list of uint8 [side, side, 3]."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    bgs = [rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8) for _ in range(n)]
    for k, bg in enumerate(bgs):
        Image.fromarray(bg).save(folder / f"bg{k}.png")
    return bgs


def tree_bytes(root):
    """Relative path -> bytes of every file under root."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ----- the layout reader -----
def test_reader_pairs_tuples_by_index(tmp_path, private_cache):
    images, labels = write_layout(tmp_path / "poly")
    ds = PolyMNIST(tmp_path / "poly", "train")
    assert ds.modalities == ["m0", "m1"] and len(ds) == 6 and ds.shapes["m0"] == (3, H, W)
    assert torch.equal(ds.labels, torch.from_numpy(labels)) and ds.num_classes == CLASSES
    assert torch.equal(ds.indices, torch.arange(6)) and bool(ds.avail.all())
    assert ds.likelihoods == {"m0": "laplace", "m1": "laplace"}
    for k in range(2):
        assert ds.data[f"m{k}"].dtype == torch.float32
        assert torch.equal(ds.data[f"m{k}"], torch.from_numpy(images[:, k]).float() / 255)
    assert list((private_cache / "decoded").glob("*.npz"))  # decoded once, then cached
    again = PolyMNIST(tmp_path / "poly", "train")  # from the cache
    assert torch.equal(again.data["m1"], ds.data["m1"])
    x, avail, y = next(ds.batches(4))
    assert x["m0"].shape == (4, 3, H, W) and avail.shape == (4, 2) and torch.equal(y, ds.labels[:4])


def test_reader_missing_file_is_an_error_or_unavailable(tmp_path):
    write_layout(tmp_path / "poly")
    (tmp_path / "poly" / "train" / "m1" / "4.1.png").unlink()
    with pytest.raises(InputError, match=r"m1/4\.1\.png is missing"):
        PolyMNIST(tmp_path / "poly", "train")
    ds = PolyMNIST(tmp_path / "poly", "train", allow_missing=True)
    assert len(ds) == 6 and ds.avail[:, 0].all() and ds.avail[:, 1].tolist() == [True] * 4 + [False, True]
    assert torch.isnan(ds.data["m1"][4]).all() and not torch.isnan(ds.data["m1"][3]).any()


def test_reader_label_mismatch_and_bad_names_are_errors(tmp_path):
    write_layout(tmp_path / "poly")
    folder = tmp_path / "poly" / "train" / "m1"
    (folder / "2.2.png").rename(folder / "2.0.png")
    with pytest.raises(InputError, match=r"labels disagree for tuple 2: .*m0/2\.2\.png.*m1/2\.0\.png"):
        PolyMNIST(tmp_path / "poly", "train")
    (folder / "2.0.png").rename(folder / "two.png")
    with pytest.raises(InputError, match=r"two\.png: expected a file name"):
        PolyMNIST(tmp_path / "poly", "train")
    with pytest.raises(InputError, match="no such folder"):
        PolyMNIST(tmp_path / "poly", "test")


# ----- the builder -----
@pytest.fixture
def source(tmp_path):
    return write_source(tmp_path / "idx"), write_backgrounds(tmp_path / "bgs")


def test_builder_is_deterministic(tmp_path, source):
    build_polymnist(tmp_path / "idx", tmp_path / "a", backgrounds=tmp_path / "bgs", seed=3)
    build_polymnist(tmp_path / "idx", tmp_path / "b", backgrounds=tmp_path / "bgs", seed=3)
    build_polymnist(tmp_path / "idx", tmp_path / "c", backgrounds=tmp_path / "bgs", seed=4)
    a, b, c = (tree_bytes(tmp_path / name) for name in "abc")
    assert len(a) == 5 * (36 + 15) and a == b
    assert a.keys() == c.keys() and a != c


def match_recipe(img, sources, background):
    """Every (source index, crop corner) for which img == the recipe applied to that source and crop: where the
    source is > 128 the crop inverted (255 - crop), elsewhere the crop itself."""
    hits = []
    for top in range(background.shape[0] - H + 1):
        for left in range(background.shape[1] - W + 1):
            crop = background[top:top + H, left:left + W].astype(np.int64)  # [H, W, 3]
            inverted = (img == 255 - crop).all(-1)  # [H, W]
            if not (inverted | (img == crop).all(-1)).all():
                continue  # some pixel is neither the crop nor its inverse
            bright = sources > 128  # [S, H, W]
            hits += [(int(j), (top, left)) for j in np.flatnonzero((bright == inverted).all(axis=(1, 2)))]
    return hits


def test_builder_follows_the_recipe(tmp_path, source):
    (src, bgs) = source
    summary = build_polymnist(tmp_path / "idx", tmp_path / "poly", backgrounds=tmp_path / "bgs", seed=0)
    assert summary == {"out": str(tmp_path / "poly"), "train": 36, "test": 15, "modalities": 5}
    ds = PolyMNIST(tmp_path / "poly", "train")
    images, labels = src["train"]
    assert len(ds) == 36 and ds.modalities == [f"m{k}" for k in range(5)]
    assert torch.equal(ds.labels, torch.from_numpy(labels))  # tuple i has source image i's class
    for i in range(5):
        used = []
        for k in range(5):
            img = (ds.data[f"m{k}"][i] * 255).round().byte().permute(1, 2, 0).numpy()  # [H, W, 3]
            hits = match_recipe(img, images, bgs[k])
            assert len(hits) == 1, f"tuple {i}, m{k}: {len(hits)} (source, crop) pairs reproduce it"
            used.append(int(hits[0][0]))
        assert used[0] == i  # modality 0 shows source image i
        assert len(set(used)) == 5  # every modality a different source image ...
        assert all(labels[j] == labels[i] for j in used)  # ... of the tuple's class


def test_builder_primes_the_decoded_cache_with_the_same_pixels(tmp_path, source, private_cache):
    build_polymnist(tmp_path / "idx", tmp_path / "poly", backgrounds=tmp_path / "bgs", seed=0, prime_cache=True)
    assert len(list((private_cache / "decoded").glob("*.npz"))) == 2  # train and test
    primed, decoded = PolyMNIST(tmp_path / "poly", "test"), PolyMNIST(tmp_path / "poly", "test", cache=False)
    assert all(torch.equal(primed.data[m], decoded.data[m]) for m in decoded.modalities)
    assert torch.equal(primed.labels, decoded.labels)


def test_builder_errors(tmp_path, source):
    with pytest.raises(InputError, match="already exists and is not empty"):
        build_polymnist(tmp_path / "idx", tmp_path / "idx", backgrounds=tmp_path / "bgs")
    with pytest.raises(InputError, match=r"6 modalities.*1 image file|5 image file\(s\), need one per modality \(6\)"):
        build_polymnist(tmp_path / "idx", tmp_path / "x", backgrounds=tmp_path / "bgs", num_modalities=6)
    with pytest.raises(InputError, match="train-images-idx3-ubyte"):
        build_polymnist(tmp_path / "bgs", tmp_path / "y", backgrounds=tmp_path / "bgs")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_data_polymnist_command(tmp_path, source, capsys):
    code = main(["data", "polymnist", "--idx", str(tmp_path / "idx"), "--out", str(tmp_path / "poly"),
                 "--backgrounds", str(tmp_path / "bgs"), "--seed", "1", "--modalities", "3"])
    assert code == 0 and "poly" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "poly" / "test").iterdir()) == ["m0", "m1", "m2"]
    assert len(list((tmp_path / "poly" / "train" / "m2").glob("*.png"))) == 36
    code = main(["data", "polymnist", "--idx", str(tmp_path / "nowhere"), "--out", str(tmp_path / "p2")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("mmvae data: error:") and "nowhere" in err


# ----- --dataset polyfashion -----
def test_polyfashion_missing_data_is_a_clear_error(tmp_path, private_cache, capsys, monkeypatch):
    (tmp_path / "empty").mkdir()
    code = main(["train", "--dataset", "polyfashion", "--data-root", str(tmp_path / "empty"),
                 "--out", str(tmp_path / "run"), "--epochs", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("mmvae train: error:") and len(err.strip().splitlines()) == 1
    assert "apt-get install -y dataset-fashion-mnist" in err and "--data-root" in err
    monkeypatch.setattr(polyfashion_module, "find_fashion_mnist", lambda: None)  # as if the package were absent
    with pytest.raises(InputError, match="apt-get install -y dataset-fashion-mnist.*--data-root"):
        get_dataset("polyfashion", "train")
    code = main(["train", "--dataset", "polydigits", "--data-root", str(tmp_path / "empty"),
                 "--out", str(tmp_path / "run"), "--epochs", "1", "--quiet"])
    assert code == 2 and "option 'data_root' applies to --dataset polyfashion" in capsys.readouterr().err
    assert not private_cache.exists() and not (tmp_path / "run").exists()  # nothing written
    assert list((tmp_path / "empty").iterdir()) == []


@pytest.mark.slow
def test_train_and_reopen_polyfashion_end_to_end(tmp_path, private_cache, capsys):
    write_source(tmp_path / "idx", n_train=15)  # polyfashion caps its 10k / 2k tuples at the source's 15 / 15
    code = main(["train", "--dataset", "polyfashion", "--data-root", str(tmp_path / "idx"), "--out",
                 str(tmp_path / "run"), "--epochs", "1", "--batch-size", "64", "--quiet"])
    assert code == 0, capsys.readouterr().err
    spec = json.loads((tmp_path / "run" / "config.json").read_text())["dataset"]
    assert spec["name"] == "polyfashion" and spec["data_root"] == str((tmp_path / "idx").resolve())
    built = list((private_cache / "polyfashion").iterdir())
    assert len([p for p in built if p.is_dir()]) == 1  # one build, in the cache folder
    name, kw = dataset_spec(json.loads((tmp_path / "run" / "config.json").read_text()))
    test = get_dataset(name, "test", **kw)  # what `mmvae evaluate RUN` reopens
    assert len(test) == 15 and test.num_classes == 10 and test.shapes["m4"] == (3, H, W)
    assert len(list((private_cache / "polyfashion").iterdir())) == len(built)  # reused, not rebuilt


# ----- --dataset polymnist, the dataset options, registered names -----
def test_dataset_polymnist_reads_the_layout_at_data_root(tmp_path, capsys):
    write_layout(tmp_path / "poly", n_tuples=8, split="train")
    write_layout(tmp_path / "poly", n_tuples=4, split="test", seed=1)
    code = main(["train", "--dataset", "polymnist", "--out", str(tmp_path / "none"), "--epochs", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "--data-root DIR" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "none").exists()
    code = main(["train", "--dataset", "polymnist", "--data-root", str(tmp_path / "poly"), "--out",
                 str(tmp_path / "run"), "--epochs", "1", "--batch-size", "4", "--shared-dim", "2", "--quiet"])
    assert code == 0, capsys.readouterr().err
    spec = json.loads((tmp_path / "run" / "config.json").read_text())["dataset"]
    assert spec["name"] == "polymnist" and spec["data_root"] == str((tmp_path / "poly").resolve())
    assert len(get_dataset(spec["name"], "test", **{k: v for k, v in spec.items() if k != "name"})) == 4


def test_n_train_and_n_test_size_both_splits_and_are_checked(tmp_path, capsys):
    code = main(["train", "--dataset", "toy", "--n-train", "48", "--n-test", "16", "--out", str(tmp_path / "run"),
                 "--epochs", "1", "--batch-size", "16", "--quiet"])
    assert code == 0, capsys.readouterr().err
    spec = json.loads((tmp_path / "run" / "config.json").read_text())["dataset"]
    assert (spec["n_train"], spec["n_test"]) == (48, 16)
    kw = {k: v for k, v in spec.items() if k != "name"}
    assert len(get_dataset("toy", "train", **kw)) == 48 and len(get_dataset("toy", "test", **kw)) == 16
    assert len(get_dataset("polydigits", "test", n_test=20)) == 20
    np.savez(tmp_path / "d.npz", a=np.zeros((6, 3), np.float32))
    for argv, what in ((["--dataset", str(tmp_path / "d.npz"), "--n-train", "4"], "option 'n_train' applies to"),
                       (["--dataset", "toy", "--n-test", "0"], "option 'n_test' must be >= 1")):
        code = main(["train", *argv, "--out", str(tmp_path / "bad"), "--epochs", "1", "--quiet"])
        err = capsys.readouterr().err
        assert code == 2 and what in err, err
    assert not (tmp_path / "bad").exists()


def test_a_registered_name_wins_over_a_local_folder_of_that_name(tmp_path, monkeypatch):
    from mmvae.datasets import resolve

    monkeypatch.chdir(tmp_path)
    write_layout(tmp_path / "toy" / "x", n_tuples=2)  # a folder named like a registered dataset
    assert resolve("toy") == "toy" and len(get_dataset("toy", "test")) == 1000
    assert resolve("./toy") == str((tmp_path / "toy").resolve())  # the folder, asked for as a path
