"""What `evaluate_run` computes and how hard it tries: the metric names and the full and quick settings."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

from ..errors import InputError

METRICS = ("coherence", "latent", "alignment", "imputation", "counts", "disentanglement")


@dataclass(frozen=True)
class EvalSettings:
    """Sample sizes and thresholds of one evaluation; the defaults are the full settings (numbers to publish)."""

    classifier_epochs: int = 8  # training epochs of each coherence classifier (one-cycle schedule)
    min_accuracy: float = 0.8  # coherence is refused when a classifier's test accuracy is below this
    share_classifiers: bool = True  # reuse classifiers trained on the same data by other runs (user cache folder)
    coherence_samples: int = 1  # generations per (S, tuple) in conditional coherence
    joint_samples: int = 1000  # prior samples in joint coherence
    probe_n_train: int = 10_000  # training tuples of the linear probe
    imputation_samples: int = 10  # imputations per (S, tuple)
    imputation_n_tuples: int = 1000  # test tuples the imputation metrics use
    loglik_K: int = 50  # importance samples of log p(x_m | x_S)
    batch_rows: int | None = None  # rows per model call; None: 200k on CUDA, 2k on CPU
    plot_tuples: int = 4  # tuples in the cross-generation grid
    map_points: int = 1000  # points in the latent map
    counts_samples: int = 10  # draws of z per trial whose decoded rates are averaged for bits per spike
    trace_draws: int = 8  # imputations per tuple in the sequence figures (mean +- 2 sd)
    alignment_n_train: int = 10_000  # training tuples the CCA directions of the alignment metrics are fit on

    @classmethod
    def full(cls) -> EvalSettings:
        """The settings of `mmvae evaluate`."""
        return cls()

    @classmethod
    def quick(cls) -> EvalSettings:
        """Fewer samples (`mmvae demo`, `--quick`): a fast look, not numbers to publish."""
        return cls(classifier_epochs=5, joint_samples=500, probe_n_train=2000, imputation_samples=5,
                   imputation_n_tuples=200, loglik_K=10, map_points=500, counts_samples=5, alignment_n_train=2000)

    def override(self, **changes) -> EvalSettings:
        """A copy with `changes` applied; InputError naming any key that is not a setting."""
        known = [f.name for f in fields(self)]
        bad = set(changes) - set(known)
        if bad:
            raise InputError(f"unknown evaluation setting(s) {sorted(bad)}; known: {sorted(known)}")
        for key, value in changes.items():
            _check(key, value, getattr(self, key))
        return replace(self, **changes)


def _check(key: str, value, default) -> None:
    """InputError unless `value` fits setting `key`: a bool for a switch, a number in [0, 1] for min_accuracy, a
    whole number >= 1 for the counts (batch_rows may also be None); never NaN."""
    where = f"evaluation setting {key!r}"
    if isinstance(default, bool) or key == "share_classifiers":
        if not isinstance(value, bool):
            raise InputError(f"{where} expects true or false, got {value!r}")
    elif key == "min_accuracy":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise InputError(f"{where} must be a number in [0, 1], got {value!r}")
    elif not (value is None and key == "batch_rows"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{where} must be a whole number >= 1, got {value!r}")
