"""Regularisers: weighted terms of a batch's posterior means, added to any objective's loss.

    loss + sum_k weight_k R_k,  logged as reg/<name>  (only terms with weight > 0 are computed)

Each R_k uses the experts' and private posterior means of the observed modalities only (`avail [B, M]`):
- separation (Bousmalis et al., NeurIPS 2016, the Domain Separation Networks "difference loss"):
  sum_m ||S_m^T P_m||_F^2 / B_m^2, S_m [B_m, Ds] and P_m [B_m, Dm] the centred shared and private means of the B_m
  rows observing m: the squared Frobenius norm of their empirical cross-covariance (so independent of batch size).
- contrastive (InfoNCE, Oord, Li & Vinyals 2018; symmetric as in CLIP, Radford et al., ICML 2021): over the rows
  observing both m and m', logits <u_m^i, u_m'^j> / temperature of the L2-normalised shared means; mean over pairs.
- geometry (Jiang et al., CVPR 2023): mean_{i<j} (d_m(i, j) - d_m'(i, j))^2 over the rows observing both, d the
  Euclidean distance of shared means divided by its mean over those rows (normalise=True); mean over pairs.

Both pair terms are symmetric in (m, m'), so their mean over ordered pairs is the mean over the M(M-1)/2 unordered
pairs m < m', which is what is computed: one batched [P, B, B] tensor, half of a masked [M, M, B, B].
A pair with no row observing both (or, for geometry, fewer than two) leaves the mean.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError
from .base import ModelOutput

EPS = 1e-12  # floor of a mean distance (all codes of a modality equal)


# ---------------------------------------------------------------- the maths, data-free
def pairs(M: int, device=None) -> tuple[Tensor, Tensor]:
    """The unordered modality pairs m < m' as two index vectors.  # [P], [P], P = M(M-1)/2"""
    a, b = torch.triu_indices(M, M, 1, device=device)
    return a, b


def pair_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean over pairs of each pair's mean over its masked entries; pairs with none are left out.  # [P, ...] -> []"""
    v, m = values.flatten(1), mask.flatten(1)  # [P, N]
    n = m.sum(1)  # [P]
    per_pair = torch.where(m, v, 0.0).sum(1) / n.clamp_min(1)  # [P]
    used = n > 0
    return (per_pair * used).sum() / used.sum().clamp_min(1)


def centred(x: Tensor, w: Tensor) -> Tensor:
    """x minus its mean over the rows with w = 1, and 0 on the other rows.  x [M, B, D], w [M, B] -> [M, B, D]"""
    n = w.sum(1).clamp_min(1)[:, None, None]  # [M, 1, 1]
    mean = (w[..., None] * x).sum(1, keepdim=True) / n  # [M, 1, D]
    return (x - mean) * w[..., None]


def separation(shared: Tensor, private: Tensor, avail: Tensor) -> Tensor:
    """sum_m ||S_m^T P_m||_F^2 / B_m^2 of the centred means of the B_m rows observing m.

    shared [M, B, Ds], private [M, B, Dp] (zero columns where m's private latent is smaller or absent), avail [B, M].
    """
    w = avail.T.to(shared.dtype)  # [M, B]
    cross = torch.einsum("mbd,mbe->mde", centred(shared, w), centred(private, w))  # [M, Ds, Dp]
    return (cross.pow(2).sum((1, 2)) / w.sum(1).clamp_min(1).pow(2)).sum()


def info_nce(u: Tensor, avail: Tensor, temperature: float) -> Tensor:
    """Symmetric InfoNCE, mean over pairs m < m' and rows i observing both of
    1/2 [logsumexp_j s_ij + logsumexp_j s_ji] - s_ii,  s_ij = <u_m^i, u_m'^j> / temperature, j over those rows.

    u [M, B, D] (unit rows), avail [B, M] -> []
    """
    a, b = pairs(u.shape[0], u.device)  # [P]
    both = (avail[:, a] & avail[:, b]).T  # [P, B]
    s = torch.einsum("pid,pjd->pij", u[a], u[b]) / temperature  # [P, B, B]
    low = torch.finfo(s.dtype).min  # finite: a pair with no candidates stays finite (and is left out)
    to_m2 = s.masked_fill(~both[:, None, :], low).logsumexp(2)  # [P, B]: row i of m against every j of m'
    to_m1 = s.masked_fill(~both[:, :, None], low).logsumexp(1)  # [P, B]: column i of m' against every j of m
    nce = 0.5 * (to_m2 + to_m1) - s.diagonal(dim1=1, dim2=2)  # [P, B]
    return pair_mean(nce, both)


def distances(mu: Tensor) -> Tensor:
    """Euclidean distances within each modality's batch (exact, not via Gram matrices).  [M, B, D] -> [M, B, B]"""
    return torch.cdist(mu, mu, compute_mode="donot_use_mm_for_euclid_dist")


def geometry(mu: Tensor, avail: Tensor, normalise: bool = True) -> Tensor:
    """Mean over pairs m < m' of mean_{i<j} (d_m(i, j) - d_m'(i, j))^2 over rows i, j observing both; with
    normalise, each d divided by its mean over those (i, j).  mu [M, B, D], avail [B, M] -> []"""
    B = mu.shape[1]
    a, b = pairs(mu.shape[0], mu.device)  # [P]
    d = distances(mu)  # [M, B, B]
    both = (avail[:, a] & avail[:, b]).T  # [P, B]
    upper = torch.ones(B, B, dtype=torch.bool, device=mu.device).triu(1)  # [B, B]: i < j
    mask = both[:, :, None] & both[:, None, :] & upper  # [P, B, B]
    da, db = d[a], d[b]  # [P, B, B]
    if normalise:
        n = mask.sum((1, 2)).clamp_min(1)  # [P]
        da = da / (torch.where(mask, da, 0.0).sum((1, 2)) / n).clamp_min(EPS)[:, None, None]
        db = db / (torch.where(mask, db, 0.0).sum((1, 2)) / n).clamp_min(EPS)[:, None, None]
    return pair_mean((da - db).pow(2), mask)


