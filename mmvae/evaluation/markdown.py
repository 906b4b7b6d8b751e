"""report.md from a metrics.json dict, and the Markdown tables it (and compare.md) is made of.

`render_report` is a pure function of the metrics dict (and the training history): one section per metric, each
readable on its own, with the plots embedded by relative path.
"""
from __future__ import annotations


def fmt(v, digits: int = 3) -> str:
    """A table cell: floats to `digits` decimals, None as "n/a", anything else as str."""
    return "n/a" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def table(header: list[str], rows: list[list]) -> str:
    """A Markdown table; non-string cells go through `fmt`."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def cell_matrix(cells: dict, value=lambda v: v) -> str:
    """An "S->m" dict as a table: rows are subsets S, columns target modalities."""
    subsets = list(dict.fromkeys(k.split("->")[0] for k in cells))
    targets = sorted({k.split("->")[1] for k in cells}, key=lambda s: (len(s), s))
    rows = [[s] + [value(cells[f"{s}->{m}"]) if f"{s}->{m}" in cells else "" for m in targets] for s in subsets]
    return table(["given \\ generated"] + targets, rows)


def _skipped(section: dict) -> str | None:
    return section.get("skipped") or section.get("refused")


def render_report(result: dict, history: list[dict] | None = None) -> str:
    """report.md from a metrics.json dict: readable on its own, plots embedded by relative path."""
    plots = result.get("plots", {})
    md = _overview(result, history)
    md += _coherence(result, plots)
    md += _generation(plots)
    md += _latent(result.get("latent"), plots)
    md += _alignment(result.get("alignment"), plots)
    md += _imputation(result.get("imputation"), plots)
    md += _counts(result.get("counts"))
    md += _sequences(plots)
    md += _disentanglement(result.get("disentanglement"))
    md.append("## Timings\n")
    md.append(table(["step", "seconds"], [[k, v] for k, v in result.get("timings_s", {}).items()]))
    return "\n".join(md)


def _overview(result: dict, history: list[dict] | None) -> list[str]:
    """The title, the settings in one sentence, the training summary and its curves."""
    s, plots = result["settings"], result.get("plots", {})
    md = [f"# Evaluation of `{result['run']}`\n",
          f"Preset: {result.get('preset') or 'n/a'}. Dataset **{s['dataset']}** {s.get('dataset_options') or ''}, "
          f"split `{s['split']}`, {s['n_test']} test tuples, seed {s['seed']}, device `{s['device']}`"
          f"{', quick settings' if s.get('quick') else ''}. Evaluation took {fmt(result.get('time_s'), 1)} s.\n"]
    if history:
        last = history[-1]
        md.append(f"Training: {len(history)} epochs logged; last epoch {last.get('epoch')}: "
                  + ", ".join(f"{k} {fmt(v)}" for k, v in last.items() if k.endswith("loss")) + ".\n")
    if "training_curves" in plots:
        md.append(f"![training curves]({plots['training_curves']})\n")
    return md


def _coherence(result: dict, plots: dict) -> list[str]:
    """Conditional and joint coherence, with the classifiers that scored them."""
    coh = result.get("coherence")
    if coh is None:
        return []
    md = ["## Coherence\n",
          "Conditional coherence: for every subset S of observed modalities and every modality m not in S, "
          "x_m is generated from x_S, classified by a classifier trained on real x_m, and compared with the "
          "tuple's label. Joint coherence: fraction of prior samples on which all classifiers agree.\n"]
    clf = result.get("classifiers")
    if clf:
        md.append(f"Classifiers ({clf['source']}; scoring refused below test accuracy "
                  f"{fmt(clf.get('min_accuracy'), 2)}):\n")
        md.append(table(["modality", "test accuracy", "train rows", "data sha256"],
                        [[m, v.get("test_accuracy"), v.get("n_train", "n/a"),
                          f"`{v['checksum'][:12]}…`" if v.get("checksum") else "n/a"]
                         for m, v in clf["per_modality"].items()]))
    if _skipped(coh):
        md.append(f"**Not scored:** {_skipped(coh)}\n")
        return md
    top = coh.get("top_class_share")
    md.append(f"Mean over all (S, m): **{fmt(coh['mean'])}**; joint coherence **{fmt(coh.get('joint'))}** "
              f"({coh.get('n')} samples"
              + (f"; the most frequent class takes {fmt(top)} of them" if top is not None else "")
              + f"); chance {fmt(coh.get('chance'))}.\n")
    md.append(table(["subset size"] + list(coh["per_size"]), [["coherence"] + list(coh["per_size"].values())]))
    if "coherence" in plots:
        md.append(f"![coherence versus number of conditioning modalities]({plots['coherence']})\n")
    md.append("<details><summary>Coherence per (S, m)</summary>\n\n" + cell_matrix(coh["matrix"]) + "\n</details>\n")
    return md


def _generation(plots: dict) -> list[str]:
    """The cross-generation grid."""
    if "generation_grid" not in plots:
        return []
    return ["## Cross-generation\n",
            "First row: real test tuples. Each further row conditions on the subset named on the left (its "
            "inputs framed in green) and generates the other modalities.\n",
            f"![cross-generation grid]({plots['generation_grid']})\n"]


def _latent(lat: dict | None, plots: dict) -> list[str]:
    """The linear probe's accuracies and the latent map."""
    md = ["## Latent representation\n"] if lat is not None or "latent_map" in plots else []
    if lat is not None and _skipped(lat):
        md.append(f"Latent classification skipped: {_skipped(lat)}\n")
    elif lat is not None:
        md.append(f"Linear probe (multinomial logistic regression, C = {lat.get('C')}, standardised features) on "
                  f"posterior means, trained on N = {lat['n_train']} training tuples, tested on {lat['n_test']}. "
                  f"Mean over subsets **{fmt(lat['mean'])}**.\n")
        md.append(table(["subset size"] + list(lat["per_size"]), [["accuracy"] + list(lat["per_size"].values())]))
        md.append(table(["subset (shared latent)", "accuracy"], [[k, v] for k, v in lat["subsets"].items()]))
        if lat.get("private"):
            md.append(table(["private latent of", "accuracy"], [[k, v] for k, v in lat["private"].items()]))
    if "latent_map" in plots:
        md.append(f"![latent map]({plots['latent_map']})\n")
    return md


