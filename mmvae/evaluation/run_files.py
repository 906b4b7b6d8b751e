"""The files of a run folder that evaluation reads and writes: config.json, metrics.jsonl, the cached coherence
classifiers in classifiers/, and JSON-safe results."""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ..errors import CheckpointError, InputError
from .classifiers import (
    CLASSIFIER_VERSION,
    accuracy,
    classifiers_match,
    data_checksum,
    group_data,
    load_classifiers,
    load_user_classifiers,
    modality_data,
    pooled_groups,
    save_classifiers,
    train_classifiers,
)
from .subset_batches import as_eval_data

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


MAX_JSON_BYTES = 64 << 20  # a run folder's JSON files are kilobytes; anything this large is not one of ours
MAX_COUNT = 10**8  # the largest size a run's config may ask a dataset for (rows, dims)


def _read_text(path: Path) -> str:
    """A run file's text, refused (InputError) when it is too large to be one or cannot be read."""
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise InputError(f"{path}: {size:,} bytes, too large for a run folder's file (limit "
                             f"{MAX_JSON_BYTES:,}); not reading it")
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None


def _read_object(path: Path, what: str) -> dict:
    """A JSON file that must hold one object; InputError naming the file otherwise."""
    try:
        obj = json.loads(_read_text(path))
    except ValueError as e:
        raise InputError(f"{path}: damaged {what} (not valid JSON: {e})") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path}: damaged {what} (expected a JSON object, got {type(obj).__name__})")
    return obj


def check_run_folder(run_dir) -> Path:
    """InputError unless `run_dir` is an existing folder holding a readable config.json (nothing is created)."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise InputError(f"run folder {run_dir} does not exist")
    if not run_dir.is_dir():
        raise InputError(f"{run_dir} is not a folder (expected a run folder written by `mmvae train --out`)")
    if not (run_dir / "config.json").is_file():
        raise InputError(f"{run_dir} holds no config.json: not a run folder written by `mmvae train --out`")
    dataset_spec(read_run_config(run_dir))
    read_history(run_dir)
    return run_dir


def read_run_config(run_dir) -> dict:
    """The run folder's config.json (an empty dict if there is none); InputError when it is damaged."""
    path = Path(run_dir) / "config.json"
    return _read_object(path, "run config") if path.exists() else {}


