"""The subcommands: for each, `add_<name>_arguments(parser)` and `<name>(args) -> exit code`; `COMMANDS` lists them.
Heavy imports (torch, the models) wait until a command runs, so `mmvae --help` is quick."""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from .data import add_data_arguments, data
from .options import BY_NAME, add_options, defaults, settings
from .study import add_study_arguments, study


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """`mmvae train`: every option of the table, plus where the run lives."""
    run = p.add_argument_group("the run")
    run.add_argument("--out", type=Path, required=True, metavar="DIR", help="run folder")
    run.add_argument("--config", type=Path, metavar="FILE", help="TOML (or .json) file of settings; read as data, "
                     "never executed; the command line wins")
    run.add_argument("--resume", type=Path, metavar="PATH", help="checkpoint or run folder to continue from")
    run.add_argument("--overwrite", action="store_true", help="replace the run already in --out (without it, a "
                     "folder holding a checkpoint is refused unless --resume continues it)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    add_options(p.add_argument_group("settings (each also a --config key, e.g. batch_size = 64)"))


def dataset_options(cfg: dict) -> dict:
    """The keyword options of `get_dataset` from the settings: the seed, and each of `data_root` (absolute),
    `n_train`, `n_test` that is set, for the datasets that take it; they are also the run config's "dataset"
    entry (both splits are built from it)."""
    import inspect

    from ..datasets import DATASETS
    from ..errors import InputError

    kw = {"seed": cfg["seed"]}
    given = {k: cfg.get(k) for k in ("data_root", "n_train", "n_test") if cfg.get(k) not in (None, "auto")}
    factory = DATASETS.get(str(cfg["dataset"]).lower())
    for key, value in given.items():
        if factory is None or key not in inspect.signature(factory).parameters:
            takes = sorted(k for k, c in DATASETS.items() if key in inspect.signature(c).parameters)
            raise InputError(f"option {key!r} applies to --dataset {' | '.join(takes)}, not {cfg['dataset']!r}")
        kw[key] = str(Path(value).expanduser().resolve()) if key == "data_root" else value
    return kw


def parse_weights(text: str, key: str) -> dict[str, float]:
    """"a=1,b=0.5" -> {"a": 1.0, "b": 0.5}; InputError naming `key` otherwise."""
    from ..errors import InputError

    out = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, sep, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise InputError(f"option {key!r}: expected NAME=WEIGHT,NAME=WEIGHT, got {text!r}")
    return out


def claim_run_folder(out: Path, resume: Path | None, overwrite: bool, clear: bool = True) -> None:
    """Refuse to replace a trained run in `out` unless `overwrite` (then, with `clear`, remove its files: the
    caller holds the folder's lock) or `resume`."""
    from ..errors import InputError
    from ..runfolder import clear_run, holds_run

    if overwrite and resume is not None:
        raise InputError("--overwrite replaces the run in --out and --resume continues one: give one of them")
    found = holds_run(out)
    if found and resume is None and not overwrite:
        raise InputError(f"{out} already holds a run ({found}); continue it with --resume {out}, replace it with "
                         "--overwrite, or choose another --out")
    if found and overwrite and clear:
        print(f"replacing the run in {out} (--overwrite): removed {', '.join(clear_run(out))}", file=sys.stderr)


def run_training(cfg: dict, out: Path, resume: Path | None = None, quiet: bool = False,
                 overwrite: bool = False) -> int:
    """Train the preset `cfg["model"]` on `cfg["dataset"]` with the settings `cfg` (all keys of `defaults()`)
    into the run folder `out` (holding its lock throughout); 130 if interrupted, else 0. The data and the model
    are built before the folder is created or touched, so a bad dataset or preset leaves nothing behind."""
    import contextlib
    import os

    from ..runfolder import RunLock

    main = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 alone writes (and locks) the run folder
    if main:
        RunLock(out).check_free()  # refuse early (a folder in use, a run to keep), before the data is read
    claim_run_folder(out, resume, overwrite, clear=False)
    cfg, trainer, train_set, val_set = _prepare(cfg, out, resume, quiet)
    with RunLock(out) if main else contextlib.nullcontext():
        claim_run_folder(out, resume, overwrite, clear=main)
        history = trainer.fit(train_set, val=val_set)
    if getattr(trainer, "interrupted", False):
        return 130
    if history:
        last = history[-1]
        print(f"trained {cfg['model']} on {cfg['dataset']}: epoch {last['epoch']}, "
              f"val/loss {last.get('val/loss', float('nan')):.2f}; run folder {out}")
    return 0


def _prepare(cfg: dict, out: Path, resume: Path | None, quiet: bool) -> tuple:
    """The datasets, the model and its Trainer of a run: (cfg with the dataset resolved, trainer, train, val)."""
    import torch

    from ..datasets import get_dataset, resolve
    from ..models import build
    from ..trainer import Trainer

    cfg = {**cfg, "dataset": resolve(cfg["dataset"])}  # a data path is stored absolute, for `mmvae evaluate`
    ds_kw = dataset_options(cfg)
    train_set = get_dataset(cfg["dataset"], "train", **ds_kw)
    if cfg["drop_rate"]:
        train_set = train_set.drop(cfg["drop_rate"], seed=cfg["seed"])
    val_set = get_dataset(cfg["dataset"], "test", **ds_kw)
    overrides = {k: cfg[k] for k in ("shared_dim", "private_dim", "beta", "aggregator") if cfg[k] is not None}
    if cfg["regularisers"]:
        overrides["regularisers"] = parse_weights(cfg["regularisers"], "regularisers")
    torch.manual_seed(cfg["seed"])  # the initial weights follow the seed too
    model = build(cfg["model"], train_set, networks=cfg["networks"], **overrides)
    trainer = Trainer(model, max_epochs=cfg["epochs"], batch_size=cfg["batch_size"], lr=cfg["lr"],
                      device=cfg["device"], seed=cfg["seed"], out=out, amp=cfg["amp"], resume=resume,
                      progress=not quiet, max_nonfinite=cfg["max_nonfinite"],
                      extra_config={"dataset": {"name": cfg["dataset"], **ds_kw}, "preset": cfg["model"],
                                    "settings": cfg})
    return cfg, trainer, train_set, val_set


def resumed_lr(args: argparse.Namespace, cfg: dict) -> float:
    """The lr of a resumed run: the one given (command line or `--config`), else the checkpoint's own, so that
    config.json records the lr the optimiser really uses."""
    from ..checkpoint import read_trainer_settings
    from .options import read_config

    given = args.lr is not None or (args.config is not None and "lr" in read_config(args.config))
    if given:
        return cfg["lr"]
    lr = read_trainer_settings(args.resume).get("lr")
    return float(lr) if isinstance(lr, (int, float)) and math.isfinite(lr) and lr >= 0 else cfg["lr"]


def train(args: argparse.Namespace) -> int:
    """`mmvae train`: defaults < `--config` < command line, checked, then trained into `--out`."""
    cfg = settings(args)
    if args.resume is not None:
        cfg["lr"] = resumed_lr(args, cfg)
    return run_training(cfg, args.out, resume=args.resume, quiet=args.quiet, overwrite=args.overwrite)


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    """`mmvae evaluate RUN`."""
    p.add_argument("run", type=Path, help="run folder to evaluate")
    p.add_argument("--metrics", metavar="LIST",
                   help="comma list of coherence,latent,alignment,imputation,counts,disentanglement (default: all)")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="folder for report.md and metrics.json (default: the run folder)")
    p.add_argument("--device", default="auto", help=f"{BY_NAME['device'].help} (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the evaluation (default: %(default)s)")
    p.add_argument("--n-test", dest="n_test", type=int, metavar="N", help="evaluate on the first N test tuples")
    p.add_argument("--quick", action="store_true", help="fewer samples: a fast look, not numbers to publish")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="an evaluation setting, e.g. --set loglik_K=20 --set probe_n_train=500")
    p.add_argument("--classifiers", type=Path, metavar="DIR",
                   help="your own coherence classifiers instead of training them: DIR holds classifiers.pt, a "
                        "weights-only {modality: state dict} (read with torch.load(weights_only=True)), and "
                        "classifiers.json, {modality: {\"spec\": {\"in_shape\": [3, 28, 28], \"num_classes\": 10, "
                        "\"kind\": \"conv\"|\"mlp\"|\"tokens\", ...}, \"meta\": {...}}}, as "
                        "mmvae.evaluation.save_classifiers writes them; each modality's input shape and class count "
                        "are checked against the dataset and its accuracy measured on the test rows")


