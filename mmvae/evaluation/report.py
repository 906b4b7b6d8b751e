"""Evaluate a run folder end to end (metrics.json, report.md and its plots) and compare several runs.

This module owns the evaluation's I/O: it loads the model and the dataset named in the run's config.json, trains or
reuses the cached coherence classifiers, calls the pure evaluators, draws the plots and writes the files.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from ..errors import CheckpointError, InputError
from .classifiers import check_accuracy, classifiers_match, load_classifiers, save_classifiers, train_classifiers
from .coherence import conditional_coherence, joint_coherence
from .disentanglement import latent_disentanglement
from .imputation import conditional_loglik, imputation_error
from .plots import coherence_plot, generation_grid, latent_map, training_curves
from .probe import latent_classification
from .subset_batches import as_eval_data, resolve_device

METRICS = ("coherence", "latent", "imputation", "disentanglement")
CLASSIFIER_DIR = "classifiers"

#: evaluation settings, full and quick (`mmvae demo`)
SETTINGS = {
    False: {"classifier_epochs": 10, "min_accuracy": 0.8, "coherence_samples": 1, "joint_samples": 1000,
            "probe_n_train": 10_000, "imputation_samples": 10, "imputation_n_tuples": 1000, "loglik_K": 50,
            "batch_rows": None, "plot_tuples": 4, "map_points": 1000},
    True: {"classifier_epochs": 5, "min_accuracy": 0.8, "coherence_samples": 1, "joint_samples": 500,
           "probe_n_train": 2000, "imputation_samples": 5, "imputation_n_tuples": 200, "loglik_K": 10,
           "batch_rows": None, "plot_tuples": 4, "map_points": 500},
}


def _clean(obj):
    """JSON-safe copy: non-finite floats become None, tuples lists, tensors numbers."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _clean(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def read_run_config(run_dir) -> dict:
    """The run folder's config.json (an empty dict if there is none)."""
    path = Path(run_dir) / "config.json"
    return json.loads(path.read_text()) if path.exists() else {}


