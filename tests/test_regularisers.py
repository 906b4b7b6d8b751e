"""Regularisers (mmvae/objectives/regularisers.py): closed forms, loop references, masking, and the model wiring.

Closed forms: InfoNCE of B identical orthonormal embeddings at temperature t is log(1 + (B - 1) e^{-1/t}) (the
positive logit is 1/t, the B - 1 negatives 0, in both directions); separation is 0 for centred-orthogonal codes and
Dm c^2 for P = c S with S^T S = B I; geometry is 0 under a rotation + translation (+ scaling, normalised) and 1/24
(normalised) or 2/3 (raw) for the points {0, 1, 2} against {0, 1, 3}.
Seeds fixed per test; exact equalities (torch.equal) where masked-out values change and nothing else does.
"""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from mmvae import InputError, Modality, MultimodalVAE
from mmvae.checkpoint import config_differences
from mmvae.gaussian import Experts
from mmvae.model import Encoded
from mmvae.models import mmvae as mmvae_preset
from mmvae.models import mopoe
from mmvae.networks import MLPDecoder, MLPEncoder
from mmvae.objectives import ELBO, ModelOutput, Objective, make_regularisers
from mmvae.objectives.regularisers import Contrastive, Geometry, Separation, geometry, info_nce
from mmvae.trainer import Trainer

NAMES = ["m0", "m1", "m2"]
H = torch.tensor([[1.0, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]])  # [4, 3]: centred, orthogonal, H^T H = 4 I


def encoded(mu, avail, private=None) -> Encoded:
    """An Encoded of given shared means [M, B, Ds] (log-variances 0) and private means name -> [B, Dm]."""
    private = {n: (p, torch.zeros_like(p)) for n, p in (private or {}).items()}
    return Encoded(Experts(mu, torch.zeros_like(mu), avail), private, avail.any(0).tolist())


def random_avail(B, M, seed):
    g = torch.Generator().manual_seed(seed)
    avail = torch.rand(B, M, generator=g) > 0.35
    avail[0] = avail[1] = True  # every pair has at least two rows
    avail[~avail.any(1), 0] = True  # every row observes something
    return avail


# ------------------------------------------------------------------ contrastive
@pytest.mark.parametrize("t", [0.05, 0.1, 0.5, 2.0])
@pytest.mark.parametrize("B", [1, 3, 6])
def test_info_nce_of_identical_orthonormal_embeddings(t, B):
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    u = q[:B].expand(3, B, 6)  # [M, B, D]: every modality the same B orthonormal rows
    got = info_nce(u, torch.ones(B, 3, dtype=torch.bool), t)
    assert abs(got.item() - math.log1p((B - 1) * math.exp(-1 / t))) < 1e-5
    # through the term: means of any positive length per row normalise to the same unit rows
    scale = torch.rand(3, B, 1, dtype=torch.float64) * 5 + 0.1
    term = Contrastive(1.0, t)(encoded(u * scale, torch.ones(B, 3, dtype=torch.bool)), NAMES)
    assert abs(term.item() - math.log1p((B - 1) * math.exp(-1 / t))) < 1e-5