# ---------------------------------------------------------------- the terms
class Regulariser:
    """One term R(enc) of a batch's encodings, weighed by `weight` (0 = off); `config()` round-trips."""

    name = "base"

    def __init__(self, weight: float = 1.0):
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                or weight < 0:
            raise InputError(f"regularisers[{self.name!r}]: the weight must be a finite number >= 0, got {weight!r}")
        self.weight = float(weight)

    def __call__(self, enc, names: list[str]) -> Tensor:
        """The term's value on one batch (a scalar)."""
        raise NotImplementedError

    def config(self) -> dict:
        """The spec that rebuilds this term."""
        return {"weight": self.weight}


class Separation(Regulariser):
    """sum_m ||S_m^T P_m||_F^2 / B_m^2 between each modality's shared and private means (0 without private)."""

    name = "separation"

    def __call__(self, enc, names):
        """The separation of the experts' and private means (private zero-padded to one width)."""
        mu = enc.experts.mu  # [M, B, Ds]
        if not enc.private:
            return mu.new_zeros(())
        width = max(p.shape[-1] for p, _ in enc.private.values())
        zeros = mu.new_zeros(mu.shape[1], width)
        private = torch.stack([F.pad(enc.private[n][0], (0, width - enc.private[n][0].shape[-1]))
                               if n in enc.private else zeros for n in names])  # [M, B, Dp]
        return separation(mu, private, enc.experts.avail)


class Contrastive(Regulariser):
    """Symmetric InfoNCE between the normalised shared means of every pair of observed modalities."""

    name = "contrastive"

    def __init__(self, weight: float = 1.0, temperature: float = 0.1):
        super().__init__(weight)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
                or not math.isfinite(temperature) or temperature <= 0:
            raise InputError(f"regularisers['contrastive']: the temperature must be a finite number > 0, got "
                             f"{temperature!r}")
        self.temperature = float(temperature)

    def __call__(self, enc, names):
        """InfoNCE of the unit-normalised experts' means."""
        u = F.normalize(enc.experts.mu, dim=-1)  # [M, B, Ds]
        return info_nce(u, enc.experts.avail, self.temperature)

    def config(self):
        """The spec that rebuilds this term."""
        return {**super().config(), "temperature": self.temperature}


class Geometry(Regulariser):
    """Mean squared difference of the (mean-normalised) pairwise distances of the shared means across modalities."""

    name = "geometry"

    def __init__(self, weight: float = 1.0, normalise: bool = True):
        super().__init__(weight)
        if not isinstance(normalise, bool):
            raise InputError(f"regularisers['geometry']: normalise must be true or false, got {normalise!r}")
        self.normalise = normalise

    def __call__(self, enc, names):
        """Geometric consistency of the experts' means."""
        return geometry(enc.experts.mu, enc.experts.avail, self.normalise)

    def config(self):
        """The spec that rebuilds this term."""
        return {**super().config(), "normalise": self.normalise}


REGULARISERS: dict[str, type] = {"separation": Separation, "contrastive": Contrastive, "geometry": Geometry}


class Regularisers:
    """The terms a model adds to its objective's loss: loss + sum_k weight_k R_k, each logged as reg/<name>."""

    def __init__(self, terms: dict[str, Regulariser] | None = None):
        self.terms = dict(terms or {})

    def __bool__(self) -> bool:
        return any(r.weight > 0 for r in self.terms.values())

    def __call__(self, out: ModelOutput, model, x: dict[str, Tensor], avail: Tensor) -> ModelOutput:
        """`out` with the active terms added to its loss and terms, computed from the encodings the objective shared
        on `out.encoded` (encoded here only for an objective that shares none); `out` itself when none is active."""
        if not self:
            return out
        enc = getattr(out, "encoded", None)
        enc = model.encode(x, avail) if enc is None else enc
        names = model.names
        reg = {k: r(enc, names) for k, r in self.terms.items() if r.weight > 0}  # name -> []
        loss = out.loss + sum(self.terms[k].weight * v for k, v in reg.items())
        return ModelOutput(loss, {**out.terms, **{f"reg/{k}": v for k, v in reg.items()}}, enc)

    def config(self) -> dict:
        """The spec that rebuilds these terms (`make_regularisers(config())`)."""
        return {k: r.config() for k, r in self.terms.items()}


def make_regularisers(spec) -> Regularisers:
    """Regularisers from None, an instance, or a dict name -> weight or name -> {"weight": w, option: value}."""
    if spec is None:
        return Regularisers()
    if isinstance(spec, Regularisers):
        return spec
    if not isinstance(spec, dict):
        raise InputError(f"regularisers must be a dict name -> weight (names: {sorted(REGULARISERS)}), got {spec!r}")
    terms = {}
    for name, value in spec.items():
        if name not in REGULARISERS:
            raise InputError(f"regularisers: unknown term {name!r}; choose from {sorted(REGULARISERS)}")
        if isinstance(value, REGULARISERS[name]):
            terms[name] = value
            continue
        options = dict(value) if isinstance(value, dict) else {"weight": value}
        try:
            terms[name] = REGULARISERS[name](**options)
        except TypeError as e:  # an option the term does not take
            raise InputError(f"regularisers[{name!r}]: {e}") from None
    return Regularisers(terms)
