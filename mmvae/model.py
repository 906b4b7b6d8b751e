"""MultimodalVAE: modalities, a shared latent (+ optional private latents), an aggregator, a prior and an objective.

Verbs: `encode`, `posterior`, `decode`, `forward` (the training loss), `impute`, `embed`, `sample`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .aggregators import Aggregator, make_aggregator
from .devices import module_device
from .errors import InputError
from .gaussian import Experts, SubsetPosterior, rsample, soft_clamp_logvar
from .modality import Modality
from .objectives import ModelOutput, Objective, PrivateDraw, Reconstruction, make_objective, make_regularisers
from .priors import make_prior
from .validation import check_count, check_inputs, check_targets, fill_gaps, gaps


@dataclass
class Encoded:
    """All posteriors of one batch: the shared experts q(z | x_m) and the private q(w_m | x_m)."""

    experts: Experts  # mu, logvar [M, B, Ds]; avail [B, M]
    private: dict[str, tuple[Tensor, Tensor]]  # name -> (mu, logvar) [B, Dm]; zeros where x_m is missing
    observed: list[bool]  # per modality: observed in any sample of the batch (host-side, for skipping work)
    present: dict[str, Tensor] | None = None  # name -> [B, *shape] bool, for modalities with gaps (NaN / -1 entries)
    filled: dict[str, Tensor] | None = None  # name -> [B, *shape]: those modalities with their gaps set to 0

    def inputs(self, name: str, x: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        """(x_m with gaps set to 0, its observed entries [B, *shape] or None when it has no gaps)."""
        if self.present and name in self.present:
            return self.filled[name], self.present[name]
        return x[name], None


def _private_dims(private_dim: int | dict, names: list[str]) -> dict[str, int]:
    """Each modality's private latent size from an int for all or a dict name -> int (absent: 0)."""
    if not isinstance(private_dim, dict):
        return {n: int(private_dim) for n in names}
    unknown = set(private_dim) - set(names)
    if unknown:
        raise InputError(f"private_dim names unknown modality {sorted(unknown)[0]!r} (known: {names})")
    return {n: int(private_dim.get(n, 0)) for n in names}