def test_info_nce_equals_a_loop_over_ordered_pairs_of_cross_entropies():
    torch.manual_seed(1)
    M, B, t = 3, 9, 0.3
    u = F.normalize(torch.randn(M, B, 4, dtype=torch.float64), dim=-1)
    avail = random_avail(B, M, 2)
    want = []
    for m in range(M):  # the reference: CLIP's loss per ordered pair on the rows observing both
        for n in range(M):
            rows = (avail[:, m] & avail[:, n]).nonzero().squeeze(1)
            if m == n or len(rows) == 0:
                continue
            s = u[m, rows] @ u[n, rows].T / t
            target = torch.arange(len(rows))
            want.append(0.5 * (F.cross_entropy(s, target) + F.cross_entropy(s.T, target)))
    torch.testing.assert_close(info_nce(u, avail, t), torch.stack(want).mean(), rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------ separation
def test_separation_of_orthogonal_and_of_identical_codes():
    avail = torch.ones(4, 2, dtype=torch.bool)
    shared = torch.stack([H[:, :2] + torch.tensor([3.0, -2.0]), H[:, 1:] * 2 - 7.0])  # [2, 4, 2]: translated
    orth = {"m0": H[:, 2:] + 5.0, "m1": H[:, :1] * 0.5 + 1.0}  # centred columns orthogonal to the shared ones
    assert Separation()(encoded(shared, avail, orth), NAMES[:2]).abs().item() < 1e-6
    same = {"m0": 3.0 * (shared[0] - 1.0)}  # P = 3 S up to translation: ||S^T P||^2 / B^2 = 3^2 ||4 I_2||^2 / 16
    assert abs(Separation()(encoded(shared, avail, same), NAMES[:2]).item() - 18.0) < 1e-5  # m1: no private
    assert Separation()(encoded(shared, avail), NAMES[:2]).item() == 0.0  # no private latent at all


def test_separation_equals_a_loop_over_modalities_normalised_by_their_observed_rows():
    torch.manual_seed(3)
    M, B = 3, 10
    shared, avail = torch.randn(M, B, 2, dtype=torch.float64), random_avail(B, M, 4)
    private = {"m0": torch.randn(B, 3, dtype=torch.float64), "m2": torch.randn(B, 1, dtype=torch.float64)}
    want = 0.0
    for i, n in enumerate(NAMES):
        if n in private:
            rows = avail[:, i]
            s, p = shared[i, rows], private[n][rows]
            s, p = s - s.mean(0), p - p.mean(0)
            want = want + ((s.T @ p) ** 2).sum() / rows.sum() ** 2
    torch.testing.assert_close(Separation()(encoded(shared, avail, private), NAMES), want, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ geometry
def test_geometry_is_zero_under_rotation_translation_and_scaling():
    torch.manual_seed(5)
    x = torch.randn(8, 4, dtype=torch.float64)
    rot, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    mu = torch.stack([x, x @ rot + torch.randn(4, dtype=torch.float64), 2.5 * x @ rot.T - 1.0])  # [3, 8, 4]
    avail = torch.ones(8, 3, dtype=torch.bool)
    assert geometry(mu[:2], avail[:, :2]).item() < 1e-12
    assert geometry(mu[:2], avail[:, :2], normalise=False).item() < 1e-12  # an isometry: raw distances agree
    assert geometry(mu, avail).item() < 1e-12  # scaled too, once each modality's mean distance is 1
    assert geometry(mu, avail, normalise=False).item() > 0.1  # the scaled one differs in raw distances
    squash = mu.clone()
    squash[1, :, 0] *= 0.2  # not a similarity
    assert geometry(squash, avail).item() > 1e-3


def test_geometry_known_value_on_a_line():
    a = torch.tensor([[0.0], [1.0], [2.0]])  # distances 1, 2, 1 (mean 4/3)
    b = torch.tensor([[0.0], [1.0], [3.0]])  # distances 1, 3, 2 (mean 2)
    mu, avail = torch.stack([a, b]), torch.ones(3, 2, dtype=torch.bool)
    assert abs(geometry(mu, avail).item() - 1 / 24) < 1e-7  # (0.75 - 0.5)^2, 0, (0.75 - 1)^2 over 3 pairs
    assert abs(geometry(mu, avail, normalise=False).item() - 2 / 3) < 1e-7
    assert abs(Geometry(1.0, normalise=False)(encoded(mu, avail), NAMES[:2]).item() - 2 / 3) < 1e-7


def test_geometry_equals_a_loop_over_pairs():
    torch.manual_seed(6)
    M, B = 3, 9
    mu, avail = torch.randn(M, B, 3, dtype=torch.float64), random_avail(B, M, 7)
    want = []
    for m in range(M):
        for n in range(m + 1, M):
            rows = (avail[:, m] & avail[:, n]).nonzero().squeeze(1)
            i, j = torch.triu_indices(len(rows), len(rows), 1)
            da = (mu[m, rows[i]] - mu[m, rows[j]]).norm(dim=-1)
            db = (mu[n, rows[i]] - mu[n, rows[j]]).norm(dim=-1)
            want.append(((da / da.mean() - db / db.mean()) ** 2).mean())
    torch.testing.assert_close(geometry(mu, avail), torch.stack(want).mean(), rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ masking
TERMS = [Separation(), Contrastive(1.0, 0.2), Geometry()]


@pytest.mark.parametrize("term", TERMS, ids=lambda t: t.name)
def test_unobserved_rows_do_not_enter(term):
    torch.manual_seed(8)
    M, B = 3, 12
    mu, avail = torch.randn(M, B, 4), random_avail(B, M, 9)
    private = {"m0": torch.randn(B, 2), "m1": torch.randn(B, 3)}
    before = term(encoded(mu, avail, private), NAMES)
    hidden = ~avail.T  # [M, B]
    mu2 = torch.where(hidden[..., None], 100 * torch.randn(M, B, 4), mu)
    private2 = {n: torch.where(hidden[i, :, None], -50 * torch.randn_like(p), p)
                for i, (n, p) in enumerate(private.items())}
    after = term(encoded(mu2, avail, private2), NAMES)
    assert before.item() > 1e-4 and torch.equal(before, after)
    changed = mu.clone()
    changed[:, avail[:, 0] & avail[:, 1] & avail[:, 2]] += torch.randn(4)[None] * torch.arange(1, 5)  # observed
    private3 = {n: p * 3.0 + torch.randn_like(p) for n, p in private.items()}
    assert not torch.equal(term(encoded(changed, avail, private3), NAMES), before)  # observed rows do enter


def test_large_batch_terms_are_finite_with_finite_gradients():
    torch.manual_seed(10)
    M, B = 5, 1024
    mu = torch.randn(M, B, 16, requires_grad=True)
    avail = torch.rand(B, M) > 0.3
    private = {"m0": torch.randn(B, 4, requires_grad=True)}
    enc = encoded(mu, avail, private)
    total = sum(t(enc, [f"m{i}" for i in range(M)]) for t in TERMS)
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(mu.grad).all() and torch.isfinite(private["m0"].grad).all()
    assert mu.grad.abs().sum() > 0 and (mu.grad[~avail.T] == 0).all()  # only observed rows get a gradient


# ------------------------------------------------------------------ the model
SPEC = {"separation": 1.0, "contrastive": {"weight": 0.1, "temperature": 0.1}, "geometry": 0.5}


def modalities(shared_dim=3, private_dim=2):
    return {n: Modality(MLPEncoder((6,), 2 * (shared_dim + private_dim), hidden=(16,)),
                        MLPDecoder(shared_dim + private_dim, (6,), hidden=(16,)), "gaussian") for n in NAMES}


def build(regularisers=None, seed=0, **kw):
    torch.manual_seed(seed)
    return MultimodalVAE(modalities(), 3, private_dim=2, regularisers=regularisers, **kw)


def batch(n=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = {m: torch.randn(n, 6, generator=g) for m in NAMES}
    return x, random_avail(n, 3, seed)


def test_weights_add_to_the_loss_from_one_encoding(monkeypatch):
    x, avail = batch()
    plain, reg = build(), build(SPEC)
    calls = []
    encode = reg.encode
    monkeypatch.setattr(reg, "encode", lambda *a: calls.append(1) or encode(*a))
    torch.manual_seed(3)
    base = plain(x, avail)
    torch.manual_seed(3)
    out = reg(x, avail)
    assert len(calls) == 1  # the objective's encoding is shared
    assert {"reg/separation", "reg/contrastive", "reg/geometry"} <= set(out.terms)
    assert all(torch.equal(out.terms[k], v) for k, v in base.terms.items())
    want = base.loss + out.terms["reg/separation"] + 0.1 * out.terms["reg/contrastive"] \
        + 0.5 * out.terms["reg/geometry"]
    torch.testing.assert_close(out.loss, want)
    assert all(out.terms[f"reg/{k}"] > 0 for k in SPEC)


def test_zero_weight_gives_exactly_the_plain_loss():
    x, avail = batch()
    plain, off = build(), build({"separation": 0.0, "contrastive": {"weight": 0.0, "temperature": 0.5}})
    torch.manual_seed(4)
    base = plain(x, avail)
    torch.manual_seed(4)
    out = off(x, avail)
    assert torch.equal(out.loss, base.loss) and out.terms.keys() == base.terms.keys()
    part = build({"geometry": 0.5, "separation": 0.0})(x, avail)
    assert "reg/geometry" in part.terms and "reg/separation" not in part.terms


def test_an_objective_without_encodings_gets_them_encoded():
    class Plain(Objective):  # a user objective that returns only loss and terms
        def __call__(self, model, x, avail):
            out = ELBO()(model, x, avail)
            return ModelOutput(out.loss, out.terms)

    x, avail = batch()
    shared, own = build(SPEC), build(SPEC, objective=Plain())
    a, b = shared(x, avail), own(x, avail)
    for k in ("reg/separation", "reg/contrastive", "reg/geometry"):
        torch.testing.assert_close(a.terms[k], b.terms[k])  # encoders are deterministic


def test_a_regularised_model_trains_and_logs_its_terms():
    x, avail = batch(n=48, seed=2)
    rows = [({m: x[m][i] for m in NAMES}, avail[i], torch.tensor(0)) for i in range(48)]
    model = build(SPEC)
    t = Trainer(model, max_epochs=3, batch_size=16, lr=1e-2, progress=False, device="cpu")
    t.fit(rows, rows)
    h = t.history
    assert all(math.isfinite(e["train/loss"]) for e in h)
    assert {f"{s}/reg/{k}" for s in ("train", "val") for k in SPEC} <= set(h[0])
    assert h[-1]["train/reg/separation"] != h[0]["train/reg/separation"]  # the encoders moved


@pytest.mark.parametrize("preset", ["mopoe", "mmvae"])
def test_preset_override(preset):
    torch.manual_seed(0)
    make = mopoe if preset == "mopoe" else lambda m, **kw: mmvae_preset(m, K=2, **kw)
    model = make(modalities(3, 0), shared_dim=3, regularisers={"contrastive": 0.2, "geometry": 1.0})
    assert model.config()["regularisers"] == {"contrastive": {"weight": 0.2, "temperature": 0.1},
                                              "geometry": {"weight": 1.0, "normalise": True}}
    x, avail = batch()
    out = model(x, avail)
    out.loss.backward()
    assert torch.isfinite(out.loss) and {"reg/contrastive", "reg/geometry"} <= set(out.terms)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_config_round_trip_and_old_configs():
    model = build(SPEC)
    cfg = json.loads(json.dumps(model.config()))
    assert cfg["regularisers"] == {"separation": {"weight": 1.0},
                                   "contrastive": {"weight": 0.1, "temperature": 0.1},
                                   "geometry": {"weight": 0.5, "normalise": True}}
    again = MultimodalVAE.from_config(cfg)
    again.load_state_dict(model.state_dict())
    assert again.config() == model.config()
    x, avail = batch()
    torch.manual_seed(5)
    l1 = model(x, avail)
    torch.manual_seed(5)
    l2 = again(x, avail)
    assert torch.equal(l1.loss, l2.loss) and l1.terms.keys() == l2.terms.keys()
    old = {k: v for k, v in cfg.items() if k != "regularisers"}  # a checkpoint written before regularisers
    loaded = MultimodalVAE.from_config(old)
    assert loaded.config()["regularisers"] == {} and not loaded.regularisers
    assert not any(k.startswith("reg/") for k in loaded(x, avail).terms)
    assert config_differences(old, loaded.config()) == []  # resuming an old checkpoint: no difference reported


@pytest.mark.parametrize("spec, key", [
    ({"sparsity": 1.0}, "sparsity"),
    ({"separation": -1.0}, "separation"),
    ({"geometry": float("nan")}, "geometry"),
    ({"contrastive": {"weight": 1.0, "temperature": 0.0}}, "temperature"),
    ({"contrastive": {"weight": 1.0, "temperature": -0.1}}, "temperature"),
    ({"geometry": {"weight": 1.0, "scale": 2}}, "scale"),
    ({"separation": "big"}, "separation"),
    (["separation"], "regularisers"),
])
def test_bad_specs_name_the_key(spec, key):
    with pytest.raises(InputError, match=key):
        make_regularisers(spec)
    with pytest.raises(InputError, match=key):
        build(spec)


def test_the_cli_sets_the_aggregator_and_the_regularisers(tmp_path, capsys):
    import json

    from mmvae import cli

    code = cli.main(["train", "--dataset", "toy", "--n-train", "64", "--n-test", "32", "--epochs", "1",
                     "--aggregator", "gated", "--regularisers", "contrastive=0.1,separation=1", "--private-dim", "2",
                     "--out", str(tmp_path / "run"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["model"]["aggregator"]["name"] == "gated"
    assert cfg["model"]["regularisers"]["contrastive"]["weight"] == 0.1
    assert cfg["model"]["regularisers"]["separation"]["weight"] == 1.0
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("train/reg/contrastive" in h for h in history)
    code = cli.main(["train", "--dataset", "toy", "--n-train", "64", "--epochs", "1", "--regularisers", "contrastive",
                     "--out", str(tmp_path / "bad"), "--quiet"])
    assert code == 2 and "NAME=WEIGHT" in capsys.readouterr().err
