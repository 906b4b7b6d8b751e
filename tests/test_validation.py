"""Bad inputs raise mmvae.InputError with a message that names the modality and the problem (mmvae/validation.py).

Each case goes through a public verb (forward, impute, embed) of one small model built under a fixed seed.
"""
import pytest
import torch

from mmvae import InputError, Modality, MultimodalVAE
from mmvae.networks import MLPDecoder, MLPEncoder
from mmvae.validation import check_inputs

B = 4


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    mods = {
        "img": Modality(MLPEncoder((2, 3), 6, hidden=(8,)), MLPDecoder(3, (2, 3), hidden=(8,)), "bernoulli"),
        "vec": Modality(MLPEncoder((5,), 6, hidden=(8,)), MLPDecoder(3, (5,), hidden=(8,)), "gaussian"),
        "tok": Modality(MLPEncoder((4,), 6, hidden=(8,), num_classes=9, embed_dim=2),
                        MLPDecoder(3, (4,), hidden=(8,), num_classes=9), {"name": "categorical", "num_classes": 9}),
    }
    return MultimodalVAE(mods, 3, aggregator="mopoe")


def good(n=B):
    g = torch.Generator().manual_seed(1)
    return {"img": (torch.rand(n, 2, 3, generator=g) > 0.5).float(), "vec": torch.randn(n, 5, generator=g),
            "tok": torch.randint(9, (n, 4), generator=g)}


def test_good_batch_passes(vae):
    x = good()
    clean, avail = check_inputs(vae.modalities, vae.names, x)
    assert avail.dtype == torch.bool and avail.shape == (B, 3) and bool(avail.all())
    assert all(torch.equal(clean[n], x[n]) for n in x)
    assert bool(torch.isfinite(vae(x).loss))


def _raises(fn, *patterns):
    with pytest.raises(InputError) as info:
        fn()
    msg = str(info.value)
    for p in patterns:
        assert p in msg, (p, msg)
    return msg


def test_unknown_modality(vae):
    x = good()
    x["audio"] = torch.randn(B, 3)
    _raises(lambda: vae(x), "unknown modality 'audio'", "img")


def test_observed_in_mask_but_absent(vae):
    x = good()
    del x["vec"]
    avail = torch.ones(B, 3, dtype=torch.bool)
    _raises(lambda: vae(x, avail), "'vec'", "marked observed")
    avail[:, 1] = False  # consistent mask: fine
    assert bool(torch.isfinite(vae(x, avail).loss))


def test_batch_sizes_disagree(vae):
    x = good()
    x["vec"] = x["vec"][:3]
    _raises(lambda: vae(x), "batch sizes disagree", "'vec': 3", "'img': 4")


@pytest.mark.parametrize("name,bad", [("vec", torch.randn(B, 6)), ("img", torch.rand(B, 3, 2)),
                                      ("tok", torch.zeros(B, 4, 1, dtype=torch.long))])
def test_wrong_trailing_shape(vae, name, bad):
    x = good()
    x[name] = bad
    _raises(lambda: vae(x), f"modality {name!r}", "per-sample shape", str(tuple(bad.shape[1:])))


def test_wrong_dtype(vae):
    x = good()
    x["vec"] = torch.randint(3, (B, 5))
    _raises(lambda: vae(x), "modality 'vec'", "floating-point", "int64")
    x = good()
    x["tok"] = x["tok"].float()
    _raises(lambda: vae(x), "modality 'tok'", "integer tokens", "float32")
    x = good()
    x["img"] = x["img"].bool()
    _raises(lambda: vae(x), "modality 'img'", "floating-point", "bool")


def test_tokens_out_of_range(vae):
    x = good()
    x["tok"][2, 1] = 9
    _raises(lambda: vae(x), "modality 'tok'", "[0, 8]", ", 9]")
    x["tok"][2, 1] = -2  # -1 marks a gap, anything below is an error
    _raises(lambda: vae(x), "modality 'tok'", "[-2,")


@pytest.mark.parametrize("value", [float("inf"), -float("inf")])
def test_inf_in_observed_entry(vae, value):
    x = good()
    x["vec"][2, 3] = value
    _raises(lambda: vae(x), "modality 'vec'", "Inf in observed", "[2]")
    _raises(lambda: vae(x, torch.ones(B, 3, dtype=torch.bool)), "modality 'vec'", "Inf in observed")
    # the same value in a sample marked missing is never read
    avail = torch.ones(B, 3, dtype=torch.bool)
    avail[2, 1] = False
    assert bool(torch.isfinite(vae(x, avail).loss))


def test_all_nan_row_means_missing(vae):
    x = good()
    x["vec"][1] = float("nan")
    _, avail = check_inputs(vae.modalities, vae.names, x)
    assert avail[:, 1].tolist() == [True, False, True, True]
    assert bool(torch.isfinite(vae(x).loss))


@pytest.mark.parametrize("value", [1.5, -0.25])
def test_bernoulli_outside_unit_interval(vae, value):
    x = good()
    x["img"][0, 1, 2] = value
    _raises(lambda: vae(x), "modality 'img'", "[0, 1]", f"{value:.3g}")


def test_avail_wrong_shape(vae):
    x = good()
    _raises(lambda: vae(x, torch.ones(B, 2, dtype=torch.bool)), "availability mask", "[4, 3]", "[4, 2]")
    _raises(lambda: vae(x, torch.ones(B + 1, 3, dtype=torch.bool)), "availability mask", "[5, 3]")
    _raises(lambda: vae(x, torch.ones(B, 3, 1, dtype=torch.bool)), "availability mask")


def test_sample_with_no_observed_modality(vae):
    x = good()
    avail = torch.ones(B, 3, dtype=torch.bool)
    avail[2] = False
    _raises(lambda: vae(x, avail), "no observed modality", "[2]")
    x["img"][3] = float("nan")  # without a mask: all-NaN rows everywhere for sample 3
    x["vec"][3] = float("nan")
    _raises(lambda: vae({"img": x["img"], "vec": x["vec"]}), "no observed modality", "[3]")


def test_empty_batch(vae):
    _raises(lambda: vae(good(0)), "empty batch")
    _raises(lambda: vae({}), "no modality given")


def test_not_a_dict_or_not_a_tensor(vae):
    _raises(lambda: vae([good()["vec"]]), "dict")
    _raises(lambda: vae({"vec": good()["vec"].tolist()}), "modality 'vec'", "torch.Tensor")
    _raises(lambda: vae({"vec": torch.tensor(1.0)}), "modality 'vec'", "scalar")


def test_impute_and_embed_check_their_inputs(vae):
    x = good()
    _raises(lambda: vae.impute({"vec": x["vec"]}, targets=["vec", "smell"]), "unknown target modality 'smell'")
    _raises(lambda: vae.impute({"vec": x["vec"][:, :4]}), "modality 'vec'", "per-sample shape")
    _raises(lambda: vae.embed({"img": x["img"] * 3}), "modality 'img'", "[0, 1]")
    _raises(lambda: vae.embed({"nose": x["vec"]}), "unknown modality 'nose'")


def test_bad_names_in_constructors():
    _raises(lambda: Modality(likelihood="zipf", shape=(3,)), "unknown likelihood 'zipf'", "gaussian")
    mods = {"a": Modality(shape=(3,))}
    _raises(lambda: MultimodalVAE(mods, 2, aggregator="product"), "unknown aggregator 'product'", "mopoe")
    _raises(lambda: MultimodalVAE({"a": Modality(shape=(3,))}, 2, prior="uniform"), "unknown prior 'uniform'")