class MultimodalVAE(nn.Module):
    """p(X, z, w) = p(z) prod_m p(w_m) p(x_m | z, w_m), with q(z | X) built from the experts by the aggregator.

    private_dim: an int for every modality or a dict name -> int (0 = no private latent).
    cross_private: where a decoder gets w_m when x_m is not in the conditioning subset: "prior" (MMVAE+: a draw
    from the private prior, with a learned scale when learn_private_prior) or "posterior" (DMVAE: its own
    encoding of x_m, when observed). beta: a shortcut that sets the objective's KL weight (None keeps the
    objective's own, 1 by default). regularisers: name -> weight, terms added to the loss (objectives.regularisers).
    """

    def __init__(self, modalities: dict[str, Modality], shared_dim: int, private_dim: int | dict = 0,
                 aggregator: str | dict | Aggregator = "mopoe", prior="normal", beta: float | None = None,
                 objective: str | dict | Objective | None = None, cross_private: str = "prior",
                 learn_private_prior: bool = False, regularisers: dict | None = None):
        super().__init__()
        if not modalities:
            raise InputError("a MultimodalVAE needs at least one modality")
        if cross_private not in ("prior", "posterior"):
            raise InputError(f"cross_private must be 'prior' or 'posterior', got {cross_private!r}")
        self.names = list(modalities)
        self.shared_dim, self.private_dims = int(shared_dim), _private_dims(private_dim, self.names)
        for name, mod in modalities.items():
            mod.build(name, self.shared_dim + self.private_dims[name])
        self.modalities = nn.ModuleDict(modalities)
        self.aggregator = make_aggregator(aggregator).build(len(self.names), self.shared_dim)  # learned: parameters
        self.prior = make_prior(prior)  # an nn.Module prior registers its parameters here
        self.objective, self.regularisers = make_objective(objective), make_regularisers(regularisers)
        if beta is not None:
            self.objective.beta = float(beta)
        self.cross_private, self.learn_private_prior = cross_private, learn_private_prior
        # log-variance of the private prior r(w_m) used for cross-modal decoding (learned in MMVAE+)
        self.private_prior_logvar = nn.ParameterDict({
            n: nn.Parameter(torch.zeros(d), requires_grad=learn_private_prior)
            for n, d in self.private_dims.items() if d > 0})

    # ---------------------------------------------------------------- verbs
    @property
    def device(self) -> torch.device:
        """Where the weights are."""
        return module_device(self)

    @property
    def beta(self) -> float:
        """The objective's KL weight."""
        return self.objective.beta

    def check(self, x, avail=None) -> tuple[dict[str, Tensor], Tensor]:
        """Validate inputs and move them to the model's device; see `validation.check_inputs`.
        Floating-point data of another precision (float64 from numpy, float16) is cast to the weights' dtype."""
        x, avail = check_inputs(self.modalities, self.names, x, avail)
        param = next(self.parameters())
        dev, dtype = param.device, param.dtype  # the weights' device and precision
        return {n: t.to(dev, dtype=dtype) if t.is_floating_point() else t.to(dev) for n, t in x.items()}, avail.to(dev)

    def encode(self, x: dict[str, Tensor], avail: Tensor) -> Encoded:
        """Every observed modality's posterior; only observed rows go through an encoder."""
        B, Ds = avail.shape[0], self.shared_dim
        holes = {n: gaps(t) for n, t in x.items() if t.is_floating_point() or self.modalities[n].likelihood.discrete}
        has_gaps = torch.stack([holes[n].any() if n in holes else avail.new_zeros(()) for n in self.names])  # [M]
        observed, complete, gappy = torch.stack([avail.any(0), avail.all(0), has_gaps]).tolist()  # one host sync
        present = {n: ~holes[n] for i, n in enumerate(self.names) if gappy[i]}
        filled = {n: fill_gaps(x[n]) for n in present}
        mus, lvs, private = [], [], {}
        for i, name in enumerate(self.names):
            D = Ds + self.private_dims[name]
            if name in x and observed[i]:
                idx = None if complete[i] else avail[:, i].nonzero().squeeze(1)
                mod = self.modalities[name]
                xm = x[name] if getattr(mod.encoder, "handles_nan", False) else filled.get(name, x[name])
                m, v = mod.encode(xm if idx is None else xm.index_select(0, idx))
                if m.shape[-1] != D:  # checked before index_copy, which would fail with a RuntimeError
                    raise InputError(f"modality {name!r}: encoder gives {m.shape[-1]} posterior means, expected "
                                     f"shared_dim + private_dim = {D}")
                m, v = m.float(), soft_clamp_logvar(v.float())  # [B', D]: the observed rows only
                mu, lv = (m, v) if idx is None else (m.new_zeros(B, D).index_copy(0, idx, m),
                                                     v.new_zeros(B, D).index_copy(0, idx, v))
            else:
                mu = lv = torch.zeros(B, D, device=avail.device)
            mus.append(mu[:, :Ds])
            lvs.append(lv[:, :Ds])
            if D > Ds:
                private[name] = (mu[:, Ds:], lv[:, Ds:])
        return Encoded(Experts(torch.stack(mus), torch.stack(lvs), avail), private, observed, present, filled)

    def posterior(self, x: dict[str, Tensor], avail: Tensor | None = None) -> tuple[SubsetPosterior, Encoded]:
        """q(z | x_S) for the aggregator's subsets of what is observed, and the encodings it came from."""
        x, avail = self.check(x, avail)
        enc = self.encode(x, avail)
        return self.aggregator(enc.experts), enc

    def decode(self, name: str, z: Tensor, w: Tensor | None = None) -> Tensor:
        """Likelihood parameters of x_m from [z, w_m].  z [..., B, Ds], w [..., B, Dm] -> [..., B, *out]"""
        h = z if w is None or w.shape[-1] == 0 else torch.cat([z, w.to(z.dtype)], -1)
        lead = h.shape[:-1]
        out = self.modalities[name].decoder(h.reshape(-1, h.shape[-1]))
        return out.reshape(*lead, *out.shape[1:]).float()

    def private_sample(self, name: str, enc: Encoded, use_posterior: Tensor, n: int) -> PrivateDraw | None:
        """w_m for decoding: from q(w_m | x_m) where use_posterior [K, B] (and, under cross_private="posterior",
        wherever x_m is observed), else from the private prior. -> w [n, K, B, Dm], or None without a private latent.
        """
        K, B = use_posterior.shape
        prior = self._private_prior(name, (n, K, B))  # [n, K, B, Dm]
        if prior is None:
            return None
        rows = torch.arange(K, device=use_posterior.device)
        if name not in enc.private:
            return PrivateDraw(rows, torch.zeros_like(use_posterior), prior)
        i = self.names.index(name)
        use = use_posterior | (enc.experts.avail[:, i] if self.cross_private == "posterior" else False)  # [K, B]
        post = rsample(*enc.private[name], n * K).view(prior.shape)
        return PrivateDraw(rows, use, torch.where(use[None, ..., None], post, prior))

    def log_likelihoods(self, x: dict[str, Tensor], enc: Encoded, z: Tensor, post: SubsetPosterior,
                        members_only: bool = False) -> Reconstruction:
        """lambda_m log p(x_m | z, w_m) for every sample of z and every modality; 0 where x_m is not observed.

        z [L, K, B, Ds] -> log_lik [L, K, B, M]. With members_only, modality m is decoded only from the subsets that
        contain it (MVAE, independent VAEs), and scores 0 elsewhere. Also returns the private codes decoded.
        """
        L, K, B, _ = z.shape
        avail = enc.experts.avail  # [B, M]
        subsets = self.aggregator.mask(len(self.names)) if members_only and post.subsets is not None else None
        out, private = z.new_zeros(L, K, B, len(self.names)), {}
        for i, name in enumerate(self.names):
            if name not in x or not enc.observed[i]:
                continue
            if subsets is None:  # every subset decodes m: no gather
                rows, zr, in_subset = None, z, post.members[:, :, i]
            else:  # only the subsets that contain m (a constant of the aggregator, on the host)
                rows = subsets[:, i].nonzero().squeeze(1).to(z.device)
                zr, in_subset = z[:, rows], post.members[rows, :, i]  # [L, K', B, D], [K', B]
            draw = self.private_sample(name, enc, in_subset, L)  # w [L, K', B, Dm]
            if draw is not None:
                draw.rows = draw.rows if rows is None else rows
                private[name] = draw
            mod = self.modalities[name]
            params = self.decode(name, zr, None if draw is None else draw.w)  # [L, K', B, *out]
            xm, present = enc.inputs(name, x)
            lp = mod.likelihood.log_prob(params, xm, mask=avail[:, i], present=present) * mod.weight  # [L, K', B]
            if members_only:
                lp = torch.where(in_subset, lp, 0.0)
            if rows is None:
                out[..., i] = lp
            else:
                out[:, rows, :, i] = lp
        return Reconstruction(out, private)

    def forward(self, x: dict[str, Tensor], avail: Tensor | None = None) -> ModelOutput:
        """The loss of one batch (the negative objective averaged over samples, plus the regularisers), its terms."""
        x, avail = self.check(x, avail)
        return self.regularisers(self.objective(self, x, avail), self, x, avail)

    @torch.no_grad()
    def impute(self, observed: dict[str, Tensor], targets: list[str] | None = None, n_samples: int = 1,
               avail: Tensor | None = None, draw: bool = False) -> dict[str, Tensor]:
        """Decode `targets` (default: every modality not given) from z ~ q(z | observed) and, for modalities not
        observed, a private code from its prior. Returns name -> [B, ...], or [n_samples, B, ...] when n_samples > 1:
        the likelihood's mean (rates, probabilities, the most likely token), or with draw=True a draw from it
        (counts, tokens, noisy values). The decoded values are returned everywhere, also where a modality was
        observed: to fill only the gaps (NaN / -1 entries) of x, take `torch.where(validation.gaps(x), imputed, x)`.
        """
        targets = check_targets(targets, observed, self.names)
        n_samples = check_count(n_samples, "impute: n_samples", 1)
        post, enc = self.posterior(observed, avail)
        z = post.sample_component(n_samples)  # [n, B, Ds]
        out = {}
        for name in targets:
            i = self.names.index(name)
            own = enc.experts.avail[:, i][None].expand(n_samples, -1)  # [n, B]: reconstruct from own code
            code = self.private_sample(name, enc, own, 1)
            params = self.decode(name, z, None if code is None else code.w[0])
            lik = self.modalities[name].likelihood
            value = lik.draw(params) if draw else lik.mean(params)
            out[name] = value if n_samples > 1 else value[0]
        return out

    @torch.no_grad()
    def embed(self, observed: dict[str, Tensor], avail: Tensor | None = None) -> dict:
        """Posterior means for downstream use: {"shared": [B, Ds], "private": {name: [B, Dm]}}."""
        post, enc = self.posterior(observed, avail)
        return {"shared": post.mean(), "private": {n: mu for n, (mu, _) in enc.private.items() if n in observed}}

    @torch.no_grad()
    def sample(self, n: int, draw: bool = False) -> dict[str, Tensor]:
        """Unconditional generation: z ~ N(0, I), w_m from the private priors, every modality decoded (the
        likelihood's mean, or with draw=True a draw from it)."""
        n = check_count(n, "sample: n", 0)
        z = torch.randn(n, self.shared_dim, device=self.device)
        out = {}
        for name in self.names:
            lik, params = self.modalities[name].likelihood, self.decode(name, z, self._private_prior(name, (n,)))
            out[name] = lik.draw(params) if draw else lik.mean(params)
        return out

    def _private_prior(self, name: str, lead: tuple[int, ...]) -> Tensor | None:
        """w_m ~ r(w_m) = N(0, diag exp(private_prior_logvar)), None without a private latent.  # [*lead, Dm]"""
        d = self.private_dims[name]
        if d == 0:
            return None
        return torch.randn(*lead, d, device=self.device) * (0.5 * self.private_prior_logvar[name]).exp()

    # ---------------------------------------------------------------- configuration
    def config(self) -> dict:
        """Everything needed to rebuild this model (JSON-able)."""
        return {
            "modalities": {n: m.config() for n, m in self.modalities.items()},
            "shared_dim": self.shared_dim, "private_dim": self.private_dims,
            "aggregator": self.aggregator.config(), "prior": self.prior.config(),
            "objective": self.objective.config(), "cross_private": self.cross_private,
            "learn_private_prior": self.learn_private_prior, "regularisers": self.regularisers.config(),
        }

    @classmethod
    def from_config(cls, cfg: dict | str, modalities: dict[str, Modality] | None = None) -> MultimodalVAE:
        """Rebuild a model from `config()` (a dict or its JSON); pass `modalities` if they hold custom networks."""
        cfg = json.loads(cfg) if isinstance(cfg, str) else dict(cfg)
        mods = modalities or {n: Modality.from_config(c) for n, c in cfg.pop("modalities").items()}
        cfg.pop("modalities", None)
        return cls(mods, **cfg)