def _evaluation_settings(args: argparse.Namespace) -> dict:
    """The keyword options of `evaluate_run` from `--metrics`, `--classifiers` and each `--set KEY=VALUE` (a JSON
    value, else text)."""
    metrics = [m.strip() for m in args.metrics.split(",")] if args.metrics else None
    kw = {"metrics": metrics} if metrics else {}
    if getattr(args, "classifiers", None) is not None:
        kw["classifiers"] = args.classifiers
    for item in args.set or []:
        key, _, value = item.partition("=")
        try:
            kw[key] = json.loads(value)
        except json.JSONDecodeError:
            kw[key] = value
        _check_eval_setting(key, kw[key])
    return kw


def _check_eval_setting(key: str, value) -> None:
    """InputError for an evaluation setting of the wrong type, a count below 1 or a number that is not finite
    (unknown keys are `EvalSettings.override`'s to refuse)."""
    from dataclasses import fields

    from ..errors import InputError
    from ..evaluation.settings import EvalSettings

    kind = {f.name: str(f.type) for f in fields(EvalSettings)}.get(key)
    if kind is None or (value is None and "None" in kind):
        return
    if kind.startswith("int") and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise InputError(f"--set {key}: expects a whole number >= 1, got {value!r}")
    if kind.startswith("float") and (isinstance(value, bool) or not isinstance(value, (int, float))
                                     or not math.isfinite(value) or not 0 <= value <= 1):
        raise InputError(f"--set {key}: expects a number in [0, 1], got {value!r}")


