"""Per-modality classifiers for coherence: trained on real data, tested, checksummed, cached in a run folder.

A coherence score is only as good as the classifier that reads the generated samples, so each classifier carries
its own test accuracy and a sha256 of the data it was trained on, and `check_accuracy` refuses weak ones.
Images get a small ResNet (as the published PolyMNIST protocol uses), vectors an MLP, integer tokens an embedding
and a 1-d convnet, float sequences [T, C] a temporal convnet pooled over their valid (not NaN-padded) steps. Any
callable `x [B, *shape] -> logits [B, C]` can stand in for a classifier (a user's own); `load_user_classifiers`
reads a folder in the format `save_classifiers` writes and checks it against a dataset.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import pickle
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..atomic import replace_file, write_json
from ..devices import resolve_device
from ..errors import CheckpointError, InputError
from .sequences import TemporalNet, is_sequence
from .subset_batches import as_eval_data

WEIGHTS_FILE, META_FILE = "classifiers.pt", "classifiers.json"
#: bumped whenever the networks or their training change: cached classifiers of another version are retrained
CLASSIFIER_VERSION = 5
KINDS = ("conv", "mlp", "tokens", "temporal")
#: default learning rates: the ResNets' one-cycle peak (BatchNorm takes a high one), the MLP and token nets' constant
CONV_LR, DENSE_LR = 6e-3, 2e-3


def _norm(c: int) -> nn.BatchNorm2d:
    """BatchNorm: batch statistics in training, the running ones in evaluation (so any batch size, one row included,
    predicts the same; generated batches never shift the statistics). It fits PolyFashion's photo backgrounds better
    than GroupNorm."""
    return nn.BatchNorm2d(c)


class ResidualBlock(nn.Module):
    """Two 3x3 convs with a skip connection (a 1x1 conv where the stride or width changes).  [B, a, H, W] ->
    [B, b, H / stride, W / stride]"""

    def __init__(self, a: int, b: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(a, b, 3, stride, 1, bias=False), _norm(b), nn.ReLU(),
                                  nn.Conv2d(b, b, 3, 1, 1, bias=False), _norm(b))
        self.skip = nn.Identity() if stride == 1 and a == b else nn.Sequential(
            nn.Conv2d(a, b, 1, stride, bias=False), _norm(b))

    def forward(self, x: Tensor) -> Tensor:
        """relu(body(x) + skip(x))."""
        return F.relu(self.body(x) + self.skip(x))


def _resnet(in_channels: int, channels: list[int], num_classes: int) -> nn.Sequential:
    """Stem conv, one residual block per width (stride 2 from the second on), global average pool, linear head."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, channels[0], 3, 1, 1, bias=False), _norm(channels[0]),
                               nn.ReLU()]
    for i, c in enumerate(channels):
        layers.append(ResidualBlock(channels[max(i - 1, 0)], c, stride=1 if i == 0 else 2))
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels[-1], num_classes))


