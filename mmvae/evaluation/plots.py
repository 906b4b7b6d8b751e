"""Figures for the report, drawn on matplotlib's Agg canvas (no display, no global pyplot state).

Each function is `(..., path) -> path` and writes one PNG.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from ..atomic import replace_file
from ..devices import module_device
from .sequences import is_sequence
from .subset_batches import as_eval_data, gather_rows, subset_key, subsets_by_size


def _save(fig: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    replace_file(path, lambda f: fig.savefig(f, dpi=100, format="png"))  # atomic: a full disk keeps the old PNG
    return path


def _is_image(shape) -> bool:
    return len(shape) == 3 and shape[0] in (1, 3)


def _cell(values: Tensor, lo: float, hi: float) -> np.ndarray:
    """n samples of one modality as one picture: images side by side (HWC), anything else as rows of a heatmap."""
    v = values.detach().float().cpu()
    if _is_image(v.shape[1:]):
        imgs = v.clamp(0, 1).permute(0, 2, 3, 1).numpy()  # [n, H, W, C]
        if imgs.shape[-1] == 1:
            imgs = np.repeat(imgs, 3, -1)
        gap = np.ones((imgs.shape[1], 1, 3), dtype=imgs.dtype)
        return np.concatenate([p for img in imgs for p in (img, gap)][:-1], 1)
    return ((v.reshape(v.shape[0], -1) - lo) / max(hi - lo, 1e-8)).clamp(0, 1).numpy()  # [n, d]


def _trace_cell(ax, values: Tensor, lo: float, hi: float) -> None:
    """n sequences [n, T, C] of one modality as lines on one time axis, one after another with a gap: up to 3
    channels, or their mean over channels when there are more (a count modality's population rate)."""
    v = values.detach().float().cpu()
    if v.shape[-1] > 3:
        v = v.nanmean(-1, keepdim=True)  # [n, T, 1]
    n, T, C = v.shape
    gap = torch.full((n, max(1, T // 8), C), float("nan"))
    line = torch.cat([v, gap], 1).reshape(-1, C).numpy()  # [n (T + gap), C]: NaN breaks the line
    for c in range(C):
        ax.plot(line[:, c], lw=0.8, color=f"C{c}")
    if hi > lo:  # the modality's range in every row, so that rows compare
        ax.set_ylim(lo, hi)


def default_grid_subsets(M: int) -> Tensor:
    """The singletons and, for M > 2, the subsets leaving out one modality.  # [K, M]"""
    by_size = subsets_by_size(M)
    return torch.cat([by_size[1]] + ([by_size[M - 1]] if M > 2 else []))


@torch.no_grad()
def generation_grid(model, dataset, path, n_tuples: int = 4, subsets: Tensor | None = None, seed: int = 0) -> Path:
    """Cross-generation: the first row shows the real tuples; each further row conditions on one subset S (its inputs
    framed in green, real) and shows every other modality generated from it; columns are modalities. Sequences
    [T, C] are drawn as lines (`_trace_cell`), everything else as pictures."""
    names = list(model.names)
    data = as_eval_data(dataset, names)
    complete = data.avail.all(1).nonzero().squeeze(1)
    g = torch.Generator().manual_seed(seed)
    pick = complete[torch.randperm(len(complete), generator=g)[:n_tuples]]
    n = len(pick)
    subsets = default_grid_subsets(len(names)) if subsets is None else subsets.bool()
    K = len(subsets)
    dev = module_device(model)
    rows = pick.repeat(K)  # [K * n], subset-major
    mask = subsets.repeat_interleave(n, 0)  # [K * n, M]
    gen = model.impute(gather_rows(data.data, rows, dev), targets=names, avail=mask.to(dev))
    ranges = {m: (float(torch.nan_to_num(data.data[m][complete].float()).min()),
                  float(torch.nan_to_num(data.data[m][complete].float()).max())) for m in names}
    fig = Figure(figsize=(1.1 * n * len(names) + 1.5, 1.1 * (K + 1) + 0.6))
    axes = fig.subplots(K + 1, len(names), squeeze=False)
    labels = ["real"] + [f"given {subset_key(s, names)}" for s in subsets]
    for i in range(K + 1):
        for j, m in enumerate(names):
            ax = axes[i, j]
            given = i == 0 or bool(subsets[i - 1, j])
            vals = data.data[m][pick] if given else gen[m][(i - 1) * n:i * n]
            if is_sequence(data.data[m].shape[1:]) and data.data[m].is_floating_point():
                _trace_cell(ax, vals, *ranges[m])
            else:
                ax.imshow(_cell(vals, *ranges[m]), cmap="viridis", aspect="auto", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i > 0 and given:
                for side in ax.spines.values():
                    side.set_edgecolor("tab:green")
                    side.set_linewidth(3)
            if i == 0:
                ax.set_title(m, fontsize=9)
            if j == 0:
                ax.set_ylabel(labels[i], fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle("cross-generation: rows condition on a subset (green = given), columns are modalities",
                 fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _pca2(x: Tensor, ref: Tensor) -> Tensor:
    """Project x [N, D] on the first two principal axes of ref [N', D].  -> [N, 2]"""
    mean = ref.mean(0)
    _, _, V = torch.linalg.svd(ref - mean, full_matrices=False)  # [min(N', D), D]
    p = (x - mean) @ V[:2].T  # [N, <= 2]: fewer axes when N' or D is below 2
    return torch.cat([p, torch.zeros_like(x[:, :2 - p.shape[1]])], 1)


@torch.no_grad()
def latent_map(model, dataset, path, n: int = 1000, seed: int = 0) -> Path:
    """2-D PCA of the shared posterior means coloured by label (or by the first shared factor): one panel for the
    joint posterior and one per modality's own posterior, on common axes (fit on the joint)."""
    names = list(model.names)
    data = as_eval_data(dataset, names)
    data = data.take(data.avail.all(1).nonzero().squeeze(1))
    data = as_eval_data(data, names, n=n, seed=seed)
    dev = module_device(model)
    N, M = len(data), len(names)
    subsets = torch.cat([torch.ones(1, M, dtype=torch.bool), torch.eye(M, dtype=torch.bool)])  # [M + 1, M]
    rows = torch.arange(N).repeat(M + 1)
    z = model.embed(gather_rows(data.data, rows, dev), avail=subsets.repeat_interleave(N, 0).to(dev))["shared"]
    z = z.float().cpu().view(M + 1, N, -1)
    labels = data.labels.numpy() if data.labels is not None else None
    colour, clabel = None, ""
    if labels is None and data.factors:
        key = "shared" if "shared" in data.factors else next(iter(data.factors))
        colour, clabel = data.factors[key][:, 0].numpy(), f"factor {key}[0]"
    fig = Figure(figsize=(3.0 * (M + 1) + 1.0, 3.4), layout="constrained")
    axes = fig.subplots(1, M + 1, squeeze=False)[0]
    titles = ["joint"] + [f"q(z | {m})" for m in names]
    for i, ax in enumerate(axes):
        p = _pca2(z[i], z[0]).numpy()
        if labels is not None:  # one colour per class, with a legend
            for c in np.unique(labels):
                sel = labels == c
                ax.scatter(p[sel, 0], p[sel, 1], s=4, alpha=0.8, color=f"C{int(c) % 10}", label=str(int(c)))
        else:
            sc = ax.scatter(p[:, 0], p[:, 1], c=colour, cmap="viridis", s=4, alpha=0.8)
        ax.set_title(titles[i], fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if labels is not None:
        axes[-1].legend(title="label", fontsize=7, markerscale=3, loc="center left", bbox_to_anchor=(1.02, 0.5))
    elif colour is not None:
        fig.colorbar(sc, ax=list(axes), label=clabel, shrink=0.8)
    fig.suptitle("shared latent, 2-D PCA (axes of the joint posterior)", fontsize=9)
    return _save(fig, path)


def coherence_plot(curves: dict[str, dict], path, title: str = "conditional coherence",
                   chance: float | None = None) -> Path:
    """Coherence against the number of conditioning modalities: curves = {run label: {"1": value, "2": ...}}."""
    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    ax.set_xticks(sorted({int(s) for per_size in curves.values() for s in per_size}))
    for label, per_size in curves.items():
        sizes = sorted(per_size, key=int)
        ax.plot([int(s) for s in sizes], [per_size[s] for s in sizes], marker="o", label=label)
    if chance is not None:
        ax.axhline(chance, color="grey", ls="--", lw=1, label="chance")
    ax.set_xlabel("number of conditioning modalities |S|")
    ax.set_ylabel("coherence")
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def training_curves(records: list[dict], path, max_terms: int = 10) -> Path:
    """Losses per epoch (keys ending in "loss") and, in a second panel, up to max_terms other train/ terms."""
    numeric = lambda r, k: isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)  # noqa: E731
    keys = sorted({k for r in records for k in r if k != "epoch" and numeric(r, k)})
    losses = [k for k in keys if k.endswith("loss")]
    terms = [k for k in keys if k.startswith("train/") and k not in losses and "time" not in k and "lr" not in k]
    fig = Figure(figsize=(10, 3.5))
    ax1, ax2 = fig.subplots(1, 2)
    for ax, group, title in ((ax1, losses, "loss"), (ax2, terms[:max_terms], "training terms")):
        for k in group:
            pts = [(r.get("epoch", i), r[k]) for i, r in enumerate(records) if numeric(r, k)]
            if pts:
                ax.plot(*zip(*pts), marker=".", label=k)
        ax.set_xlabel("epoch")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if group:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def alignment_plot(alignment: dict, names: list[str], path) -> Path:
    """Left: recall@1 of cross-modal retrieval, queries (rows) against galleries (columns), chance in the title;
    right: the modality gap of each pair (0: the normalised centroids coincide, at most 2)."""
    M, rec = len(names), alignment["retrieval"]
    r1 = np.full((M, M), np.nan)  # [M, M]: the diagonal stays blank
    for key, v in rec["recall@1"].items():
        q, g = key.split("->")
        r1[names.index(q), names.index(g)] = v
    gaps = alignment["modality_gap"]
    fig = Figure(figsize=(4.0 + 0.9 * M + 0.5 * len(gaps), 3.6), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[M + 1, max(len(gaps), 2)])
    im = ax1.imshow(r1, vmin=0, vmax=1, cmap="viridis")
    for q, g in zip(*np.nonzero(~np.isnan(r1))):
        ax1.text(g, q, f"{r1[q, g]:.3f}", ha="center", va="center", fontsize=7,
                 color="white" if r1[q, g] < 0.6 else "black")
    ax1.set_xticks(range(M), names, rotation=45, ha="right", fontsize=8)
    ax1.set_yticks(range(M), names, fontsize=8)
    ax1.set_xlabel("gallery m'")
    ax1.set_ylabel("query m")
    ax1.set_title(f"recall@1 (mean chance {rec['mean_chance']['recall@1']:.3f})", fontsize=9)
    fig.colorbar(im, ax=ax1, shrink=0.8)
    ax2.bar(range(len(gaps)), list(gaps.values()), color="tab:orange")
    ax2.set_xticks(range(len(gaps)), list(gaps), rotation=45, ha="right", fontsize=8)
    ax2.set_ylabel("||centroid_m - centroid_m'||")
    ax2.set_title("modality gap (L2-normalised means)", fontsize=9)
    ax2.grid(alpha=0.3, axis="y")
    return _save(fig, path)