def _alignment(al: dict | None, plots: dict, top: int = 8) -> list[str]:
    """Modality gap, retrieval recall@k and canonical correlations per modality pair, and their figure."""
    if al is None:
        return []
    md = ["## Cross-modal alignment\n"]
    if _skipped(al):
        return md + [f"Skipped: {_skipped(al)}\n"]
    rec, cca = al["retrieval"], al["cca"]
    ks = list(rec["mean"])
    md.append(f"From the unimodal shared posterior means (the mean of q(z | x_m), each modality alone) of the "
              f"{al['n_test']} test tuples; each pair on the tuples observing both. Mean modality gap "
              f"**{fmt(al['modality_gap_mean'])}**, mean "
              + ", ".join(f"{k} **{fmt(rec['mean'][k])}** (chance {fmt(rec['mean_chance'][k])})" for k in ks)
              + f", mean canonical correlation **{fmt(cca['mean_all'])}**.\n")
    md.append("Modality gap (Liang et al., 2022): the distance between the centroids of the two modalities' "
              "L2-normalised embeddings; 0 when they coincide, at most 2.\n")
    md.append(table(["pair", "modality gap"], [[p, v] for p, v in al["modality_gap"].items()]))
    md.append("Retrieval: the query's embedding in m ranks the embeddings in m' of all N tuples by cosine "
              "similarity; a hit when the same tuple is in the top k (ties in random order); chance k / N.\n")
    md.append(table(["query -> gallery"] + ks + [f"chance {k}" for k in ks] + ["N"],
                    [[p] + [rec[k][p] for k in ks] + [rec["chance"][k][p] for k in ks] + [rec["n"][p]]
                     for p in rec[ks[0]]]))
    if cca["correlations"]:
        n = max(len(c) for c in cca["correlations"].values())
        shown = min(n, top)
        md.append(f"Canonical correlations: CCA directions (ridge {cca['ridge']:g} x mean variance) fit on the "
                  f"{cca['fit']}, correlations of the projections on the {cca['scored']}; the top {shown} of "
                  f"{n} and the mean of all.\n")
        md.append(table(["pair"] + [f"rho_{j + 1}" for j in range(shown)] + ["mean", "train / test tuples"],
                        [[p] + [c[j] if j < len(c) else "" for j in range(shown)]
                         + [cca["mean"][p], f"{cca['n'][p]['train']} / {cca['n'][p]['test']}"]
                         for p, c in cca["correlations"].items()]))
    if "alignment" in plots:
        md.append(f"![recall@1 per ordered pair and the modality gap per pair]({plots['alignment']})\n")
    return md


