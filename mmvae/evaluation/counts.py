"""Bits per spike for count modalities (Pandarinath et al., Nature Methods 2018, LFADS; the Neural Latents
Benchmark, Pei et al., NeurIPS Datasets & Benchmarks 2021):

    bps = (log L(x | rates) - log L(x | null)) / (n_spikes * ln 2),

L a Poisson likelihood summed over every evaluated element and `null` each neuron's mean count: by default over
the evaluated data (the benchmark's convention: the null model sees the test data's per-neuron means, so bps > 0
means the model predicts *when* and *on which trial* a neuron fires better than its average rate); `mmvae evaluate`
passes the training set's means (`training_null_rates`), a null model that sees no test data. The neuron axis is a
modality's last axis (a [T, neurons] modality; a vector modality is one neuron per element).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..devices import module_device
from .subset_batches import as_eval_data, gather_rows, row_chunks

MIN_RATE = 1e-9  # predicted rates are floored here before the log (as the benchmark does with zero rates)


def poisson_loglik(counts: Tensor, rates: Tensor) -> Tensor:
    """sum_i [x_i log r_i - r_i - log x_i!] over the elements where counts are not NaN (a 0-d float64 tensor)."""
    x, r = counts.double(), rates.double()
    keep = ~x.isnan()
    x, r = x[keep], r[keep]
    return (torch.xlogy(x, r) - r - torch.lgamma(x + 1)).sum()


def null_rates(counts: Tensor) -> Tensor:
    """Each neuron's mean count over every leading axis (NaN entries ignored).  [..., C] -> [C]"""
    return counts.double().reshape(-1, counts.shape[-1]).nanmean(0)


def bits_per_spike(counts: Tensor, rates: Tensor, null: Tensor | None = None, min_rate: float = MIN_RATE) -> float:
    """(log L(counts | rates) - log L(counts | null)) / (n_spikes ln 2) for counts, rates [..., C] (NaN counts
    ignored). null [C]: the null model's per-neuron rates; None: `null_rates(counts)`, the evaluated data's means.
    Rates below min_rate (zeros, or a non-count model's negative means) are floored there. NaN without spikes."""
    if counts.shape != rates.shape:
        raise ValueError(f"counts {tuple(counts.shape)} and rates {tuple(rates.shape)} differ in shape")
    if not bool(rates[~rates.isnan()].isfinite().all()) or bool((rates.isnan() & ~counts.isnan()).any()):
        raise ValueError("rates must be finite wherever counts are observed")
    spikes = float(counts.double().nansum())
    if spikes <= 0:
        return float("nan")
    base = (null_rates(counts) if null is None else null.double()).expand(counts.shape)  # [..., C]
    model = rates.double().clamp_min(min_rate)
    return float(poisson_loglik(counts, model) - poisson_loglik(counts, base)) / (spikes * math.log(2))


def count_modalities(model) -> list[str]:
    """The model's modalities with a count likelihood (Poisson, negative binomial)."""
    return [n for n in model.names if getattr(model.modalities[n].likelihood, "counts", False)]


@torch.no_grad()
def predicted_rates(model, data, name: str, source: str = "self", n_samples: int = 10,
                    batch_size: int | None = 2_000) -> tuple[Tensor, Tensor]:
    """The posterior predictive mean of modality `name`, E_q[mean of p(x_name | z)] over n_samples draws of z:
    from its own unimodal posterior (source="self") or from every other observed modality ("cross").

    -> (rows [R] of `data` that were predicted, rates [R, *shape]); rows need `name` observed ("cross": and one
    other modality)."""
    if source not in ("self", "cross"):
        raise ValueError(f"source must be 'self' or 'cross', got {source!r}")
    names, dev = list(model.names), module_device(model)
    i = names.index(name)
    cond = torch.zeros(len(names), dtype=torch.bool)
    cond[i] = source == "self"
    cond[[j for j in range(len(names)) if j != i]] = source == "cross"
    avail = data.avail & cond  # [N, M]: what the prediction sees
    rows = (data.avail[:, i] & avail.any(1)).nonzero().squeeze(1)  # [R]
    given = [n for j, n in enumerate(names) if cond[j]]
    out = []
    for c in row_chunks(len(rows), batch_size):
        r = rows[c]
        x = gather_rows({n: data.data[n] for n in given}, r, dev)
        pred = model.impute(x, targets=[name], n_samples=n_samples, avail=avail[r].to(dev))[name]
        out.append((pred.mean(0) if n_samples > 1 else pred).double().cpu())  # [B, *shape]
    shape = tuple(data.data[name].shape[1:])
    return rows, torch.cat(out) if out else torch.zeros(0, *shape, dtype=torch.float64)


def count_bits_per_spike(model, test, modalities: list[str] | None = None, n_samples: int = 10,
                         batch_size: int | None = 2_000, min_rate: float = MIN_RATE,
                         null: dict[str, Tensor] | None = None) -> dict:
    """Held-out bits per spike of every count modality, self (from its own posterior) and cross (from the others),
    against per-neuron mean rates: null {m: [C]} (e.g. `training_null_rates(train, ...)`), or None: those of the
    rows scored. modalities: None: those with a count likelihood; any modality may be named (a Gaussian model's
    means are then scored as rates, floored at min_rate).

    -> {"self": {m: bps}, "cross": {m: bps}, "mean_self", "mean_cross", "n_rows": {m: rows}, "n_samples",
    "null": "given" | "scored rows"}"""
    names = list(model.names)
    data = as_eval_data(test, names)
    modalities = count_modalities(model) if modalities is None else list(modalities)
    result: dict = {"self": {}, "cross": {}, "n_rows": {}, "n_samples": n_samples, "min_rate": min_rate,
                    "null": "scored rows" if null is None else "given"}
    for name in modalities:
        for source in ("self", "cross") if len(names) > 1 else ("self",):
            rows, rates = predicted_rates(model, data, name, source, n_samples, batch_size)
            if len(rows):
                result[source][name] = bits_per_spike(data.data[name][rows], rates, None if null is None else
                                                      null[name], min_rate=min_rate)
            if source == "self":
                result["n_rows"][name] = len(rows)
    for source in ("self", "cross"):
        vals = [v for v in result[source].values() if not math.isnan(v)]
        result[f"mean_{source}"] = sum(vals) / len(vals) if vals else float("nan")
    return result


def training_null_rates(train, names: list[str]) -> dict[str, Tensor]:
    """Each named modality's per-neuron mean count over its observed training rows.  -> {m: [C]} float64"""
    data = as_eval_data(train)
    return {m: null_rates(data.data[m][data.avail[:, data.names.index(m)]]) for m in names}
