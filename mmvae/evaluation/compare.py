"""Several evaluated runs side by side: one table (compare.md, compare.json) and one coherence plot."""
from __future__ import annotations

import json
from pathlib import Path

from ..atomic import write_json, write_text
from ..errors import InputError
from .markdown import table
from .plots import coherence_plot
from .run import evaluate_run
from .run_files import json_safe


def compare_runs(run_dirs, out, evaluate_missing: bool = True, **evaluate_kw) -> dict:
    """Several runs side by side: out/compare.md (one table), out/compare.json and out/coherence.png (one line
    per run). Uses each run's metrics.json, evaluating runs that have none when evaluate_missing."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run_dirs = [Path(rd) for rd in run_dirs]
    runs = [_metrics(rd, evaluate_missing, evaluate_kw) for rd in run_dirs]
    labels = [rd.name for rd in run_dirs]
    if len(set(labels)) < len(labels):
        labels = [str(rd) for rd in run_dirs]
    rows = [_summary_row(label, r) for label, r in zip(labels, runs)]
    cohs = [r.get("coherence") or {} for r in runs]
    curves = {label: c["per_size"] for label, c in zip(labels, cohs) if "per_size" in c}  # label -> {size: mean}
    sizes = sorted({s for c in curves.values() for s in c}, key=int)
    header = ["run", "preset", "dataset", "coherence"] + [f"coh. size {s}" for s in sizes] + \
             ["joint coh.", "latent acc.", "imputation error", "log p(x_m given x_S)/dim"]
    cells = [[r["run"], r["preset"] or "n/a", r["dataset"], r["coherence"]] + [r["per_size"].get(s) for s in sizes]
             + [r["joint"], r["latent"], r["imputation_error"], r["loglik_per_dim"]] for r in rows]
    md = ["# Comparison\n", table(header, cells)]
    if curves:
        coherence_plot(curves, out / "coherence.png", title="conditional coherence by run")
        md.append("![coherence versus number of conditioning modalities](coherence.png)\n")
    write_text(out / "compare.md", "\n".join(md))
    result = json_safe({"runs": rows, "plots": ["coherence.png"] if curves else []})
    write_json(out / "compare.json", result)
    return result


def _metrics(run_dir: Path, evaluate_missing: bool, evaluate_kw: dict) -> dict:
    """The run's metrics.json, or a fresh evaluation of it when it has none and evaluate_missing."""
    path = run_dir / "metrics.json"
    if path.exists():
        return json.loads(path.read_text())
    if evaluate_missing:
        return evaluate_run(run_dir, **evaluate_kw)
    raise InputError(f"{run_dir} has no metrics.json; run `mmvae evaluate {run_dir}` first")


def _summary_row(label: str, r: dict) -> dict:
    """One run's headline numbers (None where a metric is missing)."""
    coh, lat, imp = r.get("coherence") or {}, r.get("latent") or {}, r.get("imputation") or {}
    ll = imp.get("conditional_loglik") or {}
    return {"run": label, "preset": r.get("preset"), "dataset": r["settings"]["dataset"],
            "coherence": coh.get("mean"), "per_size": coh.get("per_size", {}), "joint": coh.get("joint"),
            "latent": lat.get("mean"), "imputation_error": imp.get("error_mean"),
            "loglik_per_dim": ll.get("loglik_per_dim_mean")}