def check_count(flag: str, value: int | None) -> None:
    """InputError unless a count option is absent or at least 1 (a negative one would slice from the end)."""
    if value is not None and value < 1:
        from ..errors import InputError

        raise InputError(f"{flag} must be >= 1, got {value}")


def evaluate(args: argparse.Namespace) -> int:
    """`mmvae evaluate`: the metrics of a run, written as report.md and metrics.json."""
    from ..evaluation import evaluate_run
    from ..evaluation.run_files import check_run_folder

    check_count("--n-test", args.n_test)
    check_run_folder(args.run)
    result = evaluate_run(args.run, out=args.out, device=args.device, seed=args.seed, n_test=args.n_test,
                          quick=args.quick, **_evaluation_settings(args))
    print(f"wrote {Path(args.out or args.run) / 'report.md'} and metrics.json "
          f"({result.get('time_s', float('nan')):.1f} s)")
    return 0


def add_compare_arguments(p: argparse.ArgumentParser) -> None:
    """`mmvae compare RUN [RUN ...]`."""
    p.add_argument("runs", type=Path, nargs="+", help="run folders")
    p.add_argument("--out", type=Path, default=Path("runs/compare"), metavar="DIR",
                   help="output folder (default: %(default)s)")
    p.add_argument("--device", default="auto", help=f"{BY_NAME['device'].help} (default: %(default)s)")


def compare(args: argparse.Namespace) -> int:
    """`mmvae compare`: several runs side by side in compare.md."""
    from ..evaluation import compare_runs
    from ..evaluation.run_files import check_run_folder, read_metrics

    for run in args.runs:
        check_run_folder(run)
        read_metrics(run)  # a damaged metrics.json is refused before anything is written
    compare_runs(args.runs, out=args.out, device=args.device)
    print(f"wrote {Path(args.out) / 'compare.md'}")
    return 0


