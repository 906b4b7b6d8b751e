"""Test accuracy per modality and training time of the coherence classifiers (`train_classifiers`).

    python bench/classifiers_accuracy.py [--dataset polydigits|polyfashion|both] [--epochs N] [--n-train N]
                                         [--n-test N] [--modalities m0,m2] [--threads N] [--device cpu|cuda|auto]
                                         [--no-pool] [--json out.json]

Targets (issue 8): >= 0.95 per modality on PolyDigits, >= 0.85 on PolyFashion (5 modalities, 3x28x28, >= 10k
training tuples). By default image modalities of one shape share a network trained on all their rows
(`train_classifiers(pool=True)`); `--no-pool` trains one per modality on its own rows, for comparison.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmvae.datasets import PolyDigits  # noqa: E402
from mmvae.evaluation import train_classifiers  # noqa: E402
from mmvae.evaluation.settings import EvalSettings  # noqa: E402


def polydigits(n_train: int | None, n_test: int | None, seed: int):
    """PolyDigits train and test splits (default sizes when n is None)."""
    return (PolyDigits("train", seed=seed, n_tuples=n_train), PolyDigits("test", seed=seed, n_tuples=n_test)), \
        "mmvae.datasets.PolyDigits"


def polyfashion(n_train: int | None, n_test: int | None, seed: int):
    """PolyFashion train and test splits (10k / 2k tuples by default), built on first use and cached."""
    from mmvae.datasets import get_dataset

    kw = {"n_train": n_train, "n_test": n_test, "seed": seed}
    return (get_dataset("polyfashion", "train", **kw), get_dataset("polyfashion", "test", **kw)), \
        "mmvae.datasets.PolyFashion"


def run(name: str, args) -> dict:
    """Build the data, train the classifiers, print and return the table."""
    t = time.time()
    (train, test), source = (polydigits if name == "polydigits" else polyfashion)(args.n_train, args.n_test,
                                                                                  args.seed)
    built = time.time() - t
    t = time.time()
    clfs = train_classifiers(train, test, epochs=args.epochs, device=args.device, seed=args.seed,
                             modalities=args.modalities.split(",") if args.modalities else None,
                             pool=not args.no_pool)
    total = time.time() - t
    shape = list(next(iter(train.data.values())).shape[1:])
    print(f"\n{name} ({source}): {len(train)} train / {len(test)} test tuples of {shape}, {args.epochs} epochs, "
          f"{'one network per modality' if args.no_pool else 'pooled networks'}, "
          f"device {args.device}, {torch.get_num_threads()} threads; data built in {built:.1f} s")
    print("| modality | test accuracy | train accuracy | time (s) |\n|---|---|---|---|")
    for m, c in clfs.items():
        print(f"| {m} | {c.meta['test_accuracy']:.4f} | {c.meta['train_accuracy']:.4f} | {c.meta['time_s']:.1f} |")
    accs = [c.meta["test_accuracy"] for c in clfs.values()]
    print(f"min {min(accs):.4f}, mean {np.mean(accs):.4f}; train_classifiers took {total:.1f} s")
    return {"dataset": name, "source": source, "n_train": len(train), "n_test": len(test), "shape": shape,
            "epochs": args.epochs, "pool": not args.no_pool, "device": args.device,
            "threads": torch.get_num_threads(), "time_s": total,
            "per_modality": {m: c.meta for m, c in clfs.items()}}


def main(argv=None) -> int:
    """Parse the options, run each dataset, optionally write JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="both", choices=["polydigits", "polyfashion", "both"])
    p.add_argument("--epochs", type=int, default=EvalSettings.full().classifier_epochs,
                   help="training epochs (default: the full evaluation's, %(default)s)")
    p.add_argument("--n-train", dest="n_train", type=int, help="training tuples (default: PolyDigits' own, "
                   "10000 for PolyFashion)")
    p.add_argument("--n-test", dest="n_test", type=int, help="test tuples (default: PolyDigits' own, 2000)")
    p.add_argument("--modalities", metavar="LIST", help="comma list: train only these (default: all)")
    p.add_argument("--no-pool", dest="no_pool", action="store_true", help="one network per modality, trained on "
                   "its own rows only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = ["polydigits", "polyfashion"] if args.dataset == "both" else [args.dataset]
    results = [run(n, args) for n in names]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
