"""Per-modality classifiers for coherence: trained on real data, tested, checksummed, cached in a run folder.

A coherence score is only as good as the classifier that reads the generated samples, so each classifier carries
its own test accuracy and a sha256 of the data it was trained on, and `check_accuracy` refuses weak ones.
Any callable `x [B, *shape] -> logits [B, C]` can stand in for a classifier (a user's own).
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..devices import resolve_device
from ..errors import CheckpointError, InputError
from .subset_batches import as_eval_data

WEIGHTS_FILE, META_FILE = "classifiers.pt", "classifiers.json"


class Classifier(nn.Module):
    """A small classifier for one modality: a convnet for images [C, H, W], an MLP for vectors, an embedding + MLP
    for integer tokens. `spec` rebuilds it; `meta` holds test accuracy, checksum and training settings."""

    def __init__(self, in_shape, num_classes: int, kind: str = "auto", vocab: int | None = None, hidden: int = 128,
                 channels=(16, 32)):
        super().__init__()
        in_shape = tuple(int(s) for s in in_shape)
        if kind == "auto":
            kind = "tokens" if vocab else ("conv" if len(in_shape) == 3 else "mlp")
        c1, c2 = channels
        self.spec = {"in_shape": list(in_shape), "num_classes": int(num_classes), "kind": kind, "vocab": vocab,
                     "hidden": hidden, "channels": [c1, c2]}
        self.meta: dict = {}
        if kind == "conv":
            C = in_shape[0]
            self.net = nn.Sequential(
                nn.Conv2d(C, c1, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(c1, c2, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2),
                nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Dropout(0.25),
                nn.Linear(c2 * 16, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
        elif kind == "mlp":
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(in_shape), hidden), nn.ReLU(),
                                     nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
        elif kind == "tokens":
            self.net = nn.Sequential(nn.Embedding(int(vocab), 16), nn.Flatten(),
                                     nn.Linear(16 * math.prod(in_shape), hidden), nn.ReLU(),
                                     nn.Linear(hidden, num_classes))
        else:
            raise InputError(f"classifier kind must be 'auto', 'conv', 'mlp' or 'tokens', got {kind!r}")

    def forward(self, x: Tensor) -> Tensor:  # [B, *in_shape] -> [B, C]
        """Class logits; token inputs are clamped into the vocabulary."""
        if self.spec["kind"] == "tokens":
            return self.net(x.long().clamp(0, self.spec["vocab"] - 1))
        return self.net(x.float())

    @property
    def test_accuracy(self) -> float | None:
        """Accuracy on the held-out split at training time (None for classifiers never scored)."""
        return self.meta.get("test_accuracy")


def data_checksum(x: Tensor, y: Tensor) -> str:
    """sha256 of the bytes of (x, y) with their shapes and dtypes: identifies a classifier's training data."""
    h = hashlib.sha256()
    for t in (x, y):
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def modality_data(data, name: str) -> tuple[Tensor, Tensor]:
    """The observed, labelled rows of one modality: (x [n, *shape], y [n])."""
    i = data.names.index(name)
    keep = data.avail[:, i] & (data.labels >= 0)
    return data.data[name][keep], data.labels[keep]


@torch.no_grad()
def predict(classifier, x: Tensor, batch_size: int = 4096) -> Tensor:
    """Class predictions for x [B, *shape] in chunks, on the classifier's device.  -> [B] long"""
    dev = next(classifier.parameters()).device if isinstance(classifier, nn.Module) and \
        any(True for _ in classifier.parameters()) else x.device
    was_training = getattr(classifier, "training", False)
    if isinstance(classifier, nn.Module):
        classifier.eval()
    out = [classifier(x[i:i + batch_size].to(dev)).argmax(-1) for i in range(0, x.shape[0], batch_size)]
    if isinstance(classifier, nn.Module):
        classifier.train(was_training)
    return torch.cat(out).to(x.device) if out else torch.zeros(0, dtype=torch.long, device=x.device)


def _accuracy(classifier, x: Tensor, y: Tensor) -> float:
    return float((predict(classifier, x) == y.to(x.device)).float().mean()) if len(y) else float("nan")