def read_history(run_dir) -> list[dict]:
    """The run's metrics.jsonl as a list of per-epoch dicts (empty when absent); InputError naming the line
    when one is not a JSON object with an integer epoch and number (or text) values."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for i, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise InputError(f"{path}: line {i} is damaged (not valid JSON: {e})") from None
        if not isinstance(row, dict) or not isinstance(row.get("epoch"), int) or not all(
                isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in row.values()):
            raise InputError(f"{path}: line {i} is not an epoch record (an object with an integer 'epoch' and "
                             "numbers)")
        rows.append({k: _number(v) for k, v in row.items()})
    return rows


def _number(v):
    """A metrics value: the text "nan"/"inf" that runfolder writes for non-finite floats back as a float."""
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def read_metrics(run_dir) -> dict | None:
    """The run's metrics.json (None when absent), checked to be what `mmvae evaluate` writes; InputError saying to
    re-evaluate when it is damaged."""
    path = Path(run_dir) / "metrics.json"
    if not path.exists():
        return None
    try:
        obj = _read_object(path, "metrics.json")
        if not isinstance(obj.get("settings"), dict) or not isinstance(obj["settings"].get("dataset"), str):
            raise InputError(f"{path}: damaged metrics.json (no settings.dataset)")
    except InputError as e:
        raise InputError(f"{e}; rerun `mmvae evaluate {run_dir}` to rewrite it") from None
    return obj


def _check_dataset_option(name: str, key: str, value, factory) -> None:
    """InputError for a dataset option of a run config that is not plain data, has the wrong type for the
    dataset, or asks for an absurd size (`n = 1e11` would allocate terabytes)."""
    import inspect

    where = f"the run's config.json: dataset option {key!r}"
    if not isinstance(value, (str, int, float, bool)) and value is not None:
        raise InputError(f"{where} is a {type(value).__name__}, not a plain value")
    params = inspect.signature(factory).parameters if factory is not None else {}
    if params and key not in params and not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        raise InputError(f"{where} is not an option of dataset {name!r} (options: {sorted(params)})")
    default = params[key].default if key in params else None
    if isinstance(default, int) and not isinstance(default, bool) and (
            not isinstance(value, int) or isinstance(value, bool)):
        raise InputError(f"{where} must be a whole number, got {value!r}")
    if isinstance(value, (int, float)) and key != "seed" and not isinstance(value, bool) and (
            not math.isfinite(value) or not -MAX_COUNT <= value <= MAX_COUNT):
        raise InputError(f"{where} is {value!r}, beyond the limit of {MAX_COUNT:,}; the file is damaged or edited")


def dataset_spec(config: dict) -> tuple[str, dict]:
    """(name, keyword options) of the dataset named in a run config: "dataset": {"name": ..., ...} or a name;
    each option checked (`_check_dataset_option`) before any data is built."""
    from ..datasets import DATASETS

    spec = config.get("dataset")
    if spec is None:
        raise InputError("the run's config.json names no dataset (key 'dataset'); cannot evaluate it")
    if isinstance(spec, str):
        return spec, {}
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise InputError("the run's config.json: 'dataset' must be a name or an object with a 'name'")
    spec = dict(spec)
    name = spec.pop("name")
    for key, value in spec.items():
        _check_dataset_option(name, key, value, DATASETS.get(name.lower()))
    return name, spec


def classifier_key(train, test, epochs: int, seed: int, sums: dict | None = None) -> str:
    """The shared cache's name for classifiers trained on `train` and scored on `test` with these settings: a
    sha256 prefix of the classifier version, the epochs, the seed and every pooled group's data checksums (train
    checksums taken from and added to the memo `sums`, as `classifiers_match` keeps it)."""
    import hashlib

    train, test = as_eval_data(train), as_eval_data(test)
    sums = {} if sums is None else sums
    parts = []
    for g in pooled_groups(train, train.names):
        if tuple(g) not in sums:
            sums[tuple(g)] = data_checksum(*group_data(train, g))
        parts.append((g, sums[tuple(g)], data_checksum(*group_data(test, g))))
    text = json.dumps([CLASSIFIER_VERSION, epochs, seed, parts])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _cached(folder: Path, train, device, sums: dict) -> dict | None:
    """The classifiers in `folder` if they were trained on exactly this data (else None); sums: the checksum memo."""
    try:
        cached = load_classifiers(folder, map_location=device)
    except CheckpointError:  # written by another version of the classifiers: retrain and overwrite
        return None
    return cached if classifiers_match(cached, train, sums) else None


def get_classifiers(run_dir, train, test, device, epochs: int, seed: int, shared: Path | None = None
                    ) -> tuple[dict, str]:
    """Coherence classifiers for a run and where they came from: "cached" (run_dir/classifiers, trained on exactly
    this data), "shared" (another run's, from `shared`/<classifier_key>, e.g. the study's other runs on the same
    data) or "trained" (now, then saved in both places; concurrent evaluations wait on a file lock and train
    once)."""
    folder, sums = Path(run_dir) / CLASSIFIER_DIR, {}  # sums: each group's data hashed once for all lookups
    clfs = _cached(folder, train, device, sums)
    if clfs is not None:
        return clfs, "cached"
    if shared is None:
        clfs, source = train_classifiers(train, test, epochs=epochs, device=device, seed=seed), "trained"
    else:
        from filelock import FileLock

        entry = Path(shared) / classifier_key(train, test, epochs, seed, sums)
        entry.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(entry) + ".lock"):
            clfs, source = _cached(entry, train, device, sums), "shared"
            if clfs is None:
                clfs, source = train_classifiers(train, test, epochs=epochs, device=device, seed=seed), "trained"
                save_classifiers(clfs, entry)
    save_classifiers(clfs, folder)
    return clfs, source


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
