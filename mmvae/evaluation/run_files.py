"""The files of a run folder that evaluation reads and writes: config.json, metrics.jsonl, the cached coherence
classifiers in classifiers/, and JSON-safe results."""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ..errors import CheckpointError, InputError
from .classifiers import (
    accuracy,
    classifiers_match,
    load_classifiers,
    load_user_classifiers,
    modality_data,
    save_classifiers,
    train_classifiers,
)

CLASSIFIER_DIR = "classifiers"


def json_safe(obj):
    """JSON-safe copy: non-finite floats become None, tuples lists, tensors numbers."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return json_safe(obj.tolist())
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


def user_classifiers(folder, train, test, device) -> dict:
    """`mmvae evaluate --classifiers DIR`: the user's classifiers in DIR (the format `save_classifiers` writes),
    checked against the evaluation data's input shapes and number of classes, each scored on the evaluation's
    test rows (meta "test_accuracy", so `check_accuracy` applies to them as to ours). train, test: EvalData."""
    shapes = {m: tuple(train.data[m].shape[1:]) for m in train.names}
    num_classes = train.num_classes if train.labels is not None else None
    clfs = load_user_classifiers(folder, shapes, num_classes, map_location=device)
    if test.labels is not None:
        for m, c in clfs.items():
            x, y = modality_data(test, m)
            c.meta = {**c.meta, "test_accuracy": accuracy(c, x, y), "n_test": len(y),
                      "scored_on": "the evaluation's test rows"}
    return clfs
