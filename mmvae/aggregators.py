"""Aggregators: how unimodal posteriors q(z | x_m) combine into subset posteriors q(z | x_S).

PoE, MoE, MoPoE, AVG and "none" differ only in their subset mask `[K, M]` and their fusion rule; every subset of
every sample is built at once by one einsum over `[K, B, M] x [M, B, D]`. Per-sample availability `[B, M]`
restricts each subset to what was observed. The learned fusions ("gated", "lowrank") are `nn.Module`s over the
same masks; their networks live in `fusion.py`.
"""
from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn

from .errors import InputError
from .fusion import GateNet, LowRankFusion, gate_weights, gated_poe
from .gaussian import Experts, SubsetPosterior, poe_kl_std_normal
from .registry import from_spec


def all_subsets(M: int) -> Tensor:
    """Every non-empty subset of M modalities, ordered by size then lexicographically.  # [2^M - 1, M] bool"""
    rows = [c for k in range(1, M + 1) for c in itertools.combinations(range(M), k)]
    mask = torch.zeros(len(rows), M, dtype=torch.bool)
    for i, c in enumerate(rows):
        mask[i, list(c)] = True
    return mask


SUBSET_KINDS = ("joint", "joint+unimodal", "all")


def subset_mask(kind: str, M: int) -> Tensor:
    """The joint subset; with it each single modality ("joint+unimodal"), or every subset ("all").  # [K, M] bool"""
    joint = torch.ones(1, M, dtype=torch.bool)
    if kind == "joint":
        return joint
    if kind == "joint+unimodal":
        return torch.cat([joint, torch.eye(M, dtype=torch.bool)]) if M > 1 else joint
    return all_subsets(M)


def subset_names(subsets: Tensor, names: list[str]) -> list[tuple[str, ...]]:
    """Readable subsets: [K, M] mask -> tuples of modality names."""
    return [tuple(n for n, on in zip(names, row) if on) for row in subsets.tolist()]


class Aggregator:
    """Builds q(z | x_S) for the subsets S in `self.subsets(M)`, per sample, from the observed experts.

    restrict = "intersect": a subset uses whichever of its modalities are observed (PoE/AVG: "all that is there").
    restrict = "contain": a subset is valid only if all its modalities are observed (MoE/MoPoE: subsets of the
    observed set, each counted once).
    """

    name = "base"
    restrict = "intersect"
    # defaults a subset objective takes unless told otherwise (see objectives.SubsetObjective):
    combine = "mixture"  # q is the mixture over subsets ("mixture") or each subset scores on its own ("sum")
    reconstruct = "all"  # every subset decodes every observed modality ("all") or only its members ("members")
    stratify = True  # decode every subset (True) or one subset drawn per sample (False)
    fuses_any = True  # `fuse` takes any members [n, B, M] (not only the rows of `subsets`), so draws fuse alone

    def subsets(self, M: int) -> Tensor:  # [K, M] bool
        """The subsets this aggregator builds posteriors for.  # [K, M] bool"""
        raise NotImplementedError

    def fuse(self, w: Tensor, experts: Experts) -> tuple[Tensor, Tensor]:
        """Combine the experts selected by w [K, B, M] into (mu, logvar) [K, B, D]."""
        raise NotImplementedError

    def build(self, M: int, D: int) -> Aggregator:
        """Create the parameters for M modalities and a shared latent of size D (MultimodalVAE calls it), and return
        self; the fixed rules have none."""
        return self

    def mask(self, M: int, device=None) -> Tensor:
        """`subsets(M)`, built once per (M, device) and cached.  # [K, M] bool"""
        cache = self.__dict__.setdefault("_masks", {})
        key = (M, str(device or "cpu"))
        if key not in cache:
            cache[key] = self.subsets(M).to(device or "cpu")
        return cache[key]

    def __call__(self, experts: Experts) -> SubsetPosterior:
        """q(z | x_S) for every subset and sample: the [K, M] mask restricted to what each sample observed.
        Built lazily: the [K, B, M] members and the [K, B, D] Gaussians only when they are read."""
        M = experts.mu.shape[0]
        S = self.mask(M, experts.mu.device)  # [K, M]
        valid = self.valid(S, experts.avail)  # [K, B]
        ok, complete = torch.stack([valid.any(0).all(), valid.all()]).tolist()  # one host sync
        if not ok:
            raise InputError("a sample has no observed modality: every sample needs at least one")
        weight = valid.to(experts.mu.dtype)
        weight = weight / weight.sum(0, keepdim=True)  # [K, B]
        return SubsetPosterior(weight=weight, subsets=S, recipe=_Subsets(self, S, experts, valid, complete))

    def valid(self, S: Tensor, avail: Tensor) -> Tensor:
        """Which subsets each sample can use, by counting members: "contain" none missing, else one observed.
        S [K, M], avail [B, M] -> [K, B] bool"""
        Sf = S.to(torch.float32)
        if self.restrict == "contain":
            return torch.mm(Sf, (~avail).T.to(torch.float32)) == 0  # [K, B]: S within the observed set
        return torch.mm(Sf, avail.T.to(torch.float32)) > 0  # [K, B]

    def fuse_all(self, members: Tensor, experts: Experts, complete: bool) -> tuple[Tensor, Tensor]:
        """(mu, logvar) [K, B, D] of every subset; complete: every subset is valid for every sample."""
        return self.fuse(members, experts)

    def kl_std_normal(self, S: Tensor, experts: Experts, valid: Tensor) -> Tensor | None:
        """A fused KL(q_k || N(0, I)) of every subset, or None to have it computed from the Gaussians."""
        return None

    def config(self) -> dict:
        """The spec that rebuilds this aggregator (`make_aggregator(config())`)."""
        return {"name": self.name}


