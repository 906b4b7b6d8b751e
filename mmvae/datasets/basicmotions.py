"""BasicMotions (UEA archive): a smart watch's 3-axis accelerometer and 3-axis gyroscope, 10 Hz for 10 s, while
four people stand, walk, run or play badminton; 40 train and 40 test series, 10 of each class per split.

Read from the `aeon` package (`aeon.datasets.load_basic_motions`, which ships the files: no download), an optional
dependency: `pip install "mmvae[basicmotions]"`. Two modalities, `accelerometer` and `gyroscope`, each a float
`[T, 3]` series (time first, channels last, the toolkit's sequence layout) with the Gaussian likelihood; targets are
the activity's class id in `CLASSES` order. Every channel is standardised with the train split's mean and standard
deviation over all its series and steps, so the test split is scaled by train statistics.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError
from .base import MultimodalDataset

SPLITS = ("train", "test")
CLASSES = ("standing", "running", "walking", "badminton")
MODALITIES = {"accelerometer": slice(0, 3), "gyroscope": slice(3, 6)}  # channels of aeon's [N, 6, 100] array
SERIES_LENGTH = 100
WINDOW, STRIDE = 50, 10  # defaults: 6 windows of 5 s per series, 240 train / 240 test tuples
MISSING_AEON = 'needs the optional package aeon: pip install "mmvae[basicmotions]"'


def num_windows(length: int, window: int | None, stride: int) -> int:
    """Windows of one series: 1 + (length - window) // stride (1 for window None, the whole series)."""
    return 1 if window is None else 1 + (length - window) // stride


def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """aeon's series of one split as float32 and their class ids.  # [40, 6, 100], [40]"""
    if split not in SPLITS:
        raise InputError(f"basicmotions: split must be one of {list(SPLITS)}, got {split!r}")
    try:
        from aeon.datasets import load_basic_motions
    except ImportError:
        raise InputError(f"--dataset basicmotions {MISSING_AEON}") from None
    X, y = load_basic_motions(split=split)
    names = [str(v).lower() for v in y]
    unknown = sorted(set(names) - set(CLASSES))
    if unknown:
        raise InputError(f"basicmotions: aeon returned the unknown activity {unknown[0]!r}; expected {list(CLASSES)}")
    return np.asarray(X, dtype=np.float32), np.array([CLASSES.index(v) for v in names], dtype=np.int64)


def train_statistics() -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of the train split over series and steps.  # [6], [6]"""
    X, _ = load_split("train")
    return X.mean((0, 2)), X.std((0, 2))


def windows(X: np.ndarray, window: int | None, stride: int) -> np.ndarray:
    """Overlapping windows of every series, series-major: [N, C, L] -> [N * W, window, C] (W = `num_windows`)."""
    X = X.transpose(0, 2, 1)  # [N, L, C]
    if window is None:
        return X
    starts = range(0, X.shape[1] - window + 1, stride)
    return np.stack([X[:, s:s + window] for s in starts], 1).reshape(-1, window, X.shape[2])  # [N * W, window, C]


class BasicMotions(MultimodalDataset):
    """BasicMotions as `accelerometer` and `gyroscope` [window, 3] series, class ids in `targets` / `.labels`.

    window: steps per tuple, cut from each series every `stride` steps; None takes the whole 100-step series (40
    tuples per split). The default, 50 steps (5 s) every 10, gives 6 windows a series, 240 tuples per split: each
    window still spans several cycles of walking, running or badminton strokes, and six times the tuples train
    steadier than 40. Windows overlap (80% by default), so the 240 are not independent: the effective sample size
    is still 40 series. Windows never cross splits: aeon's train/test split is by series (recording), and windows
    are cut within a split. `.series` [N] says which series each window comes from, `.start` [N] its first step.
    """

    per_sample = ("labels", "series", "start")

    def __init__(self, split: str = "train", window: int | None = WINDOW, stride: int = STRIDE):
        if window is not None and not 1 <= window <= SERIES_LENGTH:
            raise InputError(f"basicmotions: window must be None or 1..{SERIES_LENGTH} steps, got {window!r}")
        if stride < 1:
            raise InputError(f"basicmotions: stride must be >= 1 step, got {stride!r}")
        X, y = load_split(split)  # [40, 6, 100], [40]
        mean, std = train_statistics()  # [6]
        X = (X - mean[:, None]) / std[:, None]
        W = num_windows(X.shape[2], window, stride)
        cut = torch.from_numpy(np.ascontiguousarray(windows(X, window, stride)))  # [N * W, T, 6]
        data = {name: cut[:, :, ch].contiguous() for name, ch in MODALITIES.items()}  # [N * W, T, 3]
        labels = torch.from_numpy(np.repeat(y, W))  # [N * W]
        super().__init__(data, targets=labels, likelihoods=dict.fromkeys(MODALITIES, "gaussian"),
                         num_classes=len(CLASSES))
        self.classes = list(CLASSES)
        self.series = torch.arange(X.shape[0]).repeat_interleave(W)  # [N * W]
        self.start = (torch.arange(W) * stride).repeat(X.shape[0])  # [N * W]
        self.split, self.window, self.stride = split, window, stride


def make_basicmotions(split: str = "train", window: int | None = WINDOW, stride: int = STRIDE, seed: int = 0,
                      **kw) -> BasicMotions:
    """BasicMotions for `--dataset basicmotions` (240 / 240 windows of 50 steps by default; window None: the
    40 / 40 whole series); `seed` is unused (the data and split are fixed), kw: BasicMotions' options."""
    return BasicMotions(split, window=window, stride=stride, **kw)
