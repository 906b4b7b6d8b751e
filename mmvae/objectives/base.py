"""The base of every subset objective: the prologue they all share, and the typed values it hands on.

Shapes: L samples of z per subset, K subsets (K' of them drawn), B batch, M modalities, D latent size.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

from ..errors import InputError
from ..gaussian import SubsetPosterior, kl_std_normal, rsample, sample_index


@dataclass
class ModelOutput:
    """What a model's forward returns: the scalar loss to minimise and named scalar terms for logging.

    `encoded`: the batch's encodings the loss came from (the model's `Encoded`), so that terms computed from them
    (regularisers) need no second encoding; None from an objective that does not share them.
    """

    loss: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)
    encoded: object = field(default=None, repr=False, compare=False)


@dataclass
class PrivateDraw:
    """The private codes w_m one modality was decoded with."""

    rows: Tensor  # [K''] which drawn subsets decoded m
    posterior: Tensor  # [K'', B] bool: w_m came from q(w_m | x_m) (else from the private prior)
    w: Tensor  # [L, K'', B, Dm]


@dataclass
class Reconstruction:
    """lambda_m log p(x_m | z, w_m) of every sample, drawn subset and modality, and the private codes used."""

    log_lik: Tensor  # [L, K', B, M]; 0 where x_m is missing or not reconstructed
    private: dict[str, PrivateDraw]


class Settings(NamedTuple):
    """How a subset objective weights and decodes subsets (see `SubsetObjective`)."""

    combine: str  # "mixture" | "sum"
    reconstruct: str  # "all" | "members"
    stratify: bool


@dataclass
class Draws:
    """Everything the prologue computes for one batch; estimators only weight it."""

    settings: Settings
    enc: object  # the model's Encoded: experts [M, B, D] and private (mu, logvar) [B, Dm]
    post: SubsetPosterior  # [K, B, D]: every subset
    drawn: SubsetPosterior  # [K', B, D]: the subsets decoded
    pi: Tensor  # [K', B]: weight of each drawn subset (0 where invalid)
    z: Tensor  # [L, K', B, D]
    rec: Reconstruction


def draw_subsets(post: SubsetPosterior, stratify: bool) -> SubsetPosterior:
    """Either every subset (stratified), or one subset k ~ weight drawn per sample, as a [1, B, ...] posterior."""
    if stratify:
        return post
    return post.select(sample_index(post.weight))  # [1, B]


def private_kl(enc, names: list[str]) -> dict[str, Tensor]:
    """KL(q(w_m | x_m) || N(0, I)) per modality with a private latent, 0 where x_m is missing.  # name -> [B]"""
    avail = enc.experts.avail  # [B, M]
    return {n: torch.where(avail[:, names.index(n)], kl_std_normal(mu, lv), 0.0) for n, (mu, lv) in enc.private.items()}


class Objective:
    """Maps (model, x, avail) to a ModelOutput; `config()` round-trips through JSON. beta weighs every KL term."""

    name = "base"

    def __init__(self, beta: float = 1.0):
        self.beta = float(beta)

    def __call__(self, model, x: dict[str, Tensor], avail: Tensor) -> ModelOutput:
        """The loss of one batch and its named terms."""
        raise NotImplementedError

    def config(self) -> dict:
        """The spec that rebuilds this objective (`make_objective(config())`)."""
        return {"name": self.name, "beta": self.beta}


class SubsetObjective(Objective):
    """An objective over the aggregator's subset posteriors q_k(z | x_S), each decoded with L samples.

    combine="mixture": pi_k uniform over the valid subsets (q is the mixture sum_k pi_k q_k); "sum": pi_k = 1 for
    every valid subset (a sum of subset objectives). reconstruct="all" decodes every observed modality from each
    subset's z; "members" only the subset's own modalities. stratify=True decodes every subset; False draws one
    subset per sample (forced True under "sum"). None takes the aggregator's declared default.

    The base owns the prologue (`draw`): encode, aggregate, draw subsets, rsample z, score every modality.
    A subclass implements `loss(draws, model)` (model: its `prior` and `names` only).
    """

    n_samples = 1  # L

    def __init__(self, beta: float = 1.0, combine: str | None = None, reconstruct: str | None = None,
                 stratify: bool | None = None):
        super().__init__(beta)
        if combine not in (None, "mixture", "sum") or reconstruct not in (None, "all", "members"):
            raise InputError(f"{self.name} combine must be 'mixture'/'sum' and reconstruct 'all'/'members'; got "
                             f"{combine!r}, {reconstruct!r}")
        self.combine, self.reconstruct, self.stratify = combine, reconstruct, stratify

    def settings(self, aggregator) -> Settings:
        """The settings in force: this objective's, else the aggregator's declared defaults."""
        combine = self.combine or aggregator.combine
        reconstruct = self.reconstruct or aggregator.reconstruct
        stratify = aggregator.stratify if self.stratify is None else self.stratify
        return Settings(combine, reconstruct, bool(stratify) or combine == "sum")

    def draw(self, model, x: dict[str, Tensor], avail: Tensor) -> Draws:
        """The prologue: q(z | x_S) for every subset, the subsets decoded, L samples of z and their scores."""
        s = self.settings(model.aggregator)
        enc = model.encode(x, avail)
        post = model.aggregator(enc.experts)  # [K, B, D]
        drawn = draw_subsets(post, s.stratify)  # [K', B, D]
        pi = drawn.weight if s.combine == "mixture" else drawn.valid.to(drawn.mu.dtype)  # [K', B]
        z = rsample(drawn.mu, drawn.logvar, self.n_samples)  # [L, K', B, D]
        rec = model.log_likelihoods(x, enc, z, drawn, members_only=s.reconstruct == "members")
        return Draws(s, enc, post, drawn, pi, z, rec)

    def loss(self, draws: Draws, model) -> ModelOutput:
        """The loss and terms from the prologue's draws (the estimator's one job)."""
        raise NotImplementedError

    def __call__(self, model, x, avail):
        """The loss of one batch and its named terms."""
        d = self.draw(model, x, avail)
        out = self.loss(d, model)
        out.encoded = d.enc  # shared with the model's regularisers: no second encoding
        return out

    def config(self) -> dict:
        """The spec that rebuilds this objective (`make_objective(config())`)."""
        return {**super().config(), "combine": self.combine, "reconstruct": self.reconstruct,
                "stratify": self.stratify}