def read_history(run_dir) -> list[dict]:
    """The run's metrics.jsonl as a list of per-epoch dicts (empty when absent)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def dataset_spec(config: dict) -> tuple[str, dict]:
    """(name, keyword options) of the dataset named in a run config: "dataset": {"name": ..., ...} or a name."""
    spec = config.get("dataset")
    if spec is None:
        raise InputError("the run's config.json names no dataset (key 'dataset'); cannot evaluate it")
    if isinstance(spec, str):
        return spec, {}
    spec = dict(spec)
    return spec.pop("name"), spec


def get_classifiers(run_dir, train, test, device, epochs: int, seed: int) -> tuple[dict, bool]:
    """Cached classifiers from run_dir/classifiers when they were trained on exactly this data, else new ones
    (trained, then saved there). -> (classifiers, reused)"""
    folder = Path(run_dir) / CLASSIFIER_DIR
    try:
        cached = load_classifiers(folder, map_location=device)
    except CheckpointError:  # written by another version of the classifiers: retrain and overwrite
        cached = None
    if classifiers_match(cached, train):
        return cached, True
    clfs = train_classifiers(train, test, epochs=epochs, device=device, seed=seed)
    save_classifiers(clfs, folder)
    return clfs, False


def evaluate_run(run_dir, metrics=METRICS, out=None, device: str = "auto", seed: int = 0, n_test: int | None = None,
                 quick: bool = False, classifiers: dict | None = None, **overrides) -> dict:
    """Evaluate the model in `run_dir` on its dataset's test split; write metrics.json and report.md (with PNGs)
    to `out` (default: the run folder). Returns what metrics.json holds.

    metrics: any of "coherence", "latent", "imputation", "disentanglement" (those that do not apply to the
    dataset are recorded as skipped). classifiers: your own coherence classifiers {modality: x -> logits};
    otherwise they are trained (or reused) in run_dir/classifiers. overrides: any key of SETTINGS.
    """
    from .. import load
    from ..datasets import get_dataset

    start = time.time()
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir
    out.mkdir(parents=True, exist_ok=True)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise InputError(f"unknown metric {unknown[0]!r}; choose from {list(METRICS)}")
    bad = set(overrides) - set(SETTINGS[False])
    if bad:
        raise InputError(f"unknown evaluation setting(s) {sorted(bad)}; known: {sorted(SETTINGS[False])}")
    cfg = {**SETTINGS[bool(quick)], **overrides}
    dev = resolve_device(device)
    config = read_run_config(run_dir)
    name, ds_kw = dataset_spec(config)
    model = load(run_dir, map_location=dev).eval()
    names = list(model.names)
    train_set, test_set = get_dataset(name, "train", **ds_kw), get_dataset(name, "test", **ds_kw)
    train = as_eval_data(train_set, names)
    test = as_eval_data(test_set, names, n=n_test, seed=seed)
    if cfg["batch_rows"] is None:  # rows (tuples x subsets, x samples where drawn) per model call
        cfg["batch_rows"] = 200_000 if dev.type == "cuda" else 20_000
    rows = cfg["batch_rows"]
    result: dict = {
        "run": str(run_dir), "preset": config.get("preset"),
        "settings": {"dataset": name, "dataset_options": ds_kw, "split": "test", "n_test": len(test),
                     "n_train_available": len(train), "seed": seed, "device": str(dev), "quick": bool(quick),
                     "metrics": list(metrics), **cfg},
        "timings_s": {},
    }
    plots: dict[str, str] = {}

    def timed(key, fn):
        torch.manual_seed(seed)
        t = time.time()
        try:
            return fn()
        finally:
            result["timings_s"][key] = time.time() - t

    if "coherence" in metrics:
        if test.labels is None or train.labels is None:
            result["coherence"] = {"skipped": "the dataset has no class labels"}
        else:
            reused = None
            if classifiers is None:
                classifiers, reused = timed("classifiers", lambda: get_classifiers(
                    run_dir, train_set, test_set, dev, cfg["classifier_epochs"], seed))
            result["classifiers"] = {
                "source": "user" if reused is None else ("cached" if reused else "trained"),
                "folder": None if reused is None else str(run_dir / CLASSIFIER_DIR),
                "min_accuracy": cfg["min_accuracy"],
                "per_modality": {m: getattr(c, "meta", {}) for m, c in classifiers.items()}}
            try:
                check_accuracy(classifiers, cfg["min_accuracy"])
            except InputError as e:
                result["coherence"] = {"refused": str(e)}
            else:
                coh = timed("coherence", lambda: conditional_coherence(
                    model, test, classifiers, batch_size=rows, n_samples=cfg["coherence_samples"]))
                coh.update(timed("joint_coherence", lambda: joint_coherence(model, classifiers,
                                                                            cfg["joint_samples"])))
                coh["chance"] = 1.0 / (test.num_classes or int(test.labels.max()) + 1)
                result["coherence"] = coh
                plots["coherence"] = str(coherence_plot({run_dir.name: coh["per_size"]}, out / "coherence.png",
                                                        chance=coh["chance"]).name)
    if "latent" in metrics:
        if test.labels is None or train.labels is None:
            result["latent"] = {"skipped": "the dataset has no class labels"}
        else:
            result["latent"] = timed("latent", lambda: latent_classification(
                model, train, test, n_train=cfg["probe_n_train"], seed=seed, batch_size=rows))
    if "imputation" in metrics:
        sub = as_eval_data(test, names, n=cfg["imputation_n_tuples"], seed=seed)
        imp = timed("imputation", lambda: imputation_error(model, sub, n_samples=cfg["imputation_samples"],
                                                            batch_size=rows))
        if hasattr(model, "posterior") and hasattr(model, "prior"):
            imp["conditional_loglik"] = timed("conditional_loglik", lambda: conditional_loglik(
                model, sub, K=cfg["loglik_K"], batch_size=rows))
        result["imputation"] = imp
    if "disentanglement" in metrics:
        if test.factors is None:
            result["disentanglement"] = {"skipped": "the dataset yields no factors"}
        else:
            result["disentanglement"] = timed("disentanglement", lambda: latent_disentanglement(
                model, train, test, seed=seed))

    torch.manual_seed(seed)
    t = time.time()
    plots["generation_grid"] = generation_grid(model, test, out / "generation_grid.png",
                                               n_tuples=cfg["plot_tuples"], seed=seed).name
    plots["latent_map"] = latent_map(model, test, out / "latent_map.png", n=cfg["map_points"], seed=seed).name
    history = read_history(run_dir)
    if history:
        plots["training_curves"] = training_curves(history, out / "training_curves.png").name
    result["timings_s"]["plots"] = time.time() - t
    result["plots"] = plots
    result["time_s"] = time.time() - start
    result = _clean(result)
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "report.md").write_text(render_report(result, history))
    return result


# ------------------------------------------------------------------ markdown
def _f(v, digits: int = 3) -> str:
    return "n/a" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_f(c) if not isinstance(c, str) else c for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _matrix(cells: dict, value=lambda v: v) -> str:
    """An "S->m" dict as a table: rows are subsets S, columns target modalities."""
    subsets = list(dict.fromkeys(k.split("->")[0] for k in cells))
    targets = sorted({k.split("->")[1] for k in cells}, key=lambda s: (len(s), s))
    rows = [[s] + [value(cells[f"{s}->{m}"]) if f"{s}->{m}" in cells else "" for m in targets] for s in subsets]
    return _table(["given \\ generated"] + targets, rows)


def _skipped(section: dict) -> str | None:
    return section.get("skipped") or section.get("refused")


def render_report(result: dict, history: list[dict] | None = None) -> str:
    """report.md from a metrics.json dict: readable on its own, plots embedded by relative path."""
    s, plots = result["settings"], result.get("plots", {})
    md = [f"# Evaluation of `{result['run']}`\n",
          f"Preset: {result.get('preset') or 'n/a'}. Dataset **{s['dataset']}** {s.get('dataset_options') or ''}, "
          f"split `{s['split']}`, {s['n_test']} test tuples, seed {s['seed']}, device `{s['device']}`"
          f"{', quick settings' if s.get('quick') else ''}. Evaluation took {result['time_s']:.1f} s.\n"]
    if history:
        last = history[-1]
        md.append(f"Training: {len(history)} epochs logged; last epoch {last.get('epoch')}: "
                  + ", ".join(f"{k} {_f(v)}" for k, v in last.items() if k.endswith("loss")) + ".\n")
    if "training_curves" in plots:
        md.append(f"![training curves]({plots['training_curves']})\n")

    coh = result.get("coherence")
    if coh is not None:
        md.append("## Coherence\n")
        md.append("Conditional coherence: for every subset S of observed modalities and every modality m not in S, "
                  "x_m is generated from x_S, classified by a classifier trained on real x_m, and compared with the "
                  "tuple's label. Joint coherence: fraction of prior samples on which all classifiers agree.\n")
        clf = result.get("classifiers")
        if clf:
            md.append(f"Classifiers ({clf['source']}; scoring refused below test accuracy "
                      f"{clf['min_accuracy']:.2f}):\n")
            md.append(_table(["modality", "test accuracy", "train rows", "data sha256"],
                             [[m, v.get("test_accuracy"), v.get("n_train", "n/a"),
                               f"`{v['checksum'][:12]}…`" if v.get("checksum") else "n/a"]
                              for m, v in clf["per_modality"].items()]))
        if _skipped(coh):
            md.append(f"**Not scored:** {_skipped(coh)}\n")
        else:
            md.append(f"Mean over all (S, m): **{_f(coh['mean'])}**; joint coherence **{_f(coh.get('joint'))}** "
                      f"({coh.get('n')} samples); chance {_f(coh.get('chance'))}.\n")
            md.append(_table(["subset size"] + list(coh["per_size"]), [["coherence"] + list(coh["per_size"].values())]))
            if "coherence" in plots:
                md.append(f"![coherence versus number of conditioning modalities]({plots['coherence']})\n")
            md.append("<details><summary>Coherence per (S, m)</summary>\n\n" + _matrix(coh["matrix"])
                      + "\n</details>\n")

    if "generation_grid" in plots:
        md.append("## Cross-generation\n")
        md.append("First row: real test tuples. Each further row conditions on the subset named on the left (its "
                  "inputs framed in green) and generates the other modalities.\n")
        md.append(f"![cross-generation grid]({plots['generation_grid']})\n")

    lat = result.get("latent")
    if lat is not None or "latent_map" in plots:
        md.append("## Latent representation\n")
    if lat is not None:
        if _skipped(lat):
            md.append(f"Latent classification skipped: {_skipped(lat)}\n")
        else:
            md.append(f"Linear probe (multinomial logistic regression, C = {lat.get('C')}, standardised features) on "
                      f"posterior means, trained on N = {lat['n_train']} training tuples, tested on {lat['n_test']}. "
                      f"Mean over subsets **{_f(lat['mean'])}**.\n")
            md.append(_table(["subset size"] + list(lat["per_size"]), [["accuracy"] + list(lat["per_size"].values())]))
            md.append(_table(["subset (shared latent)", "accuracy"], [[k, v] for k, v in lat["subsets"].items()]))
            if lat.get("private"):
                md.append(_table(["private latent of", "accuracy"], [[k, v] for k, v in lat["private"].items()]))
    if "latent_map" in plots:
        md.append(f"![latent map]({plots['latent_map']})\n")

    imp = result.get("imputation")
    if imp is not None:
        md.append("## Imputation\n")
        metric = ", ".join(sorted(set(imp.get("error_metric", {}).values()))) or "error"
        md.append(f"Error of x_m imputed from x_S ({metric}) on {imp['n_tuples']} test tuples, averaged over "
                  f"{imp['n_samples']} samples; spread = per-dimension standard deviation across those samples (the "
                  f"model's own uncertainty).\n")
        ll = imp.get("conditional_loglik")
        header = ["subset size", "error", "spread"]
        header += ["log p(x_m given x_S) / dim", "expected NLL / dim"] if ll else []
        rows = [[k, imp["error_per_size"][k], imp["spread_per_size"].get(k)]
                + ([ll["loglik_per_dim_per_size"].get(k), ll["nll_per_dim_per_size"].get(k)] if ll else [])
                for k in imp["error_per_size"]]
        md.append(_table(header, rows))
        if ll:
            md.append(f"log p(x_m | x_S): self-normalised importance sampling with K = {ll['K']} draws from "
                      f"q(z | x_S) (private latents of m from their prior).\n")
        md.append("<details><summary>Error per (S, m)</summary>\n\n"
                  + _matrix(imp["matrix"], lambda v: f"{v['error']:.4f} ± {v['spread']:.4f}") + "\n</details>\n")

    dis = result.get("disentanglement")
    if dis is not None:
        md.append("## Shared/private disentanglement\n")
        if _skipped(dis):
            md.append(f"Skipped: {_skipped(dis)}\n")
        else:
            md.append(f"Held-out R² of a linear regression from each latent block (rows) to each known factor "
                      f"(columns); fit on {dis['n_train']} training tuples, scored on {dis['n_test']} test tuples. "
                      f"Ideal: shared → shared and private/m → m near 1, the rest near 0.\n")
            factors = list(next(iter(dis["r2"].values())))
            md.append(_table(["block"] + factors, [[b] + [row[f] for f in factors] for b, row in dis["r2"].items()]))

    md.append("## Timings\n")
    md.append(_table(["step", "seconds"], [[k, v] for k, v in result.get("timings_s", {}).items()]))
    return "\n".join(md)


# ------------------------------------------------------------------ compare
def compare_runs(run_dirs, out, evaluate_missing: bool = True, **evaluate_kw) -> dict:
    """Several runs side by side: out/compare.md (one table), out/compare.json and out/coherence.png (one line
    per run). Uses each run's metrics.json, evaluating runs that have none when evaluate_missing."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs, run_dirs = [], [Path(rd) for rd in run_dirs]
    for rd in run_dirs:
        path = rd / "metrics.json"
        if path.exists():
            runs.append(json.loads(path.read_text()))
        elif evaluate_missing:
            runs.append(evaluate_run(rd, **evaluate_kw))
        else:
            raise InputError(f"{rd} has no metrics.json; run `mmvae evaluate {rd}` first")
    labels = [rd.name for rd in run_dirs]
    if len(set(labels)) < len(labels):
        labels = [str(rd) for rd in run_dirs]
    rows, curves, sizes = [], {}, []
    for label, r in zip(labels, runs):
        coh, lat, imp = r.get("coherence") or {}, r.get("latent") or {}, r.get("imputation") or {}
        ll = imp.get("conditional_loglik") or {}
        if "per_size" in coh:
            curves[label] = coh["per_size"]
            sizes = sorted(set(sizes) | set(coh["per_size"]), key=int)
        rows.append({"run": label, "preset": r.get("preset"), "dataset": r["settings"]["dataset"],
                     "coherence": coh.get("mean"), "per_size": coh.get("per_size", {}), "joint": coh.get("joint"),
                     "latent": lat.get("mean"), "imputation_error": imp.get("error_mean"),
                     "loglik_per_dim": ll.get("loglik_per_dim_mean")})
    header = ["run", "preset", "dataset", "coherence"] + [f"coh. size {s}" for s in sizes] + \
             ["joint coh.", "latent acc.", "imputation error", "log p(x_m given x_S)/dim"]
    table = [[r["run"], r["preset"] or "n/a", r["dataset"], r["coherence"]] + [r["per_size"].get(s) for s in sizes]
             + [r["joint"], r["latent"], r["imputation_error"], r["loglik_per_dim"]] for r in rows]
    md = ["# Comparison\n", _table(header, table)]
    if curves:
        coherence_plot(curves, out / "coherence.png", title="conditional coherence by run")
        md.append("![coherence versus number of conditioning modalities](coherence.png)\n")
    (out / "compare.md").write_text("\n".join(md))
    result = _clean({"runs": rows, "plots": ["coherence.png"] if curves else []})
    (out / "compare.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
