"""Coherence classifiers: each kind (ResNet for images, MLP for vectors, 1-d convnet for tokens) learns a small
separable problem it has to read its input for; weights-only save and load; a version bump retrains; and
`mmvae evaluate --classifiers DIR` takes a user's folder, or refuses a bad one by modality, file and mismatch."""
from __future__ import annotations

import json

import pytest
import torch

from mmvae.cli import main
from mmvae.datasets import MultimodalDataset, get_dataset
from mmvae.evaluation import Classifier, load_classifiers, save_classifiers, train_classifiers
from mmvae.evaluation.classifiers import CLASSIFIER_VERSION, accuracy, classifiers_match, random_shift
from mmvae.models import build
from mmvae.trainer import Trainer

K = 3  # classes


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def three_kinds(n: int, seed: int) -> MultimodalDataset:
    """n tuples of 3 classes, one modality per classifier kind, each class visible only in the modality's layout:
    img: horizontal stripes, vertical stripes or a checkerboard (same mean brightness) under noise;
    vec: a class pattern under noise; tok: 12 random tokens of 0..6 with the token 7 + class at a random place."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % K
    r = torch.arange(8)
    stripes = torch.stack([(r[:, None] % 2).expand(8, 8), (r[None, :] % 2).expand(8, 8),
                           (r[:, None] + r[None, :]) % 2]).float()  # [K, 8, 8]
    phase = torch.randint(0, 2, (n, 1, 1), generator=g).float()  # the pattern or its negative: mean tells nothing
    img = (stripes[y] - phase).abs()[:, None].expand(n, 3, 8, 8) + 0.3 * torch.randn(n, 3, 8, 8, generator=g)
    vec = 2 * torch.randn(K, 6, generator=torch.Generator().manual_seed(5))[y] + 0.5 * torch.randn(n, 6, generator=g)
    tok = torch.randint(0, 7, (n, 12), generator=g)
    tok[torch.arange(n), torch.randint(0, 12, (n,), generator=g)] = 7 + y
    return MultimodalDataset({"img": img, "vec": vec, "tok": tok}, targets=y, num_classes=K)


@pytest.fixture(scope="module")
def trained():
    train, test = three_kinds(150, seed=0), three_kinds(150, seed=1)
    return train_classifiers(train, test, epochs=8, batch_size=32, lr=5e-3, device="cpu", seed=0), train


def test_each_kind_learns_its_separable_problem(trained):
    clfs, _ = trained
    assert {m: c.spec["kind"] for m, c in clfs.items()} == {"img": "conv", "vec": "mlp", "tok": "tokens"}
    assert isinstance(clfs["tok"].net, torch.nn.Module) and clfs["tok"].spec["vocab"] == 10
    for name, c in clfs.items():
        assert c.meta["test_accuracy"] >= 0.9, (name, c.meta)  # chance is 1/3
        assert c.meta["version"] == CLASSIFIER_VERSION and c.meta["n_train"] == c.meta["n_test"] == 150


def test_untrained_networks_are_near_chance():
    """The problems are not solved by initialisation: the same networks untrained score far below 0.9."""
    test = three_kinds(150, seed=1)
    clfs = train_classifiers(test, test, epochs=0, device="cpu")
    assert max(c.meta["test_accuracy"] for c in clfs.values()) < 0.7


def test_random_shift_moves_each_image_by_at_most_the_shift():
    x = torch.zeros(64, 1, 9, 9)
    x[:, :, 4, 4] = 1.0
    out = random_shift(x, 2, torch.Generator().manual_seed(0))
    pos = out[:, 0].flatten(1).argmax(1)
    dy, dx = pos // 9 - 4, pos % 9 - 4
    assert out.shape == x.shape and out.sum() == 64
    assert dy.abs().max() == 2 and dx.abs().max() == 2 and len(set(zip(dy.tolist(), dx.tolist()))) > 10


def test_round_trip_is_weights_only_and_old_versions_retrain(tmp_path, trained):
    clfs, train = trained
    save_classifiers(clfs, tmp_path)
    states = torch.load(tmp_path / "classifiers.pt", weights_only=True)
    assert set(states) == set(clfs) and not list(tmp_path.glob(".*tmp"))
    back = load_classifiers(tmp_path)
    data = three_kinds(20, seed=3).data
    for name, c in clfs.items():
        assert torch.equal(back[name](data[name]), c(data[name])), name
    assert classifiers_match(back, train)
    back["img"].meta["version"] = CLASSIFIER_VERSION - 1  # cached by an older mmvae: not reused
    assert not classifiers_match(back, train)


def test_image_modalities_of_one_shape_share_a_network_trained_on_all_their_rows():
    """Pooled: 'a' and 'b' (same shape) get one network trained on both modalities' rows, each its own copy and its
    own test accuracy; 'c' (another shape) and the vector stay alone; changing b's data invalidates a's cache."""
    base = three_kinds(90, seed=0)
    img = base.data["img"]
    data = {"a": img, "b": img.flip(-1) + 0.1, "c": img[:, :, :6, :6], "vec": base.data["vec"]}
    train = MultimodalDataset(data, targets=base.targets, num_classes=K)
    test = MultimodalDataset({k: v[:30] for k, v in data.items()}, targets=base.targets[:30], num_classes=K)
    clfs = train_classifiers(train, test, epochs=1, batch_size=32, device="cpu")
    assert clfs["a"].meta["pooled_with"] == clfs["b"].meta["pooled_with"] == ["a", "b"]
    assert clfs["c"].meta["pooled_with"] == ["c"] and clfs["vec"].meta["pooled_with"] == ["vec"]
    assert clfs["a"].meta["n_train"] == 180 and clfs["c"].meta["n_train"] == 90
    assert clfs["a"] is not clfs["b"]
    for (ka, va), (kb, vb) in zip(clfs["a"].state_dict().items(), clfs["b"].state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    for m in ("a", "b"):  # each scored on its own test rows
        assert clfs[m].meta["test_accuracy"] == accuracy(clfs[m], test.data[m], test.targets)
    assert classifiers_match(clfs, train)
    edited = MultimodalDataset({**data, "b": data["b"] + 0.01}, targets=base.targets, num_classes=K)
    assert not classifiers_match(clfs, edited)
    alone = train_classifiers(train, test, epochs=1, batch_size=32, device="cpu", pool=False)
    assert alone["a"].meta["pooled_with"] == ["a"] and alone["a"].meta["n_train"] == 90
    assert classifiers_match(alone, train)


# ---------------------------------------------------------------- mmvae evaluate --classifiers
SPEC = {"name": "polydigits", "n_tuples": 60, "seed": 0}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A MoPoE run on 60 PolyDigits tuples, one epoch."""
    kw = {k: v for k, v in SPEC.items() if k != "name"}
    train = get_dataset("polydigits", "train", **kw)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("runs") / "pd"
    Trainer(build("mopoe", train), max_epochs=1, batch_size=30, device="cpu", out=out, progress=False,
            extra_config={"dataset": SPEC, "preset": "mopoe"}).fit(train)
    return out


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    """Classifiers trained outside the evaluation, saved as a user would: one epoch, on the run's own data."""
    kw = {k: v for k, v in SPEC.items() if k != "name"}
    train, test = get_dataset("polydigits", "train", **kw), get_dataset("polydigits", "test", **kw)
    clfs = train_classifiers(train, test, epochs=1, device="cpu")
    return save_classifiers(clfs, tmp_path_factory.mktemp("user") / "clf"), clfs


