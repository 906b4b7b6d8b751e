"""What the one-run bench scripts (mmvm_fidelity, sequences, latent_structure) share: coherence classifiers
trained once per dataset and cached, and one JSON line per run, printed and appended to a file."""
from __future__ import annotations

import json
from pathlib import Path

from mmvae.evaluation.classifiers import load_classifiers, save_classifiers, train_classifiers


def cached_classifiers(train, test, folder, epochs: int):
    """The coherence classifiers in `folder`, trained there (on the CPU, `epochs` epochs) on first use, so that
    every run of a bench scores with the same ones."""
    c = load_classifiers(Path(folder))
    if c is None:
        c = train_classifiers(train, test, epochs=epochs, device="cpu")
        save_classifiers(c, Path(folder))
    return c


def emit(row: dict, out=None) -> None:
    """Print `row` as one JSON line, and append it to the file `out` when given."""
    line = json.dumps(row)
    print(line)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")
