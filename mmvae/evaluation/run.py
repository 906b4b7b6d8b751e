"""Evaluate a run folder end to end: load its model and dataset, run each metric, write metrics.json, report.md
and the plots.

This module owns the evaluation's I/O; the metrics themselves are the pure evaluators of the sibling modules. Each
metric is one section function of an `_Evaluation` (what every section reads) returning its entries of
metrics.json, timed by a `Timer` that also reseeds torch before each step.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from ..atomic import write_json, write_text
from ..datasets.polymnist import cache_dir
from ..devices import resolve_device
from ..errors import InputError
from ..loading import load
from .alignment import latent_alignment
from .classifiers import check_accuracy
from .coherence import conditional_coherence, joint_coherence
from .counts import count_bits_per_spike, count_modalities, training_null_rates
from .disentanglement import latent_disentanglement
from .imputation import conditional_loglik, imputation_error
from .imputation_pass import imputation_with_loglik, shares_draws
from .markdown import render_report
from .plots import alignment_plot, coherence_plot, generation_grid, latent_map, training_curves
from .probe import latent_classification
from .run_files import (
    CLASSIFIER_DIR,
    dataset_spec,
    get_classifiers,
    json_safe,
    read_history,
    read_run_config,
    user_classifiers,
)
from .sequence_plots import count_rasters, latent_trajectories, sensor_traces, step_error_plot
from .sequences import sequence_imputation_error, sequence_modalities
from .settings import METRICS, EvalSettings
from .subset_batches import EvalData, as_eval_data


class Timer:
    """Wall-clock seconds of named steps, into `timings`; every step starts from torch.manual_seed(seed), so a
    metric's numbers do not depend on which metrics ran before it."""

    def __init__(self, timings: dict, seed: int):
        self.timings, self.seed = timings, seed

    @contextmanager
    def step(self, key: str):
        """Seed torch, run the block, record its seconds under `key` (also when it raises)."""
        torch.manual_seed(self.seed)
        t = time.time()
        try:
            yield
        finally:
            self.timings[key] = time.time() - t


@dataclass
class _Evaluation:
    """What every section of one evaluation reads (and the plots it adds to)."""

    run_dir: Path
    out: Path
    config: dict  # the run's config.json
    dataset: str  # the dataset's name and options, from config["dataset"]
    dataset_options: dict
    model: object
    train_set: object  # the datasets, for the classifiers
    test_set: object
    train: EvalData
    test: EvalData  # n_test rows of the test split
    settings: EvalSettings  # batch_rows resolved
    device: torch.device
    seed: int
    timer: Timer
    classifiers: dict | None = None  # the user's, else trained or cached
    classifier_dir: Path | None = None  # where the user's came from (`--classifiers DIR`)
    plots: dict[str, str] = field(default_factory=dict)


def evaluate_run(run_dir, metrics=METRICS, out=None, device: str = "auto", seed: int = 0, n_test: int | None = None,
                 quick: bool = False, classifiers: dict | str | Path | None = None, **overrides) -> dict:
    """Evaluate the model in `run_dir` on its dataset's test split; write metrics.json and report.md (with PNGs)
    to `out` (default: the run folder). Returns what metrics.json holds.

    metrics: any of "coherence", "latent", "alignment", "imputation", "counts", "disentanglement" (those that do
    not apply to the dataset are recorded as skipped; "counts" needs a modality with a count likelihood,
    "alignment" two modalities). classifiers: your own coherence classifiers {modality: x -> logits}, or a folder
    of them in the format `save_classifiers` writes (checked against the dataset, scored on its test rows);
    otherwise they are trained (or reused) in run_dir/classifiers. overrides: any field of EvalSettings.
    """
    start = time.time()
    out = Path(out) if out is not None else Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise InputError(f"unknown metric {unknown[0]!r}; choose from {list(METRICS)}")
    settings = (EvalSettings.quick() if quick else EvalSettings.full()).override(**overrides)
    timings: dict[str, float] = {}
    ev = _open(Path(run_dir), out, resolve_device(device), seed, n_test, settings, classifiers, timings)
    result: dict = {
        "run": str(ev.run_dir), "preset": ev.config.get("preset"),
        "settings": {"dataset": ev.dataset, "dataset_options": ev.dataset_options, "split": "test",
                     "n_test": len(ev.test), "n_train_available": len(ev.train), "seed": seed, "device": str(ev.device),
                     "quick": bool(quick), "metrics": list(metrics), **asdict(ev.settings)},
        "timings_s": timings,
    }
    for metric in METRICS:  # in this order whatever the order asked for
        if metric in metrics:
            result.update(SECTIONS[metric](ev))
    with ev.timer.step("plots"):
        history = read_history(ev.run_dir)
        _plots(ev, history)
    result["plots"] = ev.plots
    result["time_s"] = time.time() - start
    result = json_safe(result)
    report = render_report(result, history)  # rendered first: a failure leaves both files as they were
    write_json(out / "metrics.json", result)
    write_text(out / "report.md", report)
    return result