def _bad_folder(tmp_path, clfs, **edit):
    """A copy of the user's classifiers with one modality replaced (None: removed)."""
    clfs = dict(clfs)
    for name, c in edit.items():
        if c is None:
            del clfs[name]
        else:
            clfs[name] = c
    return save_classifiers(clfs, tmp_path / "bad")


def _evaluate(run_dir, folder, tmp_path, capsys) -> tuple[int, str]:
    code = main(["evaluate", str(run_dir), "--classifiers", str(folder), "--out", str(tmp_path / "eval"),
                 "--device", "cpu", "--metrics", "coherence", "--n-test", "20", "--set", "min_accuracy=0",
                 "--set", "joint_samples=50", "--set", "map_points=40", "--set", "plot_tuples=2"])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("edit, fragments", [
    ({"m2": Classifier((3, 8, 8), 10)}, ["modality 'm2'", "classifiers.json", "[3, 8, 8]", "[3, 16, 16]"]),
    ({"m1": Classifier((3, 16, 16), 7)}, ["modality 'm1'", "classifiers.json", "7 classes", "has 10"]),
    ({"m4": None}, ["modality 'm4'", "no classifier for it", "classifiers.json"]),
])
def test_bad_user_classifiers_are_refused_by_name(run_dir, user_dir, tmp_path, capsys, edit, fragments):
    code, err = _evaluate(run_dir, _bad_folder(tmp_path, user_dir[1], **edit), tmp_path, capsys)
    assert code == 2 and err.startswith("mmvae evaluate: error: ") and err.count("\n") == 1, err
    for f in fragments:
        assert f in err, (f, err)
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_pickled_classifiers_are_refused(run_dir, user_dir, tmp_path, capsys):
    """A file that needs unpickling (a whole module, not a state dict) is never loaded."""
    folder = _bad_folder(tmp_path, user_dir[1])
    torch.save(dict(user_dir[1]), folder / "classifiers.pt")  # whole modules, not state dicts: pickled
    code, err = _evaluate(run_dir, folder, tmp_path, capsys)
    assert code == 2 and "classifiers.pt" in err and "not a weights-only file" in err, err


def test_good_user_classifiers_are_used(run_dir, user_dir, tmp_path, capsys):
    folder, clfs = user_dir
    code, err = _evaluate(run_dir, folder, tmp_path, capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    section = report["classifiers"]
    assert section["source"] == "user" and section["folder"] == str(folder)
    assert set(section["per_modality"]) == set(clfs)
    for name, meta in section["per_modality"].items():  # scored on the evaluation's test rows, as saved otherwise
        assert meta["scored_on"] == "the evaluation's test rows" and meta["checksum"] == clfs[name].meta["checksum"]
        assert 0.0 <= meta["test_accuracy"] <= 1.0
    assert 0.0 <= report["coherence"]["mean"] <= 1.0
    assert not (run_dir / "classifiers").exists()  # nothing trained or cached in the run folder
