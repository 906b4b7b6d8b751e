"""The published models as presets: each picks an aggregator, a prior, latent sizes and an objective.

Every preset is `(modalities, shared_dim=..., **overrides) -> MultimodalVAE`; an override replaces any
`MultimodalVAE` argument (e.g. `private_dim=8` gives any preset private latents, `prior="mmvamp"` the MM-VAMP prior).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputError
from ..modality import Modality
from ..model import MultimodalVAE
from ..networks import FAMILIES


def _make(modalities: dict[str, Modality], defaults: dict, overrides: dict) -> MultimodalVAE:
    return MultimodalVAE(modalities, **{**defaults, **overrides})


def mvae(modalities, shared_dim: int = 16, **overrides) -> MultimodalVAE:
    """MVAE (Wu & Goodman, NeurIPS 2018). Objective: the joint PoE ELBO plus every unimodal ELBO (the paper's
    sub-sampled terms; for M > 2 it also adds the ELBOs of k random subsets, which this preset leaves out)."""
    return _make(modalities, dict(shared_dim=shared_dim, aggregator={"name": "poe", "subsets": "joint+unimodal"}),
                 overrides)


def mmvae(modalities, shared_dim: int = 16, K: int = 5, estimator: str = "dreg", **overrides) -> MultimodalVAE:
    """MMVAE (Shi, Siddharth, Paige & Torr, NeurIPS 2019). Objective: IWAE bound of the MoE posterior, K samples
    stratified over the unimodal experts, trained with DReG gradients (estimator="iwae" for plain IWAE; a step
    costs about K times an ELBO step, so K is kept small by default: raise it for a tighter bound)."""
    return _make(modalities, dict(shared_dim=shared_dim, aggregator="moe", objective={"name": estimator, "K": K}),
                 overrides)


def mopoe(modalities, shared_dim: int = 16, **overrides) -> MultimodalVAE:
    """MoPoE-VAE (Sutter, Daunhawer & Vogt, ICLR 2021). Objective: ELBO of the mixture over all subsets of their
    products of experts, one subset drawn per sample."""
    return _make(modalities, dict(shared_dim=shared_dim, aggregator="mopoe"), overrides)


def mmvm(modalities, shared_dim: int = 16, anneal_steps: int = 100, **overrides) -> MultimodalVAE:
    """MMVM VAE (Sutter, Meng, Agostini, Chopard, Fortin, Vogt, Shahbaba & Mandt, NeurIPS 2024,
    "Unity by Diversity"). Objective: sum_m [-log p(x_m | z_m)
    + beta KL(q(z_m | x_m) || h(z_m | X))], h the MM-VAMP mixture of the observed unimodal posteriors.

    Defaults, each measured on PolyDigits (5 modalities, shared_dim 16, 20 epochs = 240 steps of 256; DESIGN.md,
    Priors):
    - kl="bound": the Jensen bound alpha KL(q_m || N) + (1 - alpha) mean_m' KL(q_m || q_m'), as the authors train.
      The Monte-Carlo KL to the mixture is at most log M (q_m is one of its components), so it barely couples the
      modalities (coherence at chance).
    - alpha annealed from 1 to 0 over `anneal_steps` (100) training steps, then the pure mixture: the authors'
      own config default (1 -> 0, over 150k steps on CelebA). Started at alpha 0, the bound pulls the untrained,
      still uninformative posteriors onto each other before they carry content (broad, unaligned posteriors); the
      model climbs out only slowly (at beta 1: probe 0.83, coherence 0.23 after 20 epochs, 0.96 / 0.85 after 40),
      and slower with a smaller lr (at lr 5e-4 still at chance). Warming up as independent VAEs (alpha 1) skips
      that plateau: probe 0.95, coherence 0.77 after 20 epochs (MoPoE 0.91 / 0.64). 100 steps, not more: the
      warm-up's KL to N(0, I) is weighed by beta and compresses more at larger beta, so a longer warm-up makes
      coherence fall with beta in short runs (0.77 -> 0.75 from beta 1 to 2 with 200 steps; 0.77 -> 0.78 with
      100); 40 steps are too few (0.93 / 0.64).
    - detach_prior=False: gradients flow into the mixture's components, as in the authors' code (detached, the
      posteriors shrink to points and coherence is at chance).
    `mmvm_paper` is the authors' PolyMNIST setting (alpha 0 from the start, shared_dim 512). A `prior=` override
    replaces the whole prior spec (then `anneal_steps` is not used).
    """
    prior = {"name": "mmvamp", "kl": "bound", "alpha_start": 1.0, "alpha_end": 0.0, "anneal_steps": anneal_steps}
    return _make(modalities, dict(shared_dim=shared_dim, aggregator="none", prior=prior), overrides)


def mmvm_paper(modalities, shared_dim: int = 512, **overrides) -> MultimodalVAE:
    """MMVM VAE with the authors' PolyMNIST settings (Sutter et al., NeurIPS 2024; thomassutter/mmvmvae,
    `run_polymnist.sh`): latent size 512, the Jensen-bound KL with alpha 0 from the first step (no N(0, I)
    component, no annealing), gradients into the mixture. Objective: as `mmvm`. They train it 400 epochs with Adam
    at lr 5e-4, batch 128, Laplace likelihood of scale 0.75 (the PolyDigits/PolyMNIST default here), ResNets.
    Short runs stay on the slow start that `mmvm`'s alpha warm-up avoids."""
    return _make(modalities, dict(shared_dim=shared_dim, aggregator="none",
                                  prior={"name": "mmvamp", "kl": "bound", "alpha_start": 0.0, "alpha_end": 0.0}),
                 overrides)