def _open(run_dir: Path, out: Path, dev: torch.device, seed: int, n_test: int | None, settings: EvalSettings,
          classifiers: dict | str | Path | None, timings: dict) -> _Evaluation:
    """Load the run's config, model and its dataset's splits; resolve batch_rows for the device."""
    from ..datasets import get_dataset

    config = read_run_config(run_dir)
    name, ds_kw = dataset_spec(config)
    model = load(run_dir, map_location=dev).eval()
    names = list(model.names)
    train_set, test_set = get_dataset(name, "train", **ds_kw), get_dataset(name, "test", **ds_kw)
    if settings.batch_rows is None:  # rows (tuples x subsets, x samples where drawn) per model call; on the CPU
        # chunks of 20k decoded rows spent a quarter of their time in the kernel (fresh buffers' page faults), 2k not
        settings = replace(settings, batch_rows=200_000 if dev.type == "cuda" else 2_000)
    train, test = as_eval_data(train_set, names), as_eval_data(test_set, names, n=n_test, seed=seed)
    folder = Path(classifiers) if isinstance(classifiers, (str, Path)) else None
    if folder is not None:  # checked before any metric runs
        classifiers = user_classifiers(folder, train, test, dev)
    return _Evaluation(run_dir, out, config, name, ds_kw, model, train_set, test_set, train, test, settings, dev,
                       seed, Timer(timings, seed), classifiers, folder)


def _coherence(ev: _Evaluation) -> dict:
    """"classifiers" (which, and how accurate) and "coherence" (conditional and joint), or why it was not scored."""
    if ev.test.labels is None or ev.train.labels is None:
        return {"coherence": {"skipped": "the dataset has no class labels"}}
    s, classifiers, source = ev.settings, ev.classifiers, "user"
    if classifiers is None:
        with ev.timer.step("classifiers"):
            shared = cache_dir() / "classifiers" if s.share_classifiers else None
            classifiers, source = get_classifiers(ev.run_dir, ev.train_set, ev.test_set, ev.device,
                                                  s.classifier_epochs, ev.seed, shared=shared)
    section = {"classifiers": {
        "source": source,  # user | cached (this run's) | shared (another run's, same data) | trained
        "folder": str(ev.run_dir / CLASSIFIER_DIR) if source != "user" else
        (str(ev.classifier_dir) if ev.classifier_dir else None),
        "min_accuracy": s.min_accuracy,
        "per_modality": {m: getattr(c, "meta", {}) for m, c in classifiers.items()}}}
    try:
        check_accuracy(classifiers, s.min_accuracy)
    except InputError as e:
        section["coherence"] = {"refused": str(e)}
        return section
    with ev.timer.step("coherence"):
        coh = conditional_coherence(ev.model, ev.test, classifiers, batch_size=s.batch_rows,
                                    n_samples=s.coherence_samples, min_accuracy=None)  # checked above
    with ev.timer.step("joint_coherence"):
        coh.update(joint_coherence(ev.model, classifiers, s.joint_samples, min_accuracy=None))
    coh["chance"] = 1.0 / (ev.test.num_classes or int(ev.test.labels.max()) + 1)
    section["coherence"] = coh
    ev.plots["coherence"] = str(coherence_plot({ev.run_dir.name: coh["per_size"]}, ev.out / "coherence.png",
                                               chance=coh["chance"]).name)
    return section


def _latent(ev: _Evaluation) -> dict:
    """"latent": linear-probe accuracies of the class from each subset's posterior mean."""
    if ev.test.labels is None or ev.train.labels is None:
        return {"latent": {"skipped": "the dataset has no class labels"}}
    with ev.timer.step("latent"):
        return {"latent": latent_classification(ev.model, ev.train, ev.test, n_train=ev.settings.probe_n_train,
                                                seed=ev.seed, batch_size=ev.settings.batch_rows)}


def _alignment(ev: _Evaluation) -> dict:
    """"alignment": modality gap, cross-modal retrieval and canonical correlations of the unimodal shared
    posterior means, per modality pair (CCA fit on training tuples, everything scored on the test split)."""
    with ev.timer.step("alignment"):
        out = latent_alignment(ev.model, ev.train, ev.test, n_train=ev.settings.alignment_n_train, seed=ev.seed,
                               batch_size=ev.settings.batch_rows)
    if out.get("modality_gap"):
        ev.plots["alignment"] = alignment_plot(out, list(ev.model.names), ev.out / "alignment.png").name
    return {"alignment": out}