def _imputation(imp: dict | None, plots: dict | None = None) -> list[str]:
    """Imputation error and spread per subset size, with the conditional log-likelihood when it was computed, and
    for sequence modalities the error per time step."""
    if imp is None:
        return []
    metric = ", ".join(sorted(set(imp.get("error_metric", {}).values()))) or "error"
    md = ["## Imputation\n",
          f"Error of x_m imputed from x_S ({metric}) on {imp['n_tuples']} test tuples, averaged over "
          f"{imp['n_samples']} samples; spread = per-dimension standard deviation across those samples (the "
          f"model's own uncertainty).\n"]
    ll = imp.get("conditional_loglik")
    header = ["subset size", "error", "spread"]
    header += ["log p(x_m given x_S) / dim", "expected NLL / dim"] if ll else []
    rows = [[k, imp["error_per_size"][k], imp["spread_per_size"].get(k)]
            + ([ll["loglik_per_dim_per_size"].get(k), ll["nll_per_dim_per_size"].get(k)] if ll else [])
            for k in imp["error_per_size"]]
    md.append(table(header, rows))
    if ll:
        md.append(f"log p(x_m | x_S): self-normalised importance sampling with K = {ll['K']} draws from "
                  f"q(z | x_S) (private latents of m from their prior).\n")
    md.append("<details><summary>Error per (S, m)</summary>\n\n"
              + cell_matrix(imp["matrix"], lambda v: f"{fmt(v.get('error'), 4)} ± {fmt(v.get('spread'), 4)}")
              + "\n</details>\n")
    return md + _per_step(imp.get("per_step"), plots or {})


def _per_step(seq: dict | None, plots: dict) -> list[str]:
    """The sequence modalities' whole-sequence imputation MSE per subset size and the error-per-step figure."""
    if not seq:
        return []
    md = ["### Imputation error per time step\n",
          "MSE of imputed sequences over samples and channels, padded (NaN) steps excluded; whole sequence = "
          "every valid entry pooled.\n"]
    sizes = sorted({k for per in seq["mse_per_size"].values() for k in per}, key=int)
    md.append(table(["sequence modality"] + [f"subset size {k}" for k in sizes],
                    [[m] + [per.get(k) for k in sizes] for m, per in seq["mse_per_size"].items()]))
    if "step_error" in plots:
        md.append(f"![imputation error per time step]({plots['step_error']})\n")
    return md


def _counts(counts: dict | None) -> list[str]:
    """Bits per spike of the count modalities, self- and cross-reconstruction; nothing when none has counts."""
    if counts is None or _skipped(counts):
        return []
    md = ["## Count modalities: bits per spike\n",
          f"(log L(x | predicted rates) - log L(x | null)) / (spikes ln 2), Poisson log-likelihoods, null = "
          f"{counts.get('null', 'per-neuron mean rates')}; > 0 beats the mean rate. Self: decoded from the "
          f"modality's own posterior; cross: from the other modalities' subset posterior; rates averaged over "
          f"{counts.get('n_samples')} draws of z.\n",
          f"Mean self **{fmt(counts.get('mean_self'))}**, mean cross **{fmt(counts.get('mean_cross'))}**.\n"]
    names = list(dict.fromkeys([*counts.get("self", {}), *counts.get("cross", {})]))
    md.append(table(["modality", "self bits/spike", "cross bits/spike", "test trials"],
                    [[m, counts["self"].get(m), counts.get("cross", {}).get(m), counts.get("n_rows", {}).get(m)]
                     for m in names]))
    return md


def _sequences(plots: dict) -> list[str]:
    """The sequence figures: sensor traces, count rasters, latent trajectories."""
    figures = [("sequence_traces", "Sensor traces", "Real (black) against the mean ± 2 sd of imputations from the "
                "other modalities, per channel; padded steps are not drawn"),
               ("count_rasters", "Count rasters", "Real counts against the rates imputed from the other modalities, "
                "neurons x time bins"),
               ("latent_trajectories", "Latent trajectories", "Left: the shared posterior mean of each trial (the "
                "latent is per trial), 2-D PCA, by condition; right: the decoded sequences per time bin, 2-D PCA, "
                "averaged per condition")]
    md = [f"### {title}\n\n{text}.\n\n![{title.lower()}]({plots[key]})\n" for key, title, text in figures
          if key in plots]
    return ["## Sequences\n"] + md if md else []


def _disentanglement(dis: dict | None) -> list[str]:
    """The R² table of latent blocks against known factors."""
    if dis is None:
        return []
    md = ["## Shared/private disentanglement\n"]
    if _skipped(dis):
        md.append(f"Skipped: {_skipped(dis)}\n")
        return md
    md.append(f"Held-out R² of a linear regression from each latent block (rows) to each known factor "
              f"(columns); fit on {dis['n_train']} training tuples, scored on {dis['n_test']} test tuples. "
              f"Ideal: shared → shared and private/m → m near 1, the rest near 0.\n")
    factors = list(next(iter(dis["r2"].values())))
    md.append(table(["block"] + factors, [[b] + [row[f] for f in factors] for b, row in dis["r2"].items()]))
    return md
