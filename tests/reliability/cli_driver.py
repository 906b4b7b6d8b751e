"""Runs `mmvae.cli.main` with one extra dataset registered: `tiny`, SharedPrivateToy with 64 training and 32 test
samples of 6 dims (so a CLI training run takes seconds). Used by the subprocess tests (SIGINT, SIGKILL)."""
import sys

from mmvae import cli
from mmvae.datasets import DATASETS, SharedPrivateToy


def tiny(split: str = "train", seed: int = 0, **kw):
    return SharedPrivateToy(split, n=64 if split == "train" else 32, obs_dim=6, seed=seed, **kw)


DATASETS["tiny"] = tiny

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
