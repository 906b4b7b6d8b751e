"""`mmvae data polymnist`: build the PolyMNIST layout from MNIST-format IDX files (MNIST, Fashion-MNIST, ...)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """`mmvae data KIND ...`: one sub-command per dataset kind (today: polymnist)."""
    kinds = p.add_subparsers(dest="data_kind", required=True, metavar="KIND")
    poly = kinds.add_parser("polymnist", help="PolyMNIST layout OUT/{train,test}/m{k}/{index}.{label}.png from IDX "
                            "files", description="Build the PolyMNIST layout with the published recipe: modality k's "
                            "background is a random crop of its own natural image, inverted where the source pixel "
                            "is > 128; each modality of a tuple shows a different source image of the tuple's class. "
                            "The same arguments give the same bytes.")
    poly.add_argument("--idx", type=Path, required=True, metavar="DIR",
                      help="folder with train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
                      "t10k-labels-idx1-ubyte (plain or .gz)")
    poly.add_argument("--out", type=Path, required=True, metavar="DIR", help="new (or empty) folder to write")
    poly.add_argument("--backgrounds", type=Path, metavar="DIR", help="one image per modality, taken in name order "
                      "(default: scikit-image's bundled photographs, pip install 'mmvae[images]')")
    poly.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the pairing and the crops "
                      "(default: %(default)s)")
    poly.add_argument("--modalities", type=int, default=5, metavar="M", help="number of modalities "
                      "(default: %(default)s)")
    poly.add_argument("--n-train", dest="n_train", type=int, metavar="N",
                      help="training tuples (default: one per training source image)")
    poly.add_argument("--n-test", dest="n_test", type=int, metavar="N",
                      help="test tuples (default: one per test source image)")


def data(args: argparse.Namespace) -> int:
    """`mmvae data polymnist`: write the layout into `--out`."""
    from ..datasets.polymnist import build_polymnist

    start = time.time()
    summary = build_polymnist(args.idx, args.out, backgrounds=args.backgrounds, seed=args.seed,
                              num_modalities=args.modalities, n_train=args.n_train, n_test=args.n_test)
    print(f"wrote {summary['out']}: {summary['train']} train and {summary['test']} test tuples of "
          f"{summary['modalities']} modalities ({time.time() - start:.1f} s)")
    return 0