class _Subsets:
    """The lazy builder of an aggregator's SubsetPosterior: members, Gaussians and KLs computed only when read."""

    def __init__(self, aggregator: Aggregator, S: Tensor, experts: Experts, valid: Tensor, complete: bool):
        self.aggregator, self.S, self.experts, self.valid, self.complete = aggregator, S, experts, valid, complete

    def members(self) -> Tensor:  # [K, B, M] bool
        """S restricted to what each sample observed, empty where the subset is not valid.  # [K, B, M]"""
        w = self.S[:, None, :] & self.experts.avail[None]  # [K, B, M]
        return w if self.complete else w & self.valid[..., None]

    def select(self, k: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
        """(mu, logvar, members) [n, B, ...] of the subsets k [n, B] drawn per sample (valid ones: weight > 0),
        fused alone; None where the aggregator can only fuse all its subsets at once."""
        if not self.aggregator.fuses_any:
            return None
        members = self.S[k] & self.experts.avail[None]  # [n, B, M]
        return (*self.aggregator.fuse(members, self.experts), members)

    def fuse(self, members: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, logvar) [K, B, D] of every subset, from their members [K, B, M]."""
        return self.aggregator.fuse_all(members, self.experts, self.complete)

    def kl_std_normal(self) -> Tensor | None:
        """The aggregator's fused KL(q_k || N(0, I)) of every subset, if it has one.  # [K, B]"""
        return self.aggregator.kl_std_normal(self.S, self.experts, self.valid)


def _poe(w: Tensor, experts: Experts, prior_expert: bool) -> tuple[Tensor, Tensor]:
    """Product of Gaussian experts: precision = [1] + sum_m w_m / var_m, mean = sum_m w_m mu_m / var_m / precision."""
    wf = w.to(experts.mu.dtype)  # [K, B, M]
    prec_m = torch.exp(-experts.logvar)  # [M, B, D]
    prec = torch.einsum("kbm,mbd->kbd", wf, prec_m)  # [K, B, D]
    num = torch.einsum("kbm,mbd->kbd", wf, experts.mu * prec_m)
    if prior_expert:
        prec = prec + 1.0
    prec = prec.clamp_min(1e-8)  # subsets with no expert (invalid for that sample) stay finite
    return num / prec, -torch.log(prec)


class PoE(Aggregator):
    """Product of experts over the observed modalities, with a N(0, I) prior expert (MVAE, Wu & Goodman 2018).

    subsets="joint" gives the one joint posterior; "joint+unimodal" adds each single modality (MVAE's sub-sampled
    training terms); "all" gives every subset.
    """

    name = "poe"

    def __init__(self, prior_expert: bool = True, subsets: str = "joint"):
        if subsets not in SUBSET_KINDS:
            raise InputError(f"PoE subsets must be 'joint', 'joint+unimodal' or 'all', got {subsets!r}")
        self.prior_expert, self.subsets_kind = prior_expert, subsets
        self.restrict = "contain" if subsets == "all" else "intersect"
        if subsets == "joint+unimodal":  # MVAE's sub-sampled terms: a sum of ELBOs, each over its own members
            self.combine, self.reconstruct = "sum", "members"

    def subsets(self, M):
        """The joint subset; with it each single modality (joint+unimodal), or every subset (all).  # [K, M]"""
        return subset_mask(self.subsets_kind, M)

    def fuse(self, w, experts):
        """Product of the selected experts (with the N(0, I) expert if prior_expert)."""
        return _poe(w, experts, self.prior_expert)

    def kl_std_normal(self, S, experts, valid):
        """KL(q_k || N(0, I)) of every product, fused (gaussian.poe_kl_std_normal); 0 where q_k is not valid."""
        if S.shape[0] < 8:  # a handful of subsets: the plain closed form is as cheap
            return None
        a = experts.avail.T[..., None]  # [M, B, 1]
        prec_m = torch.where(a, torch.exp(-experts.logvar), 0.0)  # [M, B, D]
        num_m = torch.where(a, experts.mu * prec_m, 0.0)
        kl = poe_kl_std_normal(S, prec_m, num_m, self.prior_expert)  # [K, B]
        return torch.where(valid, kl, 0.0)

    def config(self):
        """The spec that rebuilds this aggregator (`make_aggregator(config())`)."""
        return {"name": self.name, "prior_expert": self.prior_expert, "subsets": self.subsets_kind}


class MoPoE(PoE):
    """Mixture over all subsets of the observed modalities of their products of experts (MoPoE: Sutter, Daunhawer &
    Vogt, ICLR 2021); the objective draws one subset per sample."""

    name = "mopoe"
    stratify = False

    def __init__(self, prior_expert: bool = False):
        super().__init__(prior_expert, subsets="all")

    def config(self):
        """The spec that rebuilds this aggregator (`make_aggregator(config())`)."""
        return {"name": self.name, "prior_expert": self.prior_expert}


class MoE(Aggregator):
    """Mixture of the unimodal experts, uniform over the observed ones (MMVAE, Shi et al. 2019)."""

    name = "moe"
    restrict = "contain"
    fuses_any = False  # `fuse` reads row k of the members as expert k

    def subsets(self, M):
        """Each modality alone.  # [M, M] bool"""
        return torch.eye(M, dtype=torch.bool)

    def fuse_all(self, members, experts, complete):
        """Every expert as it is when all are observed (no copy), else `fuse`."""
        return (experts.mu, experts.logvar) if complete else self.fuse(members, experts)

    def fuse(self, w, experts):
        """Each expert as it is; zeros for subsets a sample did not observe."""
        valid = w.any(-1, keepdim=True)  # [K=M, B, 1]
        return (torch.where(valid, experts.mu, 0.0), torch.where(valid, experts.logvar, 0.0))


class NoAggregation(MoE):
    """Independent VAEs: each modality keeps its own posterior and reconstructs only itself."""

    name = "none"
    combine, reconstruct = "sum", "members"


class AVG(Aggregator):
    """Average of the observed experts' means and variances (a baseline of the MMVM paper)."""

    name = "avg"

    def subsets(self, M):
        """The one joint subset.  # [1, M] bool"""
        return torch.ones(1, M, dtype=torch.bool)

    def fuse(self, w, experts):
        """mu = mean of the selected experts' means, var = mean of their variances."""
        wf = w.to(experts.mu.dtype)
        n = wf.sum(-1, keepdim=True).clamp_min(1.0)  # [K, B, 1]
        mu = torch.einsum("kbm,mbd->kbd", wf, experts.mu) / n
        var = torch.einsum("kbm,mbd->kbd", wf, experts.logvar.exp()) / n
        return mu, torch.log(var.clamp_min(1e-12))


class Learned(Aggregator, nn.Module):
    """An aggregator with parameters, over PoE's `subsets` masks: "joint" (one fused posterior), "joint+unimodal"
    (a sum of ELBOs, MVAE-style) or "all" (a mixture over every subset of the observed set, one drawn per sample as
    MoPoE does). `build(M, D)` creates the network; unobserved experts enter it as zeros and are masked out."""

    forward = Aggregator.__call__

    def __init__(self, subsets: str = "joint"):
        nn.Module.__init__(self)
        if subsets not in SUBSET_KINDS:
            raise InputError(f"{self.name} subsets must be 'joint', 'joint+unimodal' or 'all', got {subsets!r}")
        self.subsets_kind, self.size, self.net = subsets, None, None
        self.restrict = "contain" if subsets == "all" else "intersect"
        self.stratify = subsets != "all"
        if subsets == "joint+unimodal":
            self.combine, self.reconstruct = "sum", "members"

    def network(self, M: int, D: int) -> nn.Module:
        """The fusion network for M modalities and a latent of size D."""
        raise NotImplementedError

    def build(self, M, D):
        """Create the network once and return self; again with the same (M, D) a no-op, with others an InputError."""
        if self.size is not None and self.size != (M, D):
            raise InputError(f"aggregator {self.name!r} was built for (M, D) = {self.size}, not {(M, D)}")
        if self.size is None:
            self.size, self.net = (M, D), self.network(M, D)
        return self

    def subsets(self, M):
        """PoE's subsets of this kind.  # [K, M] bool"""
        return subset_mask(self.subsets_kind, M)

    def observed(self, experts: Experts) -> tuple[Tensor, Tensor]:
        """The experts' (mu, logvar) with unobserved ones set to 0 (whatever they held), after checking the size."""
        M, _, D = experts.mu.shape
        if self.size != (M, D):
            raise InputError(f"aggregator {self.name!r} is built for (M, D) = {self.size}, got experts of {(M, D)}; "
                             f"call build(M, D) first (MultimodalVAE does)")
        a = experts.avail.T[..., None]  # [M, B, 1]
        return torch.where(a, experts.mu, 0.0), torch.where(a, experts.logvar, 0.0)

    def extra_repr(self):
        """The spec, in the module's repr."""
        return ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")


class Gated(Learned):
    """Product of experts whose precisions are scaled by learned, input-dependent gates a_m = net_m(mu_m, logvar_m):
    a softmax over the subset's experts times |S| (gate="softmax") or 2 sigmoid (gate="sigmoid"), so equal gates
    give exactly PoE (gating as in Arevalo et al., ICLR 2017 workshop, applied to precisions). One gate network per
    modality."""

    name = "gated"

    def __init__(self, gate: str = "softmax", prior_expert: bool = True, subsets: str = "joint", hidden: int = 32):
        if gate not in ("softmax", "sigmoid"):
            raise InputError(f"gated gate must be 'softmax' or 'sigmoid', got {gate!r}")
        super().__init__(subsets)
        self.gate, self.prior_expert, self.hidden = gate, bool(prior_expert), int(hidden)

    def network(self, M, D):
        """Gate logits [M, B, D] of every expert."""
        return GateNet(M, D, self.hidden)

    def fuse(self, w, experts):
        """The gated product of the selected experts (with the N(0, I) expert if prior_expert)."""
        mu, lv = self.observed(experts)
        return gated_poe(w, mu, lv, self.net(mu, lv), self.gate, self.prior_expert)

    def gates(self, experts: Experts) -> Tensor:
        """The gates of every subset's members, 0 outside them (inspection; `fuse` never builds it).  # [K, B, M, D]"""
        mu, lv = self.observed(experts)
        return gate_weights(self(experts).members, self.net(mu, lv), self.gate)

    def config(self):
        """The spec that rebuilds this aggregator (`make_aggregator(config())`)."""
        return {"name": self.name, "gate": self.gate, "prior_expert": self.prior_expert,
                "subsets": self.subsets_kind, "hidden": self.hidden}


class LowRank(Learned):
    """Low-rank multimodal fusion of the experts' (mu, logvar) into each subset's posterior (Liu et al., ACL 2018):
    rank-r modality-specific factors, a modality outside the subset contributes its constant only."""

    name = "lowrank"

    def __init__(self, rank: int = 4, subsets: str = "joint", hidden: int = 32):
        if int(rank) < 1 or int(hidden) < 1:
            raise InputError(f"lowrank rank and hidden must be >= 1, got {rank!r}, {hidden!r}")
        super().__init__(subsets)
        self.rank, self.hidden = int(rank), int(hidden)

    def network(self, M, D):
        """The factors [M, r, 2D + 1, H] and the heads to (mu, logvar)."""
        return LowRankFusion(M, D, self.rank, self.hidden)

    def fuse(self, w, experts):
        """Each subset's fused (mu, logvar) from its members only."""
        return self.net(w, *self.observed(experts))

    def config(self):
        """The spec that rebuilds this aggregator (`make_aggregator(config())`)."""
        return {"name": self.name, "rank": self.rank, "subsets": self.subsets_kind, "hidden": self.hidden}


AGGREGATORS = {c.name: c for c in (PoE, MoE, MoPoE, AVG, NoAggregation, Gated, LowRank)}


def make_aggregator(spec: str | dict | Aggregator) -> Aggregator:
    """An aggregator from an instance, a name ("mopoe") or a config dict."""
    return from_spec(spec, AGGREGATORS, "aggregator")
