"""Issue 5.1: every bad input at the boundary raises mmvae.InputError naming the modality, the expected and the
received value; values at missing modalities are never read.

Boundaries: the model verbs (`forward`, `impute`, `embed`, `posterior`), the evaluators, and the CLI's file readers
(`mmvae impute` .npz input, `mmvae train --config`). A bare RuntimeError from inside torch fails these tests.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from reliability_helpers import count, mixed_batch, mixed_model, params, toy, toy_model

from mmvae import InputError, cli
from mmvae.datasets import MultimodalDataset
from mmvae.trainer import Trainer

B = 6
ALL = torch.ones(B, 3, dtype=torch.bool)


def _with(**changes):
    x = mixed_batch(B)
    for k, v in changes.items():
        if v is None:
            del x[k]
        else:
            x[k] = v(x[k]) if callable(v) else v
    return x


def _set(t, index, value):
    t = t.clone()
    t[index] = value
    return t


def _no_row(avail, i):
    avail = avail.clone()
    avail[i] = False
    return avail


# (case, x, avail, fragments the message must hold): modality, expected and received
CASES = [
    ("unknown modality", _with(smell=torch.randn(B, 2)), None, ["unknown modality 'smell'", "img", "vec", "tok"]),
    ("missing required modality", _with(vec=None), ALL, ["'vec'", "marked observed", "missing from the inputs"]),
    ("batch sizes disagree", _with(vec=lambda t: t[:4]), None, ["batch sizes disagree", "'vec': 4", "'img': 6"]),
    ("wrong trailing shape (vector)", _with(vec=torch.randn(B, 7)), None,
     ["modality 'vec'", "per-sample shape (5,)", "got (7,)"]),
    ("wrong trailing shape (image)", _with(img=torch.rand(B, 4, 4)), None,
     ["modality 'img'", "(1, 4, 4)", "got (4, 4)"]),
    ("wrong trailing shape (tokens)", _with(tok=torch.zeros(B, 4, 2, dtype=torch.long)), None,
     ["modality 'tok'", "(4,)", "(4, 2)"]),
    ("missing batch dim", {"vec": torch.randn(5)}, None, ["modality 'vec'", "(5,)", "got ()"]),
    ("integer data for a Gaussian", _with(vec=torch.randint(3, (B, 5))), None,
     ["modality 'vec'", "floating-point", "int64"]),
    ("float data for tokens", _with(tok=lambda t: t.float()), None, ["modality 'tok'", "integer tokens", "float32"]),
    ("bool data for a Bernoulli", _with(img=lambda t: t > 0.5), None, ["modality 'img'", "floating-point", "bool"]),
    ("complex data", _with(vec=torch.randn(B, 5, dtype=torch.complex64)), None, ["modality 'vec'", "complex64"]),
    ("Inf in an observed entry", _with(vec=lambda t: _set(t, (4, 0), float("inf"))), ALL,
     ["modality 'vec'", "Inf in observed", "[4]"]),
    ("-Inf in an observed image", _with(img=lambda t: _set(t, (1, 0, 2, 2), -float("inf"))), None,
     ["modality 'img'", "Inf in observed", "[1]"]),
    ("pixel above 1 for a Bernoulli", _with(img=lambda t: _set(t, (0, 0, 1, 1), 1.5)), None,
     ["modality 'img'", "[0, 1]", "1.5"]),
    ("pixel below 0 for a Bernoulli", _with(img=lambda t: _set(t, (3, 0, 0, 0), -0.2)), None,
     ["modality 'img'", "[0, 1]", "-0.2"]),
    ("token above the vocabulary", _with(tok=lambda t: _set(t, (0, 1), 7)), None,
     ["modality 'tok'", "[0, 6]", ", 7]"]),
    ("negative token", _with(tok=lambda t: _set(t, (5, 3), -2)), None, ["modality 'tok'", "[-2,"]),
    ("mask with too few columns", _with(), torch.ones(B, 2, dtype=torch.bool),
     ["availability mask", "[6, 3]", "[6, 2]", "img"]),
    ("mask with too many rows", _with(), torch.ones(B + 1, 3, dtype=torch.bool), ["availability mask", "[7, 3]"]),
    ("mask with an extra dim", _with(), torch.ones(B, 3, 1, dtype=torch.bool), ["availability mask", "[6, 3, 1]"]),
    ("mask holding 2", _with(), torch.full((B, 3), 2), ["availability mask", "0/1", "2"]),
    ("mask holding NaN", _with(), torch.full((B, 3), float("nan")), ["availability mask", "0/1", "nan"]),
    ("mask that is not a tensor", _with(), "all", ["availability mask", "[6, 3]", "str"]),
    ("sample with no observed modality (mask)", _with(), _no_row(ALL, 3), ["no observed modality", "[3]"]),
    ("sample with no observed modality (NaN rows)",
     {"img": _set(mixed_batch(B)["img"], 2, float("nan")), "vec": _set(mixed_batch(B)["vec"], 2, float("nan"))},
     None, ["no observed modality", "[2]"]),
    ("empty batch", mixed_batch(0), None, ["empty batch", "0 samples"]),
    ("no modality at all", {}, None, ["no modality given", "img"]),
    ("not a dict", [mixed_batch(B)["vec"]], None, ["dict", "list"]),
    ("a list instead of a tensor", _with(vec=lambda t: t.tolist()), None, ["modality 'vec'", "torch.Tensor", "list"]),
    ("a numpy array instead of a tensor", _with(vec=lambda t: t.numpy()), None,
     ["modality 'vec'", "torch.Tensor", "ndarray"]),
    ("a scalar tensor", _with(vec=torch.tensor(1.0)), None, ["modality 'vec'", "scalar"]),
]


@pytest.fixture(scope="module")
def model():
    return mixed_model()


def _expect(fn, fragments):
    with pytest.raises(InputError) as info:
        fn()
    msg = str(info.value)
    for f in fragments:
        assert f in msg, f"{f!r} not in message: {msg}"
    count("bad_input_calls")
    return msg


@pytest.mark.parametrize("case,x,avail,fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_batch_at_every_verb(model, case, x, avail, fragments):
    """The same bad batch through forward, impute, embed and posterior: InputError with a precise message."""
    assert isinstance(InputError("x"), ValueError)
    count("bad_input_cases")
    _expect(lambda: model(x, avail), fragments)
    _expect(lambda: model.impute(x, targets=["img", "vec", "tok"], avail=avail), fragments)
    _expect(lambda: model.embed(x, avail), fragments)
    _expect(lambda: model.posterior(x, avail), fragments)


def test_bad_arguments_of_the_verbs(model):
    x = mixed_batch(B)
    cases = [
        (lambda: model.impute({"vec": x["vec"]}, targets=["vec", "smell"]), ["unknown target modality 'smell'"]),
        (lambda: model.impute({"vec": x["vec"]}, n_samples=0), ["n_samples", ">= 1", "0"]),
        (lambda: model.impute({"vec": x["vec"]}, n_samples=2.5), ["n_samples", "2.5"]),
        (lambda: model.sample(-1), ["sample", ">= 0", "-1"]),
    ]
    for fn, fragments in cases:
        count("bad_input_cases")
        _expect(fn, fragments)
    # a single target name is a list of one, not of its letters
    assert set(model.impute({"vec": x["vec"]}, targets="tok")) == {"tok"}


def test_other_float_precisions_are_cast_not_rejected(model):
    """float64 (numpy's default) and float16 data are cast to the weights' dtype instead of failing in a matmul."""
    x = mixed_batch(B)
    torch.manual_seed(0)
    ref = model(x).loss
    torch.manual_seed(0)
    assert torch.equal(model({k: v.double() if v.is_floating_point() else v for k, v in x.items()}).loss, ref)
    out = model.impute({"vec": x["vec"].half()}, targets=["img"])
    assert out["img"].dtype == torch.float32 and bool(torch.isfinite(out["img"]).all())


# ------------------------------------------------------------------------------------------- missing values
PRESETS = ["mopoe", "mvae", "mmvae", "mmvm", "mmvaeplus", "dmvae", "independent"]


def _loss_and_grads(model, x, avail, seed=3):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = model(x, avail)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.loss.detach(), {k: v.detach() for k, v in out.terms.items()}, grads


@pytest.mark.parametrize("preset", PRESETS)
def test_missing_values_are_never_read(preset):
    """Entries marked missing filled with 0, NaN, +-1e30 or Inf: identical loss, terms, gradients and outputs."""
    data = toy(12, num_modalities=3)
    model = toy_model(data, preset)
    x = {k: v.clone() for k, v in data.data.items()}
    g = torch.Generator().manual_seed(5)
    avail = torch.rand(12, 3, generator=g) > 0.4
    avail[~avail.any(1), 1] = True
    fills = [0.0, float("nan"), 1e30, -float("inf")]
    results = []
    state = {k: v.clone() for k, v in model.state_dict().items()}  # buffers too: MM-VAMP's annealing step count
    for fill in fills:
        model.load_state_dict(state)
        xf = {k: torch.where(avail[:, i, None], v, torch.full_like(v, fill)) for i, (k, v) in enumerate(x.items())}
        loss, terms, grads = _loss_and_grads(model, xf, avail)
        torch.manual_seed(4)
        imp = model.impute(xf, targets=list(x), avail=avail)
        emb = model.embed(xf, avail)
        results.append((loss, terms, grads, imp, emb))
    base = results[0]
    assert torch.isfinite(base[0]) and base[2]
    for loss, terms, grads, imp, emb in results[1:]:
        assert torch.equal(loss, base[0])
        assert terms.keys() == base[1].keys() and all(torch.equal(terms[k], base[1][k]) for k in terms)
        assert grads.keys() == base[2].keys() and all(torch.equal(grads[k], base[2][k]) for k in grads)
        assert all(torch.equal(imp[k], base[3][k]) for k in imp)
        assert torch.equal(emb["shared"], base[4]["shared"])


def test_missing_tokens_and_pixels_are_never_read():
    """Out-of-range tokens and pixels at missing entries are fine (they would be errors if observed)."""
    model = mixed_model()
    x = mixed_batch(B)
    avail = ALL.clone()
    avail[0, 0] = avail[1, 2] = False
    bad = {"img": _set(x["img"], 0, 9.0), "vec": x["vec"], "tok": _set(x["tok"], 1, -5)}
    a, b = _loss_and_grads(model, x, avail), _loss_and_grads(model, bad, avail)
    assert torch.equal(a[0], b[0]) and all(torch.equal(a[2][k], b[2][k]) for k in a[2])


def test_training_on_data_with_nan_at_missing_entries():
    """A dataset whose dropped entries are NaN (`drop`) trains with finite losses and finite weights."""
    data = toy(48).drop(0.5, seed=1)
    assert any(bool(v.isnan().any()) for v in data.data.values())
    model = toy_model(data, "mopoe")
    t = Trainer(model, max_epochs=2, batch_size=16, progress=False, device="cpu", max_nonfinite=1)
    history = t.fit(data)
    assert all(np.isfinite(h["train/loss"]) for h in history)
    assert all(bool(torch.isfinite(p).all()) for p in params(model).values())


# ------------------------------------------------------------------------------------------- evaluators
def _dataset(x, avail=None, labels=None):
    n = next(iter(x.values())).shape[0]
    return MultimodalDataset(x, avail, labels if labels is not None else torch.arange(n) % 2)


def test_evaluators_reject_bad_data():
    """The evaluators call the model's verbs, so bad data stops at the same checks with the same messages."""
    from mmvae.evaluation import EvalData, imputation_error, latent_classification, latent_disentanglement

    model = mixed_model()
    good = mixed_batch(8)
    cases = [
        (_dataset({**good, "vec": _set(good["vec"], (1, 1), float("inf"))}), ["modality 'vec'", "Inf in observed"]),
        (_dataset({**good, "vec": torch.randn(8, 4)}), ["modality 'vec'", "(5,)", "(4,)"]),
        (_dataset({**good, "img": good["img"] * 3}), ["modality 'img'", "[0, 1]"]),
        (_dataset({**good, "tok": good["tok"].float()}), ["modality 'tok'", "integer tokens"]),
        (_dataset({k: v for k, v in good.items() if k != "tok"}), ["'tok'"]),
    ]
    for data, fragments in cases:
        count("bad_input_cases")
        _expect(lambda data=data: imputation_error(model, data, n_samples=2), fragments)
        _expect(lambda data=data: latent_classification(model, data, data), fragments)
    count("bad_input_cases")
    bad_mask = EvalData(good, torch.ones(8, 2, dtype=torch.bool), ["img", "vec", "tok"])
    _expect(lambda: imputation_error(model, bad_mask), ["availability mask", "[8, 2]", "img"])
    count("bad_input_cases")
    factors = {"shared": torch.randn(8, 2)}
    bad = MultimodalDataset({**good, "vec": torch.randn(8, 4)}, targets=factors)
    _expect(lambda: latent_disentanglement(model, bad, bad), ["modality 'vec'", "(5,)"])


# ------------------------------------------------------------------------------------------- CLI file readers
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A real checkpoint of a small model trained for one epoch."""
    run = tmp_path_factory.mktemp("run")
    data = toy(32)
    Trainer(toy_model(data), max_epochs=1, batch_size=16, progress=False, device="cpu", out=run).fit(data)
    return run / "last.pt"


def _cli(args, capsys):
    code = cli.main([str(a) for a in args])
    return code, capsys.readouterr().err


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_impute_npz_bad_files(checkpoint, tmp_path, capsys):
    """`mmvae impute` on bad .npz files: exit code 2 and one line naming the array and the problem."""
    rng = np.random.default_rng(0)
    ok = {f"m{i}": rng.standard_normal((5, 6)).astype(np.float32) for i in range(3)}
    obj = np.empty(2, dtype=object)
    obj[:] = [np.zeros(3), "code"]
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 this is not a zip archive")
    np.save(tmp_path / "single.npy", ok["m0"])
    cases = [
        (_npz(tmp_path / "unknown.npz", **ok, audio=ok["m0"]), ["array 'audio'", "not a modality", "m0"]),
        (_npz(tmp_path / "ragged.npz", m0=ok["m0"], m1=ok["m1"][:3]), ["different numbers of rows", "ragged",
                                                                        "'m0': 5", "'m1': 3"]),
        (_npz(tmp_path / "shape.npz", m0=ok["m0"][:, :4]), ["modality 'm0'", "(6,)", "(4,)"]),
        (_npz(tmp_path / "inf.npz", m0=_set(torch.from_numpy(ok["m0"]), (2, 2), float("inf")).numpy()),
         ["modality 'm0'", "Inf", "[2]"]),
        (_npz(tmp_path / "strings.npz", m0=np.array([["a"] * 6] * 5)), ["array 'm0'", "numbers", "<U1"]),
        (_npz(tmp_path / "ints.npz", m0=np.ones((5, 6), dtype=np.int64)), ["modality 'm0'", "floating-point",
                                                                            "int64"]),
        (_npz(tmp_path / "scalar.npz", m0=np.float32(1.0)), ["array 'm0'", "scalar"]),
        (_npz(tmp_path / "empty.npz"), ["no arrays", "m0"]),
        (_npz(tmp_path / "pickled.npz", m0=obj), ["unpickling"]),
        (tmp_path / "junk.npz", ["not a readable .npz"]),
        (tmp_path / "single.npy", ["expected a .npz archive"]),
        (tmp_path / "absent.npz", ["no such file"]),
    ]
    for src, fragments in cases:
        count("bad_input_cases")
        code, err = _cli(["impute", checkpoint, "--input", src, "--out", tmp_path / "out.npz"], capsys)
        assert code == 2, (src, err)
        assert "Traceback" not in err and "error:" in err
        for f in fragments:
            assert f in err, (src, f, err)
        count("bad_input_calls")
    assert not (tmp_path / "out.npz").exists()
    code, err = _cli(["impute", checkpoint, "--input", _npz(tmp_path / "fine.npz", m0=ok["m0"].astype(np.float64)),
                      "--out", tmp_path / "out.npz"], capsys)
    assert code == 0, err
    with np.load(tmp_path / "out.npz") as f:
        assert set(f.files) == {"m0", "m1", "m2"} and np.isfinite(f["m1"]).all()


def test_train_config_files_are_checked(tmp_path, capsys):
    """`mmvae train --config`: unreadable, malformed, unknown or ill-typed options stop before any training."""
    files = {
        "syntax.toml": ("epochs = = 2", ["not valid TOML"]),
        "unknown.toml": ("epochs = 1\nlearning_rate = 0.1", ["unknown option", "learning_rate"]),
        "type.toml": ('epochs = "two"', ["'epochs'", "expects int", "str 'two'"]),
        "range.toml": ("batch_size = 0", ["'batch_size'", ">= 1", "0"]),
        "drop.toml": ("drop_rate = 1.5", ["'drop_rate'", "[0, 1]", "1.5"]),
        "bool.toml": ("amp = 1", ["'amp'", "expects bool"]),
        "syntax.json": ('{"epochs": 1,}', ["not valid JSON"]),
        "list.json": ("[1, 2]", ["expected a table", "list"]),
        "absent.toml": (None, ["cannot read the config file"]),
    }
    for name, (text, fragments) in files.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        count("bad_input_cases")
        code, err = _cli(["train", "--config", tmp_path / name, "--out", tmp_path / "run", "--dataset", "toy"],
                         capsys)
        assert code == 2 and "Traceback" not in err, (name, err)
        for f in fragments:
            assert f in err, (name, f, err)
        count("bad_input_calls")
    count("bad_input_cases")
    code, err = _cli(["train", "--epochs", "-1", "--out", tmp_path / "run"], capsys)
    assert code == 2 and "'epochs'" in err
    assert not (tmp_path / "run").exists()
    (tmp_path / "zero.json").write_text(json.dumps({"epochs": 0, "dataset": "toy"}))  # issue 14: no untrained run
    code, err = _cli(["train", "--config", tmp_path / "zero.json", "--out", tmp_path / "run", "--device", "cpu",
                      "--quiet"], capsys)
    assert code == 2 and "'epochs' must be >= 1" in err and not (tmp_path / "run").exists()
