"""PolyDigits: a PolyMNIST-style dataset built from scikit-learn's bundled 8x8 digits (no download).

Modality m shows a digit of the tuple's class on a random crop of its own coloured texture, the background
inverted where the digit is: x = bg * (1 - d) + (1 - bg) * d, with d the upsampled digit intensity in [0, 1].
Each modality of a tuple draws its own source image of that class, so only the class is shared.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from .base import MultimodalDataset

SPLITS = ("train", "test")
TEST_EVERY = 5  # every 5th image of each class (in source order) is a test image: a stratified ~80/20 split
GOLDEN = 0.6180339887498949


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 source images in [0, 1] and their labels.  # [1797, 8, 8], [1797]"""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return (bunch.images / 16.0).astype(np.float32), bunch.target.astype(np.int64)


def split_indices(split: str) -> np.ndarray:
    """Indices into the source images for `split`: within each class, ranks 0, 5, 10, ... are test."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    _, labels = _digits()
    order = np.argsort(labels, kind="stable")  # grouped by class, source order within a class
    rank = np.empty_like(order)
    rank[order] = np.arange(labels.size) - np.searchsorted(labels[order], labels[order])  # rank within class
    is_test = rank % TEST_EVERY == 0
    return np.flatnonzero(is_test if split == "test" else ~is_test)


@functools.lru_cache(maxsize=4)
def _upsampled(size: int) -> torch.Tensor:
    """All source digits bilinearly upsampled to size x size, in [0, 1].  # [1797, 1, size, size]"""
    images, _ = _digits()
    up = F.interpolate(torch.from_numpy(images)[:, None], size=(size, size), mode="bilinear", align_corners=False)
    return up.clamp_(0.0, 1.0)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB: c_n = v - v s clip(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6, n = 5, 3, 1.  # [3, ...]"""
    k = (np.array([5.0, 3.0, 1.0]).reshape(3, *[1] * h.ndim) + 6.0 * h) % 6.0
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _smooth_noise(rng: np.random.Generator, side: int, sigma: float) -> np.ndarray:
    """Periodic white noise low-passed by a Gaussian of width `sigma` pixels, rescaled to [0, 1].  # [side, side]"""
    f = np.fft.fftfreq(side)
    gain = np.exp(-2.0 * (np.pi * sigma) ** 2 * (f[:, None] ** 2 + f[None, :] ** 2))
    noise = np.fft.ifft2(np.fft.fft2(rng.standard_normal((side, side))) * gain).real
    return (noise - noise.min()) / (noise.max() - noise.min())


@functools.lru_cache(maxsize=32)
def background(m: int, side: int = 64) -> np.ndarray:
    """Modality m's fixed texture: sinusoid mixture (brightness) and smooth noise (hue) around hue m * golden ratio.

    Seeded by m only, so modality m looks the same whatever the dataset seed or number of modalities.  # [3, side, side]
    """
    rng = np.random.default_rng([7919, m])
    yy, xx = np.mgrid[0:side, 0:side] / side  # [side, side] each
    theta = rng.uniform(0, np.pi, 3)
    freq = rng.integers(1, 6, 3)
    phase = rng.uniform(0, 2 * np.pi, 3)
    waves = np.sin(2 * np.pi * freq[:, None, None] * (np.cos(theta)[:, None, None] * xx
                                                       + np.sin(theta)[:, None, None] * yy) + phase[:, None, None])
    pattern = waves.sum(0)
    pattern = (pattern - pattern.min()) / (pattern.max() - pattern.min())  # [side, side] in [0, 1]
    noise = _smooth_noise(rng, side, sigma=rng.uniform(2.0, 5.0) * side / 64)
    hue = (0.05 + GOLDEN * m + 0.08 * (noise - 0.5)) % 1.0
    rgb = _hsv_to_rgb(hue, np.full_like(hue, 0.85), 0.6 + 0.4 * pattern)
    return rgb.astype(np.float32)


class PolyDigits(MultimodalDataset):
    """PolyMNIST-style tuples of M coloured 8x8-digit images sharing only their class.

    `.sources: LongTensor [N, M]` holds the index of each modality's source image in `load_digits()`.
    Default size: twice the split's source images for train (2866 tuples), once for test (364).
    """

    per_sample = ("labels", "sources")

    def __init__(self, split: str = "train", num_modalities: int = 5, seed: int = 0, size: int = 16,
                 n_tuples: int | None = None, drop_rate: float = 0.0):
        pool = split_indices(split)  # [P] source indices of this split
        _, all_labels = _digits()
        n = n_tuples if n_tuples is not None else pool.size * (2 if split == "train" else 1)
        rng = np.random.default_rng([seed, SPLITS.index(split)])
        # tuple labels: the split's labels cycled to length n and shuffled (exact class proportions for n = k P)
        labels = all_labels[pool][rng.permutation(np.arange(n) % pool.size)]  # [N]
        by_class = pool[np.argsort(all_labels[pool], kind="stable")]  # [P], grouped by class
        start = np.searchsorted(all_labels[by_class], np.arange(10))  # [10]
        count = np.bincount(all_labels[pool], minlength=10)  # [10]
        draws = rng.random((n, num_modalities))  # [N, M]: an independent source per modality
        sources = by_class[start[labels][:, None] + (draws * count[labels][:, None]).astype(np.int64)]  # [N, M]

        side = max(64, 2 * size)
        offsets = rng.integers(0, side - size + 1, size=(2, n, num_modalities))  # [2, N, M] crop corners (y, x)
        ar = np.arange(size)
        digits = _upsampled(size)  # [1797, 1, S, S]
        data = {}
        for m in range(num_modalities):
            rows = offsets[0, :, m, None] + ar  # [N, S]
            cols = offsets[1, :, m, None] + ar  # [N, S]
            bg = background(m, side)[:, rows[:, :, None], cols[:, None, :]]  # [3, N, S, S]
            bg = torch.from_numpy(np.ascontiguousarray(bg.transpose(1, 0, 2, 3)))  # [N, 3, S, S]
            d = digits[torch.from_numpy(sources[:, m])]  # [N, 1, S, S]
            data[f"m{m}"] = bg * (1 - d) + (1 - bg) * d  # [N, 3, S, S]

        super().__init__(data, targets=torch.from_numpy(labels), num_classes=10,
                         likelihoods=dict.fromkeys(data, "laplace"))
        self.sources = torch.from_numpy(sources)  # [N, M]
        self.split, self.seed, self.size = split, seed, size
        if drop_rate:
            dropped = self.drop(drop_rate, seed=seed)
            self.data, self.avail = dropped.data, dropped.avail