def _imputation(ev: _Evaluation) -> dict:
    """"imputation": errors on imputation_n_tuples test tuples, and log p(x_m | x_S) for models with a posterior;
    both from one importance pass when the imputations can be the first of its draws (`shares_draws`)."""
    s = ev.settings
    sub = as_eval_data(ev.test, list(ev.model.names), n=s.imputation_n_tuples, seed=ev.seed)
    if shares_draws(ev.model, s.imputation_samples, s.loglik_K):
        with ev.timer.step("imputation+conditional_loglik"):
            imp = imputation_with_loglik(ev.model, sub, n_samples=s.imputation_samples, K=s.loglik_K,
                                         batch_size=s.batch_rows)
    else:
        with ev.timer.step("imputation"):
            imp = imputation_error(ev.model, sub, n_samples=s.imputation_samples, batch_size=s.batch_rows)
        if hasattr(ev.model, "posterior") and hasattr(ev.model, "prior"):
            with ev.timer.step("conditional_loglik"):
                imp["conditional_loglik"] = conditional_loglik(ev.model, sub, K=s.loglik_K,
                                                               batch_size=s.batch_rows)
    if sequence_modalities(sub) and len(sub.names) > 1:
        with ev.timer.step("imputation_per_step"):
            imp["per_step"] = sequence_imputation_error(ev.model, sub, n_samples=s.imputation_samples,
                                                        batch_size=s.batch_rows)
        ev.plots["step_error"] = step_error_plot(imp["per_step"], ev.out / "step_error.png").name
    return {"imputation": imp}


def _counts(ev: _Evaluation) -> dict:
    """"counts": bits per spike of each count modality, self and cross, against the training set's per-neuron
    mean rates; skipped when no modality has a count likelihood."""
    names = count_modalities(ev.model)
    if not names:
        return {"counts": {"skipped": "no modality has a count likelihood"}}
    with ev.timer.step("counts"):
        null = training_null_rates(ev.train, names)
        out = count_bits_per_spike(ev.model, ev.test, names, n_samples=ev.settings.counts_samples,
                                   batch_size=ev.settings.batch_rows, null=null)
    out["null"] = "training set per-neuron mean rates"
    return {"counts": out}


def _disentanglement(ev: _Evaluation) -> dict:
    """"disentanglement": R² of each latent block against the dataset's known factors."""
    if ev.test.factors is None:
        return {"disentanglement": {"skipped": "the dataset yields no factors"}}
    with ev.timer.step("disentanglement"):
        return {"disentanglement": latent_disentanglement(ev.model, ev.train, ev.test, seed=ev.seed)}


SECTIONS = {"coherence": _coherence, "latent": _latent, "alignment": _alignment, "imputation": _imputation,
            "counts": _counts, "disentanglement": _disentanglement}


def _plots(ev: _Evaluation, history: list[dict]) -> None:
    """The cross-generation grid, the latent map, (with a history) the training curves and, for sequence
    modalities, the sensor traces, count rasters and latent trajectories, into ev.plots."""
    s = ev.settings
    ev.plots["generation_grid"] = generation_grid(ev.model, ev.test, ev.out / "generation_grid.png",
                                                  n_tuples=s.plot_tuples, seed=ev.seed).name
    ev.plots["latent_map"] = latent_map(ev.model, ev.test, ev.out / "latent_map.png", n=s.map_points,
                                        seed=ev.seed).name
    if history:
        ev.plots["training_curves"] = training_curves(history, ev.out / "training_curves.png").name
    _sequence_plots(ev)


def _sequence_plots(ev: _Evaluation) -> None:
    """Sensor traces (continuous sequences), count rasters (count sequences) and the latent trajectories, for
    datasets with sequence modalities [T, C] and tuples that observe every modality."""
    s, seqs = ev.settings, sequence_modalities(ev.test)
    if not seqs or not bool(ev.test.avail.all(1).any()):
        return
    counts = set(count_modalities(ev.model))
    sensors, rasters = [m for m in seqs if m not in counts], [m for m in seqs if m in counts]
    if sensors:
        ev.plots["sequence_traces"] = sensor_traces(ev.model, ev.test, ev.out / "sequence_traces.png", sensors,
                                                    n_tuples=min(s.plot_tuples, 3), n_draws=s.trace_draws,
                                                    seed=ev.seed).name
    if rasters:
        ev.plots["count_rasters"] = count_rasters(ev.model, ev.test, ev.out / "count_rasters.png", rasters,
                                                  n_trials=2, n_draws=s.trace_draws, seed=ev.seed).name
    ev.plots["latent_trajectories"] = latent_trajectories(ev.model, ev.test, ev.out / "latent_trajectories.png",
                                                          seqs, n=s.map_points, seed=ev.seed).name
