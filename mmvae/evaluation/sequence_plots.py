"""Report figures of sequence modalities [T, C]: sensor traces with the imputations' spread, count rasters against
imputed rates, latent trajectories by condition, and the imputation error per time step.

Each function is `(..., path) -> path` and writes one PNG (plots.py's Agg canvas); padded steps (all channels NaN)
are never drawn. Imputations of x_m condition on every other modality (on x_m itself when it is the only one).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from ..devices import module_device
from .plots import _pca2, _save
from .sequences import valid_steps
from .subset_batches import as_eval_data, gather_rows


def complete_rows(data, n: int, seed: int = 0) -> Tensor:
    """n random rows of `data` that observe every modality (fewer if it has fewer).  -> [n] long"""
    full = data.avail.all(1).nonzero().squeeze(1)
    return full[torch.randperm(len(full), generator=torch.Generator().manual_seed(seed))[:n]]


@torch.no_grad()
def imputation_draws(model, data, rows: Tensor, target: str, n_draws: int) -> Tensor:
    """n_draws imputations (decoded means, z ~ q(z | x_S)) of `target` for `rows`, S = every other modality (or
    the target itself when the model has one modality).  -> [n_draws, R, *shape] on the CPU"""
    names = list(model.names)
    mask = torch.ones(len(rows), len(names), dtype=torch.bool)  # [R, M]
    if len(names) > 1:
        mask[:, names.index(target)] = False
    dev = module_device(model)
    gen = model.impute(gather_rows(data.data, rows, dev), targets=[target], n_samples=n_draws,
                       avail=mask.to(dev))[target]
    return (gen if n_draws > 1 else gen[None]).float().cpu()


def _given(model, target: str) -> str:
    names = list(model.names)
    return "+".join(m for m in names if m != target) if len(names) > 1 else target


def sensor_traces(model, dataset, path, modalities: list[str], n_tuples: int = 3, n_draws: int = 8,
                  max_channels: int = 4, seed: int = 0) -> Path:
    """Real traces (black) against the imputation mean +- 2 sd over n_draws draws (blue band), one panel per
    channel (up to max_channels), one row per (modality, test tuple)."""
    names = list(model.names)
    data = as_eval_data(dataset, names)
    rows = complete_rows(data, n_tuples, seed)
    width = min(max_channels, max(data.data[m].shape[-1] for m in modalities))
    fig = Figure(figsize=(2.6 * width + 0.8, 1.7 * len(modalities) * len(rows) + 0.8), layout="constrained")
    axes = fig.subplots(len(modalities) * len(rows), width, squeeze=False)
    for a, m in enumerate(modalities):
        real = data.data[m][rows].float()  # [R, T, C]
        gen = imputation_draws(model, data, rows, m, n_draws)  # [n, R, T, C]
        pad = ~valid_steps(real)[..., None]  # [R, T, 1]
        mean = gen.mean(0).masked_fill(pad, float("nan"))  # [R, T, C]
        sd = gen.std(0, unbiased=False).masked_fill(pad, float("nan"))
        t = np.arange(real.shape[1])
        for i in range(len(rows)):
            for c in range(width):
                ax = axes[a * len(rows) + i, c]
                if c >= real.shape[-1]:
                    ax.axis("off")
                    continue
                lo, hi = (mean[i, :, c] - 2 * sd[i, :, c]).numpy(), (mean[i, :, c] + 2 * sd[i, :, c]).numpy()
                ax.fill_between(t, lo, hi, color="tab:blue", alpha=0.25, lw=0, label="mean ± 2 sd")
                ax.plot(t, mean[i, :, c].numpy(), color="tab:blue", lw=1, label="imputed mean")
                ax.plot(t, real[i, :, c].numpy(), color="black", lw=1, label="real")
                ax.tick_params(labelsize=6)
                ax.set_title(f"{m} ch {c}, tuple {int(rows[i])}", fontsize=7)
    axes[0, 0].legend(fontsize=6)
    fig.suptitle(f"real vs imputed from the other modalities ({n_draws} draws)", fontsize=9)
    return _save(fig, path)


def count_rasters(model, dataset, path, modalities: list[str], n_trials: int = 2, n_draws: int = 8,
                  seed: int = 0) -> Path:
    """Real counts next to the imputed rates (mean of n_draws decoded rates), imshow [neurons x time], each with
    its own colour bar (rates are far smoother than counts), one row per (modality, trial)."""
    names = list(model.names)
    data = as_eval_data(dataset, names)
    rows = complete_rows(data, n_trials, seed)
    fig = Figure(figsize=(7.5, 1.9 * len(modalities) * len(rows) + 0.8), layout="constrained")
    axes = fig.subplots(len(modalities) * len(rows), 2, squeeze=False)
    for a, m in enumerate(modalities):
        real = data.data[m][rows].float()  # [R, T, N]
        rates = imputation_draws(model, data, rows, m, n_draws).mean(0)  # [R, T, N]
        rates = rates.masked_fill(~valid_steps(real)[..., None], float("nan"))
        for i in range(len(rows)):
            for j, (v, what) in enumerate(((real[i], "real counts"), (rates[i], f"rates given {_given(model, m)}"))):
                ax = axes[a * len(rows) + i, j]
                top = float(torch.nan_to_num(v).max().clamp_min(1e-6))
                im = ax.imshow(v.T.numpy(), aspect="auto", interpolation="nearest", cmap="magma", vmin=0, vmax=top)
                ax.set_title(f"{m}, trial {int(rows[i])}: {what}", fontsize=7)
                ax.set_xlabel("time bin", fontsize=6)
                ax.set_ylabel("neuron", fontsize=6)
                ax.tick_params(labelsize=6)
                fig.colorbar(im, ax=ax, shrink=0.8).ax.tick_params(labelsize=6)
    return _save(fig, path)


@torch.no_grad()
def latent_trajectories(model, dataset, path, modalities: list[str], n: int = 500, seed: int = 0) -> Path:
    """Left: the shared posterior means q(z | all) of n trials, 2-D PCA, one point per trial coloured by condition
    (the latent is per trial, not per time bin). Right: the per-time-bin trajectory the model decodes from those
    trials, the decoded means of `modalities` concatenated over channels [T, sum C], 2-D PCA over all (trial,
    bin) pairs, averaged per condition (a circle marks the first bin)."""
    names = list(model.names)
    data = as_eval_data(dataset, names)
    data = data.take(complete_rows(data, n, seed).sort().values)
    dev = module_device(model)
    x = gather_rows(data.data, torch.arange(len(data)), dev)
    avail = torch.ones(len(data), len(names), dtype=torch.bool)  # [N, M]
    z = model.embed(x, avail=avail.to(dev))["shared"].float().cpu()  # [N, Ds]
    T = min(data.data[m].shape[1] for m in modalities)
    gen = model.impute(x, targets=list(modalities), avail=avail.to(dev))
    seq = torch.cat([gen[m].float().cpu()[:, :T] for m in modalities], -1)  # [N, T, sum C]
    seq = (seq - seq.mean((0, 1))) / seq.std((0, 1)).clamp_min(1e-6)  # channels on one scale
    flat = seq.reshape(-1, seq.shape[-1])  # [N T, sum C]
    traj = _pca2(flat, flat).view(len(data), T, 2)  # [N, T, 2]
    labels = data.labels if data.labels is not None else torch.zeros(len(data), dtype=torch.long)
    classes = getattr(dataset, "classes", None)  # class names, where the dataset has them (BasicMotions)
    fig = Figure(figsize=(8.5, 3.6), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    p = _pca2(z, z)  # [N, 2]
    for c in labels.unique().tolist():
        sel = labels == c
        colour = f"C{int(c) % 10}"
        name = classes[int(c)] if classes is not None and 0 <= int(c) < len(classes) else str(int(c))
        ax1.scatter(p[sel, 0], p[sel, 1], s=5, alpha=0.7, color=colour, label=name)
        mean = traj[sel].mean(0)  # [T, 2]
        ax2.plot(mean[:, 0], mean[:, 1], color=colour, lw=1.5, marker=".", ms=3)
        ax2.plot(mean[:1, 0], mean[:1, 1], color=colour, marker="o", ms=6)
    ax1.set_title("shared posterior mean per trial (PCA)", fontsize=8)
    ax2.set_title(f"decoded {'+'.join(modalities)} per time bin (PCA), condition means", fontsize=8)
    for ax in (ax1, ax2):
        ax.set_xticks([])
        ax.set_yticks([])
    if data.labels is not None:
        ax1.legend(title="condition", fontsize=6, markerscale=2)
    return _save(fig, path)


def step_error_plot(seq: dict, path, max_lines: int = 6) -> Path:
    """Imputation MSE against time step from `sequence_imputation_error`'s dict: one panel per sequence modality,
    one line per conditioning subset (per subset size when there are more than max_lines subsets)."""
    targets = list(seq["per_step_per_size"])
    fig = Figure(figsize=(4.2 * len(targets) + 0.5, 3.2), layout="constrained")
    axes = fig.subplots(1, len(targets), squeeze=False)[0]
    for ax, m in zip(axes, targets):
        cells = {k.split("->")[0]: v["per_step"] for k, v in seq["matrix"].items() if k.split("->")[1] == m}
        lines = cells if len(cells) <= max_lines else \
            {f"|S| = {s}": curve for s, curve in seq["per_step_per_size"][m].items()}
        for label, curve in lines.items():
            y = np.array([np.nan if v is None else v for v in curve], dtype=float)
            ax.plot(np.arange(len(y)), y, marker=".", lw=1, label=f"given {label}" if "|" not in label else label)
        ax.set_xlabel("time step")
        ax.set_ylabel("imputation MSE")
        ax.set_title(m, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    return _save(fig, path)
