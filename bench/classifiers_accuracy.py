"""Test accuracy per modality and training time of the coherence classifiers (`train_classifiers`).

    python bench/classifiers_accuracy.py [--dataset polydigits|polyfashion|both] [--epochs N] [--n-train N]
                                         [--n-test N] [--modalities m0,m2] [--threads N] [--device cpu|cuda|auto]
                                         [--json out.json]

Targets (issue 8): >= 0.95 per modality on PolyDigits, >= 0.85 on PolyFashion (5 modalities, 3x28x28, >= 10k
training tuples). PolyFashion is `mmvae.datasets.polyfashion.PolyFashion` when that module is there, else an
in-memory stand-in built here with the same recipe from the Debian Fashion-MNIST IDX files and scikit-image's
photographs (modality k: a random 28x28 crop of photo k, inverted where the source pixel is > 128; each modality
of a tuple a different source image of the tuple's class).
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

from mmvae.datasets import MultimodalDataset, PolyDigits, read_idx  # noqa: E402
from mmvae.evaluation import train_classifiers  # noqa: E402
from mmvae.evaluation.settings import EvalSettings  # noqa: E402

FASHION = Path("/usr/share/datasets/fashion-mnist")
PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "rocket")


def polydigits(n_train: int | None, n_test: int | None, seed: int):
    """PolyDigits train and test splits (default sizes when n is None)."""
    return (PolyDigits("train", seed=seed, n_tuples=n_train), PolyDigits("test", seed=seed, n_tuples=n_test)), \
        "mmvae.datasets.PolyDigits"


def _standin_split(images: np.ndarray, labels: np.ndarray, n: int, photos: list, rng) -> MultimodalDataset:
    """n tuples: tuple i has class labels[i]; modality k a different source image of that class on photo k."""
    n = min(n, len(labels))
    pools = {c: np.flatnonzero(labels == c) for c in range(10)}
    y = labels[:n]
    src = np.stack([rng.choice(pools[int(c)], len(photos), replace=False) for c in y])  # [n, M]
    src[:, 0] = np.arange(n)  # m0 shows image i (others may repeat it rarely: a stand-in, not the builder)
    data = {}
    for k, photo in enumerate(photos):
        top = rng.integers(0, photo.shape[0] - 28 + 1, n)
        left = rng.integers(0, photo.shape[1] - 28 + 1, n)
        crop = photo[(top[:, None] + np.arange(28))[:, :, None], (left[:, None] + np.arange(28))[:, None, :]]
        x = np.where(images[src[:, k]][..., None] > 128, 255 - crop, crop)  # [n, 28, 28, 3] uint8
        data[f"m{k}"] = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).float().div_(255.0)
    return MultimodalDataset(data, targets=torch.from_numpy(y.astype(np.int64)), num_classes=10)


def polyfashion(n_train: int | None, n_test: int | None, seed: int):
    """PolyFashion train and test splits: the package's when it is there, else the stand-in."""
    n_train, n_test = n_train or 10_000, n_test or 2_000
    try:
        from mmvae.datasets.polyfashion import PolyFashion

        return (PolyFashion("train", n_train=n_train, n_test=n_test, seed=seed),
                PolyFashion("test", n_train=n_train, n_test=n_test, seed=seed)), "mmvae.datasets.PolyFashion"
    except ImportError:
        pass
    import skimage.data

    photos = [np.asarray(getattr(skimage.data, p)()) for p in PHOTOS]
    photos = [np.repeat(p[..., None], 3, -1) if p.ndim == 2 else p[..., :3] for p in photos]
    out = []
    for s, (split, n) in enumerate((("train", n_train), ("t10k", n_test))):
        images = read_idx(FASHION / f"{split}-images-idx3-ubyte.gz")
        labels = read_idx(FASHION / f"{split}-labels-idx1-ubyte.gz").astype(np.int64)
        out.append(_standin_split(images, labels, n, photos, np.random.default_rng([seed, s])))
    return tuple(out), "stand-in built by bench/classifiers_accuracy.py"


def run(name: str, args) -> dict:
    """Build the data, train the classifiers, print and return the table."""
    t = time.time()
    (train, test), source = (polydigits if name == "polydigits" else polyfashion)(args.n_train, args.n_test,
                                                                                  args.seed)
    built = time.time() - t
    t = time.time()
    clfs = train_classifiers(train, test, epochs=args.epochs, device=args.device, seed=args.seed,
                             modalities=args.modalities.split(",") if args.modalities else None)
    total = time.time() - t
    shape = list(next(iter(train.data.values())).shape[1:])
    print(f"\n{name} ({source}): {len(train)} train / {len(test)} test tuples of {shape}, {args.epochs} epochs, "
          f"device {args.device}, {torch.get_num_threads()} threads; data built in {built:.1f} s")
    print("| modality | test accuracy | train accuracy | time (s) |\n|---|---|---|---|")
    for m, c in clfs.items():
        print(f"| {m} | {c.meta['test_accuracy']:.4f} | {c.meta['train_accuracy']:.4f} | {c.meta['time_s']:.1f} |")
    accs = [c.meta["test_accuracy"] for c in clfs.values()]
    print(f"min {min(accs):.4f}, mean {np.mean(accs):.4f}; train_classifiers took {total:.1f} s")
    return {"dataset": name, "source": source, "n_train": len(train), "n_test": len(test), "shape": shape,
            "epochs": args.epochs, "device": args.device, "threads": torch.get_num_threads(), "time_s": total,
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