def mmvaeplus(modalities, shared_dim: int = 16, private_dim: int = 8, K: int = 5, estimator: str = "dreg",
              **overrides) -> MultimodalVAE:
    """MMVAE+ (Palumbo, Daunhawer & Vogt, ICLR 2023). Objective: stratified IWAE/DReG of the MoE shared latent, with
    private w_m from q(w_m | x_m) for self-reconstruction and from a learned-scale prior r(w_m) across modalities."""
    return _make(modalities, dict(shared_dim=shared_dim, private_dim=private_dim, aggregator="moe",
                                  objective={"name": estimator, "K": K}, cross_private="prior",
                                  learn_private_prior=True), overrides)


def dmvae(modalities, shared_dim: int = 16, private_dim: int = 8, **overrides) -> MultimodalVAE:
    """DMVAE (Lee & Pavlovic, CVPR Workshops 2021). Objective: ELBOs of the joint PoE and of each unimodal shared
    posterior, each reconstructing every modality with its own private code (cross-reconstruction terms)."""
    return _make(modalities, dict(shared_dim=shared_dim, private_dim=private_dim,
                                  aggregator={"name": "poe", "subsets": "joint+unimodal"},
                                  objective={"name": "elbo", "combine": "sum", "reconstruct": "all"},
                                  cross_private="posterior"), overrides)


def independent(modalities, shared_dim: int = 16, **overrides) -> MultimodalVAE:
    """Independent VAEs (Kingma & Welling 2014), the no-sharing baseline of the MMVM paper (Sutter et al. 2024).
    Objective: sum_m ELBO of q(z_m | x_m) with a N(0, I) prior; imputation decodes from the mixture of the observed
    posteriors."""
    return _make(modalities, dict(shared_dim=shared_dim, aggregator="none"), overrides)


def avg(modalities, shared_dim: int = 16, **overrides) -> MultimodalVAE:
    """AVG, the averaging baseline of the MMVM paper (Sutter et al., NeurIPS 2024). Objective: the ELBO of one
    joint posterior whose mean and variance are the averages of the observed modalities' experts'."""
    return _make(modalities, dict(shared_dim=shared_dim, aggregator="avg"), overrides)