class TokenNet(nn.Module):
    """Tokens [B, *shape] (flattened to a sequence of T) -> embedding, two 1-d convs, mean and max over T, linear."""

    def __init__(self, vocab: int, hidden: int, num_classes: int, embed_dim: int = 32, width: int = 5):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed_dim)
        self.convs = nn.Sequential(nn.Conv1d(embed_dim, hidden, width, 1, width // 2), nn.ReLU(),
                                   nn.Conv1d(hidden, hidden, width, 1, width // 2), nn.ReLU())
        self.head = nn.Linear(2 * hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """x [B, *shape] long -> logits [B, num_classes]."""
        h = self.convs(self.embed(x.flatten(1)).transpose(1, 2))  # [B, hidden, T]
        return self.head(torch.cat([h.mean(-1), h.amax(-1)], dim=1))


def default_kind(in_shape, vocab: int | None = None) -> str:
    """The architecture "auto" picks: tokens with a vocabulary, a ResNet for [C, H, W], a temporal convnet for
    sequences [T, C] (T >= 8), an MLP for anything else."""
    if vocab:
        return "tokens"
    return "conv" if len(in_shape) == 3 else ("temporal" if is_sequence(in_shape) else "mlp")


class Classifier(nn.Module):
    """A classifier for one modality: a ResNet for images [C, H, W] ("conv"), an MLP for vectors ("mlp"), an
    embedding and 1-d convnet for integer tokens ("tokens"), a temporal convnet for float sequences [T, C]
    ("temporal"). `spec` rebuilds it; `meta` holds test accuracy, checksum and training settings."""

    def __init__(self, in_shape, num_classes: int, kind: str = "auto", vocab: int | None = None, hidden: int = 128,
                 channels=(16, 32, 64)):
        super().__init__()
        in_shape = tuple(int(s) for s in in_shape)
        if kind == "auto":
            kind = default_kind(in_shape, vocab)
        if kind not in KINDS:
            raise InputError(f"classifier kind must be 'auto' or one of {list(KINDS)}, got {kind!r}")
        if kind == "tokens" and not vocab:
            raise InputError("a 'tokens' classifier needs the vocabulary size `vocab`")
        if kind == "conv" and len(in_shape) != 3:
            raise InputError(f"a 'conv' classifier reads images [C, H, W], got input shape {list(in_shape)}")
        if kind == "temporal" and len(in_shape) != 2:
            raise InputError(f"a 'temporal' classifier reads sequences [T, C], got input shape {list(in_shape)}")
        channels = [int(c) for c in channels]
        self.spec = {"in_shape": list(in_shape), "num_classes": int(num_classes), "kind": kind, "vocab": vocab,
                     "hidden": hidden, "channels": channels}
        self.meta: dict = {}
        if kind == "conv":
            self.net = _resnet(in_shape[0], channels, num_classes)
        elif kind == "temporal":
            self.net = TemporalNet(in_shape[1], hidden, num_classes)
        elif kind == "mlp":
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(in_shape), hidden), nn.ReLU(),
                                     nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
        else:
            self.net = TokenNet(int(vocab), hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:  # [B, *in_shape] -> [B, C]
        """Class logits; token inputs are clamped into the vocabulary, NaN padding of sequences masked."""
        if self.spec["kind"] == "tokens":
            return self.net(x.long().clamp(0, self.spec["vocab"] - 1))
        return self.net(x.float() if self.spec["kind"] != "mlp" else torch.nan_to_num(x.float()))

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
def predict(classifier, x: Tensor, batch_size: int = 1024) -> Tensor:
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


def accuracy(classifier, x: Tensor, y: Tensor) -> float:
    """Fraction of rows of x [n, *shape] that `classifier` puts in class y [n] (NaN for no rows)."""
    return float((predict(classifier, x) == y.to(x.device)).float().mean()) if len(y) else float("nan")


def random_shift(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Each image of x [B, C, H, W] translated by its own (dy, dx) in [-max_shift, max_shift], edges replicated."""
    if max_shift <= 0:
        return x
    B, _, H, W = x.shape
    pad = F.pad(x, [max_shift] * 4, mode="replicate")  # [B, C, H + 2s, W + 2s]
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, B, 1), generator=generator).to(x.device)
    rows = (dy + torch.arange(H, device=x.device))[:, :, None]  # [B, H, 1]
    cols = (dx + torch.arange(W, device=x.device))[:, None, :]  # [B, 1, W]
    b = torch.arange(B, device=x.device)[:, None, None]
    return pad.permute(0, 2, 3, 1)[b, rows, cols].permute(0, 3, 1, 2)  # [B, H, W, C] -> [B, C, H, W]


def fit_classifier(clf: Classifier, x: Tensor, y: Tensor, epochs: int, batch_size: int = 128,
                   lr: float | None = None, seed: int = 0, shift: int = 1) -> Classifier:
    """Train `clf` on x [n, *shape], y [n] with AdamW (weight decay 1e-4): ResNets under a one-cycle learning-rate
    schedule peaking at `lr` (default CONV_LR), on images shifted by up to `shift` pixels at random; the small MLP
    and token nets at the constant `lr` (default DENSE_LR: they converge in a few steps, which a warm-up would
    waste). Returns clf in eval mode."""
    dev = next(clf.parameters()).device
    steps = epochs * math.ceil(len(y) / batch_size)
    if steps == 0:
        return clf.eval()
    images = clf.spec["kind"] == "conv"
    lr = lr if lr is not None else (CONV_LR if images else DENSE_LR)
    opt = torch.optim.AdamW(clf.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15) if images \
        else torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0)
    g = torch.Generator().manual_seed(seed)
    clf.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), batch_size):
            idx = perm[i:i + batch_size]
            if len(idx) == 1 < len(y) and images:
                continue  # BatchNorm's training statistics need two rows (a 1x1 feature map of one row has none)
            xb = x[idx].to(dev)
            if images:
                xb = random_shift(xb.float(), shift, g)
            loss = F.cross_entropy(clf(xb), y[idx].to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
    if images:
        recalibrate_batchnorm(clf, x, batch_size=max(batch_size, 256))
    return clf.eval()


@torch.no_grad()
def recalibrate_batchnorm(clf: nn.Module, x: Tensor, batch_size: int = 256, max_rows: int = 8192) -> None:
    """Reset the BatchNorm running statistics of `clf` to their plain average over (a random max_rows of) the
    unshifted training images x [n, C, H, W]: after few training steps the momentum average still leans on its
    initial (0, 1), which would spoil evaluation-mode predictions. Leaves clf in training mode."""
    bns = [m for m in clf.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or len(x) == 0:
        return
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    dev = next(clf.parameters()).device
    clf.train()
    rows = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:max_rows]  # any class order
    for i in range(0, len(rows), batch_size):
        if 0 < i and len(rows) - i < batch_size // 2:
            break  # a small last chunk would weigh as much as a full one in the average
        clf(x[rows[i:i + batch_size]].to(dev).float())
    for m, mom in zip(bns, momenta):
        m.momentum = mom


def pooled_groups(train, names: list[str], pool: bool = True) -> list[list[str]]:
    """Which modalities share one classifier: with `pool`, the float image modalities [C, H, W] of one shape (each
    network then trains on every such modality's rows: M times the data, which is what lifts PolyFashion's
    classifiers from about 0.81 to about 0.87); every other modality alone."""
    groups: dict = {}
    for name in names:
        x = train.data[name]
        key = tuple(x.shape[1:]) if pool and x.dim() == 4 and x.is_floating_point() else name
        groups.setdefault(key, []).append(name)
    return list(groups.values())


def group_data(train, group: list[str]) -> tuple[Tensor, Tensor]:
    """The observed, labelled rows of every modality of `group`, stacked: (x [n, *shape], y [n])."""
    parts = [modality_data(train, name) for name in group]
    return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])


def train_classifiers(train, test, epochs: int = 10, device: str | torch.device = "auto", seed: int = 0,
                      batch_size: int = 128, lr: float | None = None, modalities: list[str] | None = None,
                      shift: int = 1, pool: bool = True) -> dict[str, Classifier]:
    """One classifier per modality, trained on the real observed training rows and scored on the test rows; with
    `pool`, image modalities of one shape share a network trained on all their rows (`pooled_groups`), and each
    modality still gets its own copy and its own test accuracy.

    Each gets `.meta = {version, test_accuracy, train_accuracy, checksum (sha256 of the x and y it was trained on),
    pooled_with, n_train, n_test, epochs, seed, time_s}`. See `fit_classifier` for the optimiser and augmentation.
    """
    train, test = as_eval_data(train), as_eval_data(test)
    if train.labels is None:
        raise InputError("coherence classifiers need class labels, and the training data has none")
    dev = resolve_device(device)
    num_classes = train.num_classes or int(train.labels.max()) + 1
    out = {}
    for group in pooled_groups(train, list(modalities or train.names), pool):
        start = time.time()
        x, y = group_data(train, group)
        if len(y) == 0:
            raise InputError(f"modality {group[0]!r}: no observed, labelled training rows to train a classifier on")
        torch.manual_seed(seed)
        tests = {m: modality_data(test, m) if m in test.names else (x[:0], y[:0]) for m in group}
        vocab = None if x.is_floating_point() else \
            int(max([x.max()] + [xt.max() for xt, _ in tests.values() if len(xt)])) + 1
        clf = fit_classifier(Classifier(x.shape[1:], num_classes, vocab=vocab).to(dev), x, y, epochs,
                             batch_size=batch_size, lr=lr, seed=seed, shift=shift)
        took, checksum = round(time.time() - start, 2), data_checksum(x, y)
        for m in group:
            own = clf if m == group[-1] else copy.deepcopy(clf)
            (xt, yt), xm = tests[m], modality_data(train, m)
            own.meta = {"version": CLASSIFIER_VERSION, "test_accuracy": accuracy(own, xt.to(dev), yt),
                        "train_accuracy": accuracy(own, xm[0].to(dev), xm[1]), "checksum": checksum,
                        "pooled_with": group, "n_train": len(y), "n_test": len(yt), "epochs": epochs,
                        "seed": seed, "time_s": took}
            out[m] = own
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
    """folder/classifiers.pt ({modality: state dict}; loads with weights_only=True) and folder/classifiers.json
    ({modality: {"spec": Classifier arguments, "meta": accuracy, checksum, ...}}), each replaced atomically.
    Returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    states = {n: {k: v.detach().cpu() for k, v in c.state_dict().items()} for n, c in classifiers.items()}
    meta = {n: {"spec": c.spec, "meta": c.meta} for n, c in classifiers.items()}
    replace_file(folder / WEIGHTS_FILE, lambda f: torch.save(states, f))
    write_json(folder / META_FILE, meta)
    return folder


def _build(spec: dict, state: dict, map_location) -> Classifier:
    """A Classifier from its JSON spec and state dict (TypeError, KeyError, RuntimeError, InputError if they do
    not fit)."""
    spec = dict(spec)
    clf = Classifier(spec.pop("in_shape"), spec.pop("num_classes"), **spec)
    clf.load_state_dict(state)
    return clf.eval().to(map_location)


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
            out[name] = _build(entry["spec"], states[name], map_location)
            out[name].meta = entry["meta"]
    except (KeyError, RuntimeError, ValueError, TypeError, pickle.UnpicklingError) as e:
        raise CheckpointError(f"{folder}: cannot load the cached classifiers ({e}); delete them to retrain") from e
    return out


def classifiers_match(classifiers: dict[str, Classifier] | None, train, sums: dict | None = None) -> bool:
    """True if there is a cached classifier of this version for every modality and each was trained on exactly
    this data (its modality's rows, or its pooled group's). sums: a memo {group tuple: checksum of its training
    rows}, filled here, so that several lookups on one dataset hash it once."""
    if not classifiers:
        return False
    train = as_eval_data(train)
    sums = {} if sums is None else sums
    for name in train.names:
        c = classifiers.get(name)
        if c is None or c.meta.get("version") != CLASSIFIER_VERSION:
            return False
        x = train.data[name]
        if (c.spec.get("kind") == "temporal") != (x.is_floating_point() and is_sequence(x.shape[1:])):
            return False  # a sequence's cached MLP (from before the temporal nets) is retrained
        group = c.meta.get("pooled_with") or [name]
        if name not in group or not set(group) <= set(train.names):
            return False
        key = tuple(group)
        if key not in sums:
            sums[key] = data_checksum(*group_data(train, group))
        if c.meta.get("checksum") != sums[key]:
            return False
    return True


def _read_user_files(folder: Path) -> tuple[dict, dict]:
    """(states, configs) of a user's classifier folder, or InputError naming the file and what is wrong."""
    weights, config = folder / WEIGHTS_FILE, folder / META_FILE
    for path in (weights, config):
        if not path.is_file():
            raise InputError(f"--classifiers {folder}: {path} not found (the folder must hold {WEIGHTS_FILE}, a "
                             f"weights-only {{modality: state dict}}, and {META_FILE}, {{modality: {{\"spec\": "
                             f"...}}}}, as save_classifiers writes)")
    try:
        configs = json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{config}: not valid JSON ({e})") from e
    try:
        states = torch.load(weights, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{weights}: not a weights-only file of state dicts; torch.load(weights_only=True) "
                         f"refused it ({first}); save plain state dicts, e.g. with save_classifiers") from e
    for path, obj in ((config, configs), (weights, states)):
        if not isinstance(obj, dict):
            raise InputError(f"{path}: expected a mapping modality -> classifier, got {type(obj).__name__}")
    return states, configs


def _check_spec(name: str, entry, config: Path, shape: tuple, num_classes: int | None) -> dict:
    """The spec of modality `name` after checking its input shape and class count against the dataset's."""
    spec = entry.get("spec") if isinstance(entry, dict) else None
    if not isinstance(spec, dict) or "in_shape" not in spec or "num_classes" not in spec:
        raise InputError(f"modality {name!r}: {config} needs an entry {{\"spec\": {{\"in_shape\": ..., "
                         f"\"num_classes\": ..., \"kind\": ...}}}} for it")
    if [int(s) for s in spec["in_shape"]] != list(shape):
        raise InputError(f"modality {name!r}: the classifier in {config} takes input shape "
                         f"{list(spec['in_shape'])}, the dataset's is {list(shape)}")
    if num_classes is not None and int(spec["num_classes"]) != num_classes:
        raise InputError(f"modality {name!r}: the classifier in {config} has {spec['num_classes']} classes, the "
                         f"dataset has {num_classes}")
    return spec


def load_user_classifiers(folder, shapes: dict[str, tuple], num_classes: int | None, map_location="cpu"
                          ) -> dict[str, Classifier]:
    """A user's classifiers for the modalities `shapes` (name -> input shape) from `folder` in the format
    `save_classifiers` writes; the weights are read with torch.load(weights_only=True) only.

    InputError naming the modality, the file and the mismatch for a missing modality, another input shape or
    number of classes (not checked when None), weights that do not fit their spec, or a file that is not
    weights-only.
    """
    folder = Path(folder)
    states, configs = _read_user_files(folder)
    config, weights = folder / META_FILE, folder / WEIGHTS_FILE
    out = {}
    for name, shape in shapes.items():
        if name not in configs:
            raise InputError(f"modality {name!r}: no classifier for it in {config} (it has {sorted(configs)})")
        if name not in states:
            raise InputError(f"modality {name!r}: no state dict for it in {weights} (it has {sorted(states)})")
        spec = _check_spec(name, configs[name], config, tuple(shape), num_classes)
        try:
            out[name] = _build(spec, states[name], map_location)
        except (TypeError, KeyError, RuntimeError, InputError) as e:
            raise InputError(f"modality {name!r}: the weights in {weights} do not fit the spec in {config} "
                             f"({str(e).strip().splitlines()[0]})") from e
        out[name].meta = dict(configs[name].get("meta") or {})
    return out
