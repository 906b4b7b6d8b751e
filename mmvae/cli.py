"""The `mmvae` command: train, evaluate, compare, impute, and `demo` (all of it on the bundled PolyDigits)."""
from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
from pathlib import Path

from .errors import CheckpointError, InputError, NonFiniteLossError

TRAIN_KEYS = {"epochs", "batch_size", "lr", "seed", "device", "amp", "shared_dim", "private_dim", "beta",
              "drop_rate", "dataset", "model", "max_nonfinite"}
#: option -> (accepted types, lowest allowed value or None); None values mean "the preset's default"
TRAIN_TYPES = {"epochs": (int, 0), "batch_size": (int, 1), "lr": (float, 0.0), "seed": (int, None),
               "device": (str, None), "amp": (bool, None), "shared_dim": (int, 1), "private_dim": (int, 0),
               "beta": (float, 0.0), "drop_rate": (float, 0.0), "dataset": (str, None), "model": (str, None),
               "max_nonfinite": (int, 1)}


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML (or .json) file with any of the options below (command line "
                   "wins); read as data, never executed")
    p.add_argument("--dataset", help="polydigits | toy (default polydigits)")
    p.add_argument("--model", help="preset: mvae | mmvae | mopoe | mmvm | mmvaeplus | dmvae | independent (default mopoe)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--shared-dim", dest="shared_dim", type=int)
    p.add_argument("--private-dim", dest="private_dim", type=int)
    p.add_argument("--beta", type=float)
    p.add_argument("--drop-rate", dest="drop_rate", type=float, help="drop modalities at random in training data")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--amp", action="store_true", default=None, help="mixed precision (CUDA only)")
    p.add_argument("--max-nonfinite", dest="max_nonfinite", type=int,
                   help="stop after this many consecutive steps with a non-finite loss (default 10)")
    p.add_argument("--resume", type=Path, help="checkpoint or run folder to continue from")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def read_config(path: Path) -> dict:
    """A config file as a dict: TOML, or JSON for a `.json` name. Data only: nothing in it is executed."""
    try:
        with open(path, "rb") as f:
            loaded = json.load(f) if path.suffix.lower() == ".json" else tomllib.load(f)
    except OSError as e:
        raise InputError(f"{path}: cannot read the config file ({e.strerror or e})") from None
    except (tomllib.TOMLDecodeError, ValueError) as e:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        kind = "JSON" if path.suffix.lower() == ".json" else "TOML"
        raise InputError(f"{path}: not valid {kind}: {e}") from None
    if not isinstance(loaded, dict):
        raise InputError(f"{path}: expected a table of options, got {type(loaded).__name__}")
    return loaded


def check_settings(cfg: dict, source: str) -> None:
    """Each option has the expected type and lies in range, else InputError naming the option and the value."""
    for key, value in cfg.items():
        if key not in TRAIN_TYPES or value is None:
            continue
        kind, low = TRAIN_TYPES[key]
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise InputError(f"{source}: option {key!r} expects {kind.__name__}, got {type(value).__name__} {value!r}")
        if low is not None and value < low:
            raise InputError(f"{source}: option {key!r} must be >= {low}, got {value!r}")
    if cfg.get("drop_rate") is not None and cfg["drop_rate"] > 1:
        raise InputError(f"{source}: option 'drop_rate' must lie in [0, 1], got {cfg['drop_rate']!r}")
    if cfg.get("device") not in (None, "auto"):
        import torch

        try:
            device = torch.device(cfg["device"])
        except (RuntimeError, ValueError):
            raise InputError(f"{source}: option 'device' expects auto, cpu, cuda or cuda:N, got {cfg['device']!r}") \
                from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InputError(f"{source}: option 'device' is {cfg['device']!r} but CUDA is not available here")


def _settings(args) -> dict:
    """Defaults < TOML file < command line."""
    cfg = {"dataset": "polydigits", "model": "mopoe", "epochs": 5, "batch_size": 128, "lr": 1e-3, "seed": 0,
           "device": "auto", "amp": False, "shared_dim": None, "private_dim": None, "beta": None, "drop_rate": 0.0,
           "max_nonfinite": 10}
    if args.config:
        loaded = read_config(args.config)
        unknown = set(loaded) - TRAIN_KEYS
        if unknown:
            raise InputError(f"{args.config}: unknown option(s) {sorted(unknown)}; known: {sorted(TRAIN_KEYS)}")
        check_settings(loaded, str(args.config))
        cfg.update(loaded)
    given = {k: v for k, v in vars(args).items() if k in TRAIN_KEYS and v is not None}
    check_settings(given, "command line")
    cfg.update(given)
    return cfg