def add_impute_arguments(p: argparse.ArgumentParser) -> None:
    """`mmvae impute CHECKPOINT --input IN.npz --out OUT.npz`."""
    p.add_argument("checkpoint", type=Path, help="checkpoint or run folder")
    p.add_argument("--input", type=Path, required=True, metavar="FILE", help=".npz with one array per modality")
    p.add_argument("--targets", metavar="LIST", help="comma list; default: every modality with something missing")
    p.add_argument("--out", type=Path, required=True, metavar="FILE", help=".npz to write")
    p.add_argument("--n-samples", dest="n_samples", type=int, default=1, metavar="N",
                   help="average of this many imputations (default: %(default)s)")
    p.add_argument("--draw", action="store_true",
                   help="write a draw from the likelihood (counts, tokens, noisy values) instead of its mean")


def impute(args: argparse.Namespace) -> int:
    """`mmvae impute`: fill the missing modalities of a .npz file."""
    from ..impute_file import impute_npz

    check_count("--n-samples", args.n_samples)
    report = impute_npz(args.checkpoint, args.input, args.out, args.targets.split(",") if args.targets else None,
                        n_samples=args.n_samples, draw=args.draw)
    print(f"wrote {args.out}: imputed {report['imputed']} missing rows and filled {report['filled_gaps']} gaps "
          f"inside observed rows")
    if report["empty_rows"]:
        print(f"rows with no observed modality, left unfilled (NaN): {report['empty_rows']}", file=sys.stderr)
    return 0


#: how `demo` departs from the train defaults
DEMO = {"dataset": "polydigits", "epochs": 10}


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    """`mmvae demo`: a few train options (the rest at their defaults), and where to write."""
    p.add_argument("--out", type=Path, default=Path("runs/demo"), metavar="DIR",
                   help="run folder (default: %(default)s)")
    add_options(p, ("model", "epochs", "seed", "device"), shown=DEMO)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _demo_impute(out: Path, seed: int) -> None:
    """Impute m1.. of 16 PolyDigits test tuples from m0 alone, as `mmvae impute` does for user files."""
    import numpy as np

    from ..atomic import replace_file
    from ..datasets import get_dataset
    from ..impute_file import impute_npz

    test = get_dataset("polydigits", "test", seed=seed)
    arrays = {n: t[:16].numpy().copy() for n, t in test.data.items()}
    for n in test.modalities[1:]:
        arrays[n][:] = np.nan
    replace_file(out / "demo_input.npz", lambda f: np.savez(f, **arrays))
    report = impute_npz(out, out / "demo_input.npz", out / "demo_imputed.npz")
    print(f"imputed {report['targets']} for 16 test tuples from m0 alone: {out / 'demo_imputed.npz'}")


def demo(args: argparse.Namespace) -> int:
    """Train MoPoE on PolyDigits, impute, evaluate and write the report: the README's first command."""
    start = time.time()
    cfg = settings(args, base=defaults() | DEMO)
    code = run_training(cfg, args.out, quiet=args.quiet, overwrite=True)  # a demo replaces the previous demo
    if code:
        return code
    from ..evaluation import evaluate_run

    _demo_impute(args.out, cfg["seed"])
    result = evaluate_run(args.out, device=cfg["device"], quick=True)
    print(f"report: {args.out / 'report.md'}  (total {time.time() - start:.0f} s)")
    coh = result.get("coherence", {})
    if "mean" in coh:
        print(f"conditional coherence (mean over subsets): {coh['mean']:.3f}")
    return 0


class Command(NamedTuple):
    """A subcommand: its one-line help, what it adds to its parser, and what it runs."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS = {
    "train": Command("train a model; writes checkpoints and logs to --out", add_train_arguments, train),
    "evaluate": Command("coherence, latent probe, imputation, disentanglement; writes report.md",
                        add_evaluate_arguments, evaluate),
    "compare": Command("several runs side by side: compare.md and a coherence plot", add_compare_arguments, compare),
    "impute": Command("fill missing modalities (NaN / -1 rows, absent arrays) and gaps of a .npz",
                      add_impute_arguments, impute),
    "demo": Command("train MoPoE on PolyDigits, impute, evaluate, write a report", add_demo_arguments, demo),
    "data": Command("build a dataset: mmvae data polymnist --idx DIR --out DIR", add_data_arguments, data),
    "study": Command("a grid of runs (models x beta x seeds): study.md, .json, .png", add_study_arguments, study),
}
