"""Issue 14.5: corrupt data files on the data paths (PolyMNIST folders, image folders, `.npz`) are an InputError
naming the file, raised while the dataset is opened, so before training starts and before the run folder is
created: a truncated or undecodable image, the wrong size or channel count, a missing partner file in a tuple,
an unparsable label, an empty modality folder, an `.npz` with no rows or that is text. The pre-flight scan of a
folder is a directory listing plus one image header per modality; its time on 60k tuples is printed."""
from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
from fault_helpers import TRAIN, one_error_line, run_cli
from PIL import Image
from reliability_helpers import count

from mmvae.datasets import get_dataset
from mmvae.datasets.polymnist import PolyMNIST
from mmvae.datasets.preflight import check_polymnist_split
from mmvae.errors import InputError

RNG = np.random.default_rng(0)


def _png(path, shape=(28, 28, 3)):
    Image.fromarray(RNG.integers(0, 255, shape, dtype=np.uint8)).save(path)


def _polymnist(root, n=6, M=2):
    for split in ("train", "test"):
        for m in range(M):
            (root / split / f"m{m}").mkdir(parents=True)
            for i in range(n):
                _png(root / split / f"m{m}" / f"{i}.{i % 10}.png")
    return root


def _image_folder(root, n=6, M=2):
    for m in range(M):
        (root / f"mod{m}").mkdir(parents=True)
        for i in range(n):
            _png(root / f"mod{m}" / f"s{i}.png", (8, 8, 3))
    return root


def _truncate(p):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


POLY = {  # damage -> (the file or folder the message names, relative to the root)
    "truncated image": (lambda r: _truncate(r / "train/m0/1.1.png"), "train/m0/1.1.png"),
    "not an image": (lambda r: (r / "train/m0/1.1.png").write_text("hello"), "train/m0/1.1.png"),
    "wrong size": (lambda r: _png(r / "train/m0/1.1.png", (30, 28, 3)), "train/m0/1.1.png"),
    "grey-level modality": (lambda r: [_png(p, (28, 28)) for p in (r / "train/m1").iterdir()], "train/m1/"),
    "RGBA modality": (lambda r: [_png(p, (28, 28, 4)) for p in (r / "train/m1").iterdir()], "train/m1/"),
    "missing partner": (lambda r: (r / "train/m1/2.2.png").unlink(), "train/m1/2.2.png"),
    "unparsable label": (lambda r: (r / "train/m1/2.2.png").rename(r / "train/m1/2.x.png"), "train/m1/2.x.png"),
    "labels disagree": (lambda r: (r / "train/m1/2.2.png").rename(r / "train/m1/2.3.png"), "train/m1/2.3.png"),
    "empty modality folder": (lambda r: [p.unlink() for p in (r / "train/m1").iterdir()], "train/m1"),
}


@pytest.mark.parametrize("case", sorted(POLY))
def test_corrupt_polymnist_folder_names_the_file(tmp_path, case):
    root = _polymnist(tmp_path / "poly")
    damage, named = POLY[case]
    damage(root)
    with pytest.raises(InputError) as e:
        PolyMNIST(root, "train", cache=False)
    assert str(root / named).rstrip("/") in str(e.value), str(e.value)
    count("corrupt_file")


IMAGES = {
    "truncated image": (lambda r: _truncate(r / "mod0/s1.png"), "mod0/s1.png"),
    "not an image": (lambda r: (r / "mod0/s1.png").write_text("hello"), "mod0/s1.png"),
    "wrong size": (lambda r: _png(r / "mod0/s1.png", (9, 8, 3)), "mod0/s1.png"),
    "wrong channel count": (lambda r: _png(r / "mod0/s1.png", (8, 8)), "mod0/s1.png"),
    "empty modality folder": (lambda r: [p.unlink() for p in (r / "mod1").iterdir()], "mod1"),
    "only non-images": (lambda r: [p.rename(p.with_suffix(".txt")) for p in (r / "mod1").iterdir()], "mod1"),
    "unparsable label": (lambda r: (r / "labels.csv").write_text("s0,1\ns1,x\n"), "labels.csv"),
}


@pytest.mark.parametrize("case", sorted(IMAGES))
def test_corrupt_image_folder_names_the_file(tmp_path, case):
    root = _image_folder(tmp_path / "imgs")
    damage, named = IMAGES[case]
    damage(root)
    with pytest.raises(InputError) as e:
        get_dataset(str(root), "train")
    assert str(root / named) in str(e.value), str(e.value)
    count("corrupt_file")


@pytest.mark.parametrize("case", ["no rows", "text", "crafted header"])
def test_corrupt_npz_dataset(tmp_path, case):
    path = tmp_path / "data.npz"
    if case == "no rows":
        np.savez(path, a=np.zeros((0, 4), np.float32), b=np.zeros((0, 3), np.float32))
    elif case == "text":
        path.write_text("a,b\n1,2\n")
    else:
        np.savez(path, a=np.zeros((4, 4), np.float32))
        blob = bytearray(path.read_bytes())
        at = blob.index(b"(4, 4)")
        blob[at:at + 6] = b"(9, 9)"  # the header now says 81 floats for 16
        path.write_bytes(bytes(blob))
    with pytest.raises(InputError, match=str(path)):
        get_dataset(str(path), "train")
    count("corrupt_file")


def test_corrupt_data_stops_train_before_the_run_folder_exists(tmp_path, capsys):
    root = _image_folder(tmp_path / "imgs")
    [p.unlink() for p in (root / "mod1").iterdir()]
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, *TRAIN[:1], "--dataset", root, *TRAIN[3:], "--epochs", "1", "--out", out)
    assert code == 2 and str(root / "mod1") in one_error_line(err, "train")
    assert not out.exists()
    count("corrupt_file")


def test_preflight_scan_time_on_60k_tuples(tmp_path):
    split = tmp_path / "poly" / "train"
    blob = None
    for m in range(2):
        (split / f"m{m}").mkdir(parents=True)
        if blob is None:
            _png(split / "m0" / "0.0.png")
            blob = (split / "m0" / "0.0.png").read_bytes()
        for i in range(60_000):
            (split / f"m{m}" / f"{i}.{i % 10}.png").write_bytes(blob)
    t = time.perf_counter()
    check_polymnist_split(split)
    took = time.perf_counter() - t
    print(f"pre-flight scan of 60,000 tuples x 2 modalities: {took:.3f} s")
    assert took < 30
    shutil.rmtree(split)