def train(args) -> int:
    import torch

    from .datasets import get_dataset
    from .models import build
    from .trainer import Trainer

    cfg = _settings(args)
    train_set = get_dataset(cfg["dataset"], "train", seed=cfg["seed"])
    if cfg["drop_rate"]:
        train_set = train_set.drop(cfg["drop_rate"], seed=cfg["seed"])
    val_set = get_dataset(cfg["dataset"], "test", seed=cfg["seed"])
    overrides = {k: cfg[k] for k in ("shared_dim", "private_dim", "beta") if cfg[k] is not None}
    torch.manual_seed(cfg["seed"])  # the initial weights follow the seed too
    model = build(cfg["model"], train_set, **overrides)
    trainer = Trainer(model, max_epochs=cfg["epochs"], batch_size=cfg["batch_size"], lr=cfg["lr"],
                      device=cfg["device"], seed=cfg["seed"], out=args.out, amp=cfg["amp"], resume=args.resume,
                      progress=not args.quiet, max_nonfinite=cfg["max_nonfinite"],
                      extra_config={"dataset": {"name": cfg["dataset"], "seed": cfg["seed"]}, "preset": cfg["model"],
                                    "settings": cfg})
    history = trainer.fit(train_set, val=val_set)
    if getattr(trainer, "interrupted", False):
        return 130
    if history:
        last = history[-1]
        print(f"trained {cfg['model']} on {cfg['dataset']}: epoch {last['epoch']}, "
              f"val/loss {last.get('val/loss', float('nan')):.2f}; run folder {args.out}")
    return 0


def evaluate(args) -> int:
    from .evaluation import evaluate_run

    metrics = [m.strip() for m in args.metrics.split(",")] if args.metrics else None
    kw = {"metrics": metrics} if metrics else {}
    for item in args.set or []:
        key, _, value = item.partition("=")
        try:
            kw[key] = json.loads(value)
        except json.JSONDecodeError:
            kw[key] = value
    result = evaluate_run(args.run, out=args.out, device=args.device, seed=args.seed, n_test=args.n_test,
                          quick=args.quick, **kw)
    print(f"wrote {Path(args.out or args.run) / 'report.md'} and metrics.json "
          f"({result.get('time_s', float('nan')):.1f} s)")
    return 0


def compare(args) -> int:
    from .evaluation import compare_runs

    compare_runs(args.runs, out=args.out, device=args.device)
    print(f"wrote {Path(args.out) / 'compare.md'}")
    return 0


def impute(args) -> int:
    from .impute_file import impute_npz

    report = impute_npz(args.checkpoint, args.input, args.out, args.targets.split(",") if args.targets else None,
                        n_samples=args.n_samples)
    print(f"wrote {args.out}: imputed {report['imputed']} entries")
    if report["empty_rows"]:
        print(f"rows with no observed modality, left unfilled (NaN): {report['empty_rows']}", file=sys.stderr)
    return 0


def demo(args) -> int:
    """Train MoPoE on PolyDigits, impute, evaluate and write the report: the README's first command."""
    start = time.time()
    ns = argparse.Namespace(config=None, dataset="polydigits", model=args.model, epochs=args.epochs,
                            batch_size=None, lr=None, shared_dim=None, private_dim=None, beta=None, drop_rate=None,
                            seed=args.seed, device=args.device, amp=None, resume=None, out=args.out,
                            quiet=args.quiet)
    code = train(ns)
    if code:
        return code
    import numpy as np

    from .datasets import get_dataset
    from .evaluation import evaluate_run
    from .impute_file import impute_npz

    test = get_dataset("polydigits", "test", seed=args.seed)
    arrays = {n: t[:16].numpy().copy() for n, t in test.data.items()}
    for n in test.modalities[1:]:
        arrays[n][:] = np.nan  # only m0 is observed: impute the rest, as `mmvae impute` does for user files
    np.savez(args.out / "demo_input.npz", **arrays)
    report = impute_npz(args.out, args.out / "demo_input.npz", args.out / "demo_imputed.npz")
    print(f"imputed {report['targets']} for 16 test tuples from m0 alone: {args.out / 'demo_imputed.npz'}")

    result = evaluate_run(args.out, device=args.device, quick=True)
    print(f"report: {args.out / 'report.md'}  (total {time.time() - start:.0f} s)")
    coh = result.get("coherence", {})
    if "mean" in coh:
        print(f"conditional coherence (mean over subsets): {coh['mean']:.3f}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="mmvae", description="Multimodal VAEs with shared and private latents.")
    sub = parser.add_subparsers(dest="command", required=True)
    _train_args(sub.add_parser("train", help="train a model; writes checkpoints and logs to --out"))
    p = sub.add_parser("evaluate", help="coherence, latent probe, imputation, disentanglement; writes report.md")
    p.add_argument("run", type=Path)
    p.add_argument("--metrics", help="comma list of coherence,latent,imputation,disentanglement")
    p.add_argument("--out", type=Path)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-test", dest="n_test", type=int, help="evaluate on the first N test tuples")
    p.add_argument("--quick", action="store_true", help="fewer samples: a fast look, not numbers to publish")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="an evaluation setting, e.g. --set loglik_K=20 --set probe_n_train=500")
    p = sub.add_parser("compare", help="several runs side by side: compare.md and a coherence plot")
    p.add_argument("runs", type=Path, nargs="+")
    p.add_argument("--out", type=Path, default=Path("runs/compare"))
    p.add_argument("--device", default="auto")
    p = sub.add_parser("impute", help="fill missing modalities of a .npz (NaN rows or absent arrays)")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--input", type=Path, required=True)
    p.add_argument("--targets", help="comma list; default: every modality with something missing")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n-samples", dest="n_samples", type=int, default=1, help="average of this many imputations")
    p = sub.add_parser("demo", help="train MoPoE on PolyDigits, impute, evaluate, write a report")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--model", default="mopoe")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        return {"train": train, "evaluate": evaluate, "compare": compare, "impute": impute, "demo": demo}[
            args.command](args)
    except (InputError, CheckpointError) as e:
        print(f"mmvae {args.command}: error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"mmvae {args.command}: training stopped on non-finite losses: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"mmvae {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