PRESETS = {f.__name__: f for f in (mvae, mmvae, mopoe, mmvm, mmvm_paper, mmvaeplus, dmvae, independent, avg)}


def default_modalities(dataset, networks: str | dict | None = None) -> dict[str, Modality]:
    """One Modality per dataset modality, with ready-made networks for its shape and its suggested likelihood
    (`dataset.likelihoods`: e.g. "poisson" for spike counts); a categorical gets its number of classes from the
    data, a negative binomial one dispersion per feature of the last axis (neurons of a [T, neurons] modality).
    networks: a family for every modality ("auto", "mlp", "conv", "tconv", "transformer") or a dict name ->
    family (others "auto"); None: the dataset's own hint (`dataset.networks`, if it has one), else "auto"."""
    networks = getattr(dataset, "networks", None) if networks is None else networks
    families = parse_networks(networks, list(dataset.modalities))
    mods = {}
    for name in dataset.modalities:
        lik = dataset.likelihoods[name]
        if lik == "categorical":
            lik = {"name": "categorical", "num_classes": int(dataset.data[name].max()) + 1}
        elif lik == "negative_binomial":
            lik = {"name": "negative_binomial", "features": int(dataset.shapes[name][-1])}
        mods[name] = Modality(shape=dataset.shapes[name], likelihood=lik, networks=families[name])
    return mods


def parse_networks(networks: str | dict | None, names: list[str]) -> dict[str, str]:
    """Each modality's network family from None ("auto"), one family, "m0=tconv,m1=mlp" or a dict name ->
    family; InputError naming an unknown modality or family."""
    if networks is None:
        return dict.fromkeys(names, "auto")
    if isinstance(networks, str) and "=" not in networks:
        networks = dict.fromkeys(names, networks)
    elif isinstance(networks, str):
        pairs = [p.split("=", 1) for p in networks.split(",") if p.strip()]
        if any(len(p) != 2 for p in pairs):
            raise InputError(f"networks {networks!r}: expected FAMILY or NAME=FAMILY,NAME=FAMILY")
        networks = {k.strip(): v.strip() for k, v in pairs}
    unknown = [n for n in networks if n not in names]
    if unknown:
        raise InputError(f"networks: unknown modality {unknown[0]!r} (known: {names})")
    bad = {n: f for n, f in networks.items() if f not in FAMILIES}
    if bad:
        name, family = next(iter(bad.items()))
        raise InputError(f"networks: modality {name!r}: unknown family {family!r}; choose one of {list(FAMILIES)}")
    return {n: networks.get(n, "auto") for n in names}


def build(name: str, dataset, shared_dim: int | None = None, private_dim: int | None = None,
          networks: str | dict | None = None, **kw) -> MultimodalVAE:
    """The preset `name` with default networks for `dataset` (its `.shapes` and `.likelihoods`; `networks` as in
    `default_modalities`); None keeps the preset's default size."""
    if name not in PRESETS:
        raise InputError(f"unknown model {name!r}; choose one of {sorted(PRESETS)}")
    sizes = {k: v for k, v in (("shared_dim", shared_dim), ("private_dim", private_dim)) if v is not None}
    return PRESETS[name](default_modalities(dataset, networks), **sizes, **kw)


@torch.no_grad()
def modality_embeddings(model: MultimodalVAE, observed: dict[str, Tensor], avail: Tensor | None = None) -> dict:
    """Downstream representations (MMVM): each observed modality's own posterior mean, and their average.

    -> {"per_modality": {name: [B, Ds]}, "mean": [B, Ds]} (the mean over the modalities observed per sample).
    """
    x, avail = model.check(observed, avail)
    enc = model.encode(x, avail)
    mu, av = enc.experts.mu, enc.experts.avail.T[..., None].to(enc.experts.mu.dtype)  # [M, B, D], [M, B, 1]
    per = {n: mu[i] for i, n in enumerate(model.names) if n in observed}
    return {"per_modality": per, "mean": (mu * av).sum(0) / av.sum(0).clamp_min(1.0)}
