"""The study's table and figure, computed from the run folders afterwards (so a run done elsewhere joins them).

Each run folder with a config.json and a metrics.json gives one row (`run_row`): its model, beta and seed from
config.json's settings, and from metrics.json: the latent probe's accuracy from one modality (mean over |S| = 1) and
from all (the joint posterior), conditional coherence by subset size and joint coherence, and the mean cross-modal
imputation MSE; the self-reconstruction MSE comes from RUN/reconstruction.json (`reconstruction.py`). Rows of the
same model, beta and extra axes are one group: mean and sample standard deviation (ddof 1) over its seeds.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from ..atomic import replace_file

#: the columns of the table: key -> header
COLUMNS = {"recon_self": "self-recon MSE", "imputation_error": "imputation MSE", "probe_unimodal": "probe unimodal",
           "probe_joint": "probe joint", "coherence_mean": "coherence (cond.)", "coherence_joint": "coherence joint"}


def _number(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _section(metrics: dict, key: str) -> dict:
    value = metrics.get(key)
    return value if isinstance(value, dict) else {}


def run_row(folder: Path, axes: tuple[str, ...] = ()) -> dict | None:
    """One run's numbers (None for a folder without config.json or metrics.json)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file() or not (folder / "metrics.json").is_file():
        return None
    try:
        settings = json.loads((folder / "config.json").read_text()).get("settings", {})
        metrics = json.loads((folder / "metrics.json").read_text())
    except ValueError:  # a file cut short by a killed writer: not a finished run
        return None
    row = {"run": folder.name, "model": settings.get("model"), "beta": settings.get("beta"),
           "seed": settings.get("seed"), **{k: settings.get(k) for k in axes}}
    latent, coh, imp = _section(metrics, "latent"), _section(metrics, "coherence"), _section(metrics, "imputation")
    sizes = sorted(_section(latent, "per_size"), key=int)
    row["probe_unimodal"] = _number(latent["per_size"]["1"]) if "1" in sizes else None
    row["probe_joint"] = _number(latent["per_size"][sizes[-1]]) if len(sizes) > 1 else None
    row["coherence_mean"], row["coherence_joint"] = _number(coh.get("mean")), _number(coh.get("joint"))
    for size, value in _section(coh, "per_size").items():
        row[f"coherence_{size}"] = _number(value)
    row["imputation_error"] = _number(imp.get("error_mean"))
    rec = folder / "reconstruction.json"
    row["recon_self"] = _number(_read(rec).get("mean"))
    return row


def _order(value) -> tuple:
    """A sort key that puts None (a setting a run done elsewhere did not record) last."""
    return (value is None, value if isinstance(value, (int, float)) else 0)


def _read(path: Path) -> dict:
    """A JSON file's object, {} when absent or unreadable."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _mean_std(values: list) -> dict:
    """{"mean", "std" (ddof 1; None for fewer than 2 values), "n"} of the numbers among `values`."""
    xs = [v for v in values if v is not None]
    if not xs:
        return {"mean": None, "std": None, "n": 0}
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
    return {"mean": mean, "std": std, "n": len(xs)}


def summarise_rows(rows: list[dict], axes: tuple[str, ...] = ()) -> list[dict]:
    """Groups of rows by (model, beta, *axes), in first-seen order: seeds and mean/std of every numeric column."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["beta"], *(row.get(a) for a in axes)), []).append(row)
    out = []
    for key, members in groups.items():
        columns = [c for c in dict.fromkeys(k for r in members for k in r)
                   if c not in ("run", "model", "beta", "seed", *axes)]
        out.append({"model": key[0], "beta": key[1], **dict(zip(axes, key[2:])),
                    "seeds": sorted((r["seed"] for r in members), key=_order),
                    "metrics": {c: _mean_std([r.get(c) for r in members]) for c in columns}})
    return out


def _cell(stat: dict | None) -> str:
    if not stat or stat["mean"] is None:
        return "-"
    return f"{stat['mean']:.4g}" + (f" ± {stat['std']:.2g}" if stat["std"] is not None else "")


