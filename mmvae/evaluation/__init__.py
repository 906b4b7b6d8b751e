"""Evaluators: coherence, imputation, latent classification and alignment, disentanglement, plots and a report.

Every evaluator is a function of a model's verbs (`impute`, `embed`, `sample`, `posterior`, `decode`) and a dataset,
returning plain dicts; subsets of each size are evaluated in one batched pass (`subset_batches`), their per-cell
results gathered by `cells.CellSums`. `run.evaluate_run` and `compare.compare_runs` own the files (`run_files`),
`markdown` renders report.md, `settings` holds the full and quick `EvalSettings`.
"""
from .alignment import canonical_correlations, latent_alignment, modality_gap, retrieval_recall
from .classifiers import (
    Classifier,
    check_accuracy,
    data_checksum,
    load_classifiers,
    save_classifiers,
    train_classifiers,
)
from .coherence import conditional_coherence, joint_coherence
from .compare import compare_runs
from .counts import count_bits_per_spike, training_null_rates
from .disentanglement import latent_disentanglement, r2_score, r2_table
from .imputation import conditional_loglik, imputation_error
from .markdown import render_report
from .plots import alignment_plot, coherence_plot, generation_grid, latent_map, training_curves
from .probe import fit_logistic, latent_classification, linear_probe
from .run import evaluate_run
from .sequence_plots import count_rasters, latent_trajectories, sensor_traces, step_error_plot
from .sequences import sequence_imputation_error
from .settings import METRICS, EvalSettings
from .subset_batches import EvalData, as_eval_data

__all__ = [
    "Classifier", "train_classifiers", "check_accuracy", "save_classifiers", "load_classifiers", "data_checksum",
    "conditional_coherence", "joint_coherence", "latent_classification", "linear_probe", "fit_logistic",
    "imputation_error", "conditional_loglik", "r2_table", "r2_score", "latent_disentanglement",
    "generation_grid", "latent_map", "coherence_plot", "training_curves", "alignment_plot",
    "latent_alignment", "modality_gap", "retrieval_recall", "canonical_correlations",
    "count_bits_per_spike", "training_null_rates", "sequence_imputation_error",
    "sensor_traces", "count_rasters", "latent_trajectories", "step_error_plot",
    "evaluate_run", "compare_runs", "render_report", "METRICS", "EvalSettings", "EvalData", "as_eval_data",
]