def train_classifiers(train, test, epochs: int = 10, device: str | torch.device = "auto", seed: int = 0,
                      batch_size: int = 128, lr: float = 1e-3, modalities: list[str] | None = None
                      ) -> dict[str, Classifier]:
    """One classifier per modality, trained on the real observed training rows and scored on the test rows.

    Each gets `.meta = {test_accuracy, train_accuracy, checksum (sha256 of its training x and y), n_train, n_test,
    epochs, seed}`.
    """
    train, test = as_eval_data(train), as_eval_data(test)
    if train.labels is None:
        raise InputError("coherence classifiers need class labels, and the training data has none")
    dev = resolve_device(device)
    num_classes = train.num_classes or int(train.labels.max()) + 1
    out = {}
    for name in modalities or train.names:
        x, y = modality_data(train, name)
        xt, yt = modality_data(test, name) if name in test.names else (x[:0], y[:0])
        if len(y) == 0:
            raise InputError(f"modality {name!r}: no observed, labelled training rows to train a classifier on")
        torch.manual_seed(seed)
        vocab = int(max(x.max(), xt.max() if len(xt) else 0)) + 1 if not x.is_floating_point() else None
        clf = Classifier(x.shape[1:], num_classes, vocab=vocab).to(dev)
        opt = torch.optim.Adam(clf.parameters(), lr=lr)
        g = torch.Generator().manual_seed(seed)
        clf.train()
        for _ in range(epochs):
            perm = torch.randperm(len(y), generator=g)
            for i in range(0, len(y), batch_size):
                idx = perm[i:i + batch_size]
                loss = F.cross_entropy(clf(x[idx].to(dev)), y[idx].to(dev))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        clf.eval()
        clf.meta = {"test_accuracy": _accuracy(clf, xt.to(dev), yt), "train_accuracy": _accuracy(clf, x.to(dev), y),
                    "checksum": data_checksum(x, y), "n_train": len(y), "n_test": len(yt), "epochs": epochs,
                    "seed": seed}
        out[name] = clf
    return out


def check_accuracy(classifiers: dict, threshold: float) -> dict[str, float]:
    """Raise InputError naming the first modality whose classifier's test accuracy is below threshold.

    Returns name -> test accuracy (None for user classifiers that carry no accuracy; those are not checked).
    """
    accs = {name: getattr(c, "test_accuracy", None) for name, c in classifiers.items()}
    for name, acc in accs.items():
        if acc is not None and not acc >= threshold:
            raise InputError(f"coherence classifier for modality {name!r} has test accuracy {acc:.3f}, below the "
                             f"threshold {threshold:.3f}: its coherence scores would not be trustworthy (train it "
                             f"longer, pass your own classifiers, or lower the threshold)")
    return accs


def save_classifiers(classifiers: dict[str, Classifier], folder) -> Path:
    """folder/classifiers.pt (state dicts only; loads with weights_only=True) and folder/classifiers.json (spec
    and meta per modality). Returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({n: {k: v.detach().cpu() for k, v in c.state_dict().items()} for n, c in classifiers.items()},
               folder / WEIGHTS_FILE)
    meta = {n: {"spec": c.spec, "meta": c.meta} for n, c in classifiers.items()}
    (folder / META_FILE).write_text(json.dumps(meta, indent=2))
    return folder


def load_classifiers(folder, map_location="cpu") -> dict[str, Classifier] | None:
    """Classifiers saved by `save_classifiers`, or None if the folder holds none."""
    folder = Path(folder)
    if not (folder / WEIGHTS_FILE).exists() or not (folder / META_FILE).exists():
        return None
    try:
        states = torch.load(folder / WEIGHTS_FILE, map_location=map_location, weights_only=True)
        meta = json.loads((folder / META_FILE).read_text())
        out = {}
        for name, entry in meta.items():
            spec = dict(entry["spec"])
            clf = Classifier(spec.pop("in_shape"), spec.pop("num_classes"), **spec)
            clf.load_state_dict(states[name])
            clf.meta = entry["meta"]
            out[name] = clf.eval().to(map_location)
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{folder}: cannot load the cached classifiers ({e}); delete them to retrain") from e
    return out


def classifiers_match(classifiers: dict[str, Classifier] | None, train) -> bool:
    """True if there is a cached classifier for every modality and each was trained on exactly this data."""
    if not classifiers:
        return False
    train = as_eval_data(train)
    for name in train.names:
        c = classifiers.get(name)
        if c is None or c.meta.get("checksum") != data_checksum(*modality_data(train, name)):
            return False
    return True