def render_markdown(groups: list[dict], axes: tuple[str, ...] = (), title: str = "Study",
                    statuses: dict | None = None) -> str:
    """study.md: one row per model and beta (and extra axes), mean ± std over seeds."""
    sizes = sorted({c.split("_")[1] for g in groups for c in g["metrics"]
                    if c.startswith("coherence_") and c.split("_")[1].isdigit()}, key=int)
    cols = list(COLUMNS) + [f"coherence_{s}" for s in sizes]
    heads = [COLUMNS.get(c, f"coherence {c.split('_')[1]} given") for c in cols]
    lines = [f"# {title}", "", "Mean ± standard deviation over seeds (ddof 1). self-recon MSE: x_m decoded from its "
             "own unimodal posterior (reconstruction.json); imputation MSE: x_m from x_S, m not in S, mean over "
             "cells; probe: linear-probe accuracy of the label from the posterior mean (unimodal: mean over single "
             "modalities; joint: all modalities); coherence: conditional (mean over cells, and by the number of "
             "modalities given) and joint (unconditional samples).",
             "", "| " + " | ".join(["model", "beta", *axes, "seeds", *heads]) + " |",
             "|" + "---|" * (3 + len(axes) + len(heads))]
    for g in groups:
        cells = [str(g["model"]), f"{g['beta']:g}" if g["beta"] is not None else "-", *(str(g[a]) for a in axes),
                 str(len(g["seeds"]))] + [_cell(g["metrics"].get(c)) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    if statuses:
        counts: dict[str, int] = {}
        for s in statuses.values():
            counts[s["status"]] = counts.get(s["status"], 0) + 1
        lines += ["", "Runs: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))]
        lines += [f"- {name}: {s['status']}" for name, s in statuses.items() if s["status"] != "done"]
    return "\n".join(lines) + "\n"


def _interpolate(points: list[tuple[float, float]], x: float) -> float | None:
    """y at x on the piecewise-linear curve through `points` (x, y), None outside its x range."""
    pts = sorted(points)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return pts[0][1] if len(pts) == 1 and pts[0][0] == x else None


def at_matched_error(groups: list[dict], x: str = "recon_self", ys=("probe_unimodal", "coherence_mean")) -> dict:
    """Each model's y at one common reconstruction error (the MMVM paper's comparison "at equal reconstruction
    error"): every model's beta curve (x, y) is linearly interpolated at the middle of the x range that the most
    models with at least two points span together (all of them when their ranges overlap; the models left out are
    listed; a model with one beta is read where its point lies).
    -> {"x": key, "at": x*, "range": [lo, hi], "models": {model: {y: value}}, "outside": [model, ...]},
    or {"x", "at": None, "why"} when no model has a curve."""
    curves = {}
    for model in dict.fromkeys(g["model"] for g in groups):
        mine = [g for g in groups if g["model"] == model]
        curves[model] = {y: [(p[1]["mean"], p[2]["mean"]) for p in _xy(mine, x, y)] for y in ys}
    spans = {m: (min(px for px, _ in c[ys[0]]), max(px for px, _ in c[ys[0]]))
             for m, c in curves.items() if len(c[ys[0]]) >= 2}
    if not spans:
        return {"x": x, "at": None, "why": "no model has two or more betas with both numbers"}
    inside = _most_overlapping(spans)
    lo, hi = max(spans[m][0] for m in inside), min(spans[m][1] for m in inside)
    at = (lo + hi) / 2
    models = {m: {y: _interpolate(curves[m][y], at) for y in ys} for m in curves if m in inside or m not in spans}
    return {"x": x, "at": at, "range": [lo, hi], "outside": [m for m in spans if m not in inside],
            "models": {m: v for m, v in models.items() if any(val is not None for val in v.values())}}


def _most_overlapping(spans: dict) -> list:
    """The models whose [lo, hi] spans all contain the point that the most spans contain (first such endpoint)."""
    points = sorted({v for span in spans.values() for v in span})
    cover = [[m for m, (lo, hi) in spans.items() if lo <= p <= hi] for p in points]
    return max(cover, key=len)


def render_matched(matched: dict) -> str:
    """The markdown paragraph and table of `at_matched_error`."""
    if matched.get("at") is None:
        return f"\nAt matched reconstruction error: not computed ({matched.get('why')}).\n"
    outside = matched.get("outside") or []
    span = "every model's beta curve spans" if not outside else \
        f"the most models' beta curves span together; {', '.join(outside)}: no point in that range"
    ys = list(next(iter(matched["models"].values()), {}))
    lines = ["", f"At matched reconstruction error ({COLUMNS[matched['x']]} = {matched['at']:.4g}, the middle of "
             f"the range [{matched['range'][0]:.4g}, {matched['range'][1]:.4g}] that {span}; "
             "each curve linearly interpolated):", "", "| model | " + " | ".join(COLUMNS[y] for y in ys) + " |",
             "|---|" + "---|" * len(ys)]
    best = {y: max((v[y] for v in matched["models"].values() if v[y] is not None), default=None) for y in ys}
    for model, vals in matched["models"].items():
        cells = ["-" if vals[y] is None else (f"**{vals[y]:.4g}**" if vals[y] == best[y] else f"{vals[y]:.4g}")
                 for y in ys]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _xy(groups: list[dict], x: str, y: str):
    pts = [(g["beta"], g["metrics"].get(x), g["metrics"].get(y)) for g in groups]
    pts = [(b, sx, sy) for b, sx, sy in pts if sx and sy and sx["mean"] is not None and sy["mean"] is not None]
    return sorted(pts, key=lambda p: _order(p[0]))


def study_figure(groups: list[dict], path: Path, labels: dict | None = None) -> Path | None:
    """The MMVM paper's figure: reconstruction error against probe accuracy (|S|=1) and against conditional
    coherence, one line per model across beta, error bars over seeds. None when nothing can be drawn.
    labels: axis titles that replace COLUMNS' for some keys."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = "recon_self" if any(g["metrics"].get("recon_self", {}).get("mean") is not None for g in groups) \
        else "imputation_error"
    names = {**COLUMNS, **(labels or {})}
    fig, axs = plt.subplots(1, 2, figsize=(10, 4))
    drawn = False
    for ax, y in zip(axs, ("probe_unimodal", "coherence_mean")):
        if not any(_xy(groups, x, y)):
            ax.text(0.5, 0.5, f"no {names[y]} in the runs' metrics.json", ha="center", transform=ax.transAxes)
        for model in dict.fromkeys(g["model"] for g in groups):
            pts = _xy([g for g in groups if g["model"] == model], x, y)
            if not pts:
                continue
            drawn = True
            ax.errorbar([p[1]["mean"] for p in pts], [p[2]["mean"] for p in pts], label=model, marker="o",
                        xerr=[p[1]["std"] or 0.0 for p in pts], yerr=[p[2]["std"] or 0.0 for p in pts], capsize=3)
            for b, sx, sy in pts:
                ax.annotate(f"β={b:g}", (sx["mean"], sy["mean"]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
        ax.set_xlabel(names[x] + " (lower is better)")
        ax.set_ylabel(names[y])
    if not drawn:
        plt.close(fig)
        return None
    axs[0].legend(fontsize=8)
    fig.tight_layout()
    replace_file(path, lambda f: fig.savefig(f, dpi=120, format="png"))
    plt.close(fig)
    return path
