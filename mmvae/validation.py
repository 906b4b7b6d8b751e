"""Checks at the boundary: every bad input raises `InputError` naming the modality, what was expected and got."""
from __future__ import annotations

import operator

import torch
from torch import Tensor

from .datasets.base import MISSING_TOKEN, absent_entries, missing_rows
from .errors import InputError


def _rows(t: Tensor) -> Tensor:
    """Per-sample reduction helper: flatten everything after the batch dim.  # [B, -1]"""
    return t.reshape(t.shape[0], -1)


def is_a(value, kind: type) -> bool:
    """isinstance, except that a bool is only a bool and an int is also a float."""
    if isinstance(value, bool):
        return kind is bool
    return isinstance(value, kind) or (kind is float and isinstance(value, int))


def check_count(value, what: str, minimum: int) -> int:
    """`value` as an int >= minimum (Python, numpy or 0-d torch integers), else InputError naming `what`."""
    try:
        n = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        n = None
    if n is None or n < minimum:
        raise InputError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return n


def check_targets(targets, observed, names: list[str]) -> list[str]:
    """The modalities to generate: `targets` (a name or a list), by default every modality not in `observed`."""
    if isinstance(targets, str):
        targets = [targets]
    targets = [n for n in names if n not in observed] if targets is None else list(targets)
    unknown = [t for t in targets if t not in names]
    if unknown:
        raise InputError(f"unknown target modality {unknown[0]!r} (known: {names})")
    return targets


def observed_rows(t: Tensor) -> Tensor:
    """The rule for missing data (`datasets.base.missing_rows`): a float row that is entirely NaN, or an integer
    row that is entirely -1, is missing; a row with only some NaN / -1 entries is observed, with gaps.  # [B]"""
    return ~missing_rows(t)


#: the entries of observed rows that are not observed: NaN (floats) or -1 (integers).  # [B, *shape] bool
gaps = absent_entries


def fill_gaps(t: Tensor, value=0) -> Tensor:
    """t with its gaps (`gaps`) set to `value`.  # [B, *shape]"""
    return torch.where(gaps(t), torch.as_tensor(value, dtype=t.dtype, device=t.device), t)


def check_inputs(modalities, names: list[str], x, avail=None) -> tuple[dict[str, Tensor], Tensor]:
    """Validate a batch and return (x with missing entries zeroed, avail [B, M] bool).

    With avail=None, a modality absent from x is missing for every sample, and a row that is entirely NaN (or -1
    for integers) marks that sample's modality as missing (`observed_rows`); with a mask, such a row is missing
    too. Values where avail is False are never read. NaN / -1 entries inside an observed row are gaps, kept as
    they are (the model masks them out of the likelihood); Inf is an error. Integer counts for a count likelihood
    are cast to float.
    """
    B = _check_tensors(modalities, names, x)
    device = next(iter(x.values())).device
    given = avail is not None
    avail = _check_mask(avail, B, names, device).clone() if given else \
        torch.zeros(B, len(names), dtype=torch.bool, device=device)
    for name, t in x.items():  # without a mask, what x holds is observed; with one, a missing row is missing too
        i = names.index(name)
        rows = observed_rows(t).to(device)
        avail[:, i] = avail[:, i] & rows if given else rows
    counts = torch.cat([avail.sum(0), (~avail.any(1)).sum()[None]]).tolist()  # one host sync: [M] + [#empty]
    if counts[-1]:
        empty = (~avail.any(1)).nonzero().flatten()
        raise InputError(f"sample(s) {empty[:10].tolist()} have no observed modality; each sample needs at least one")
    clean = _zero_missing(names, x, avail, counts)
    for i, name in enumerate(names):
        if name in clean and counts[i]:
            lik = modalities[name].likelihood
            if getattr(lik, "counts", False) and not (clean[name].is_floating_point() or clean[name].is_complex()
                                                      or clean[name].dtype == torch.bool):
                t = clean[name]  # integer spike counts: the count likelihoods work on floats, -1 is a gap
                clean[name] = torch.where(t == MISSING_TOKEN, float("nan"), t.float())
            t = fill_gaps(clean[name])
            lik.check(t if counts[i] == B else t[avail[:, i]], name)
    return clean, avail


def _check_tensors(modalities, names: list[str], x) -> int:
    """x is a non-empty dict of known modality -> [B, *shape] tensors with one batch size B; returns B."""
    if not isinstance(x, dict):
        raise InputError(f"inputs must be a dict of modality name -> tensor, got {type(x).__name__}")
    unknown = sorted(set(x) - set(names))
    if unknown:
        raise InputError(f"unknown modality {unknown[0]!r} (known: {names})")
    if not x:
        raise InputError(f"no modality given; expected some of {names}")
    sizes = {}
    for name, t in x.items():
        if not isinstance(t, Tensor):
            raise InputError(f"modality {name!r}: expected a torch.Tensor, got {type(t).__name__}")
        if t.dim() == 0:
            raise InputError(f"modality {name!r}: expected a batch [B, ...], got a scalar")
        sizes[name] = t.shape[0]
    if len(set(sizes.values())) > 1:
        raise InputError(f"batch sizes disagree across modalities: {sizes}")
    B = next(iter(sizes.values()))
    if B == 0:
        raise InputError("empty batch: every modality has 0 samples")
    for name, t in x.items():
        shape = modalities[name].shape
        if shape is not None and tuple(t.shape[1:]) != tuple(shape):
            raise InputError(f"modality {name!r}: expected per-sample shape {tuple(shape)}, got {tuple(t.shape[1:])}")
    return B


def _check_mask(avail, B: int, names: list[str], device) -> Tensor:
    """A user's availability mask as a [B, M] bool tensor on `device`."""
    try:
        avail = torch.as_tensor(avail, device=device)
    except (TypeError, ValueError, RuntimeError) as e:
        raise InputError(f"availability mask must be a [B, M] = [{B}, {len(names)}] bool tensor, got "
                         f"{type(avail).__name__} ({e})") from None
    if tuple(avail.shape) != (B, len(names)):
        raise InputError(f"availability mask must be [B, M] = [{B}, {len(names)}] "
                         f"(modalities {names}), got {list(avail.shape)}")
    if avail.dtype != torch.bool:
        odd = avail.flatten()[:0] if avail.is_complex() else avail[(avail != 0) & (avail != 1)]
        if avail.is_complex() or len(odd):
            raise InputError(f"availability mask must hold booleans or 0/1, got dtype {avail.dtype} with values "
                             f"like {odd[:5].tolist()}")
        avail = avail.bool()
    return avail


def _zero_missing(names: list[str], x: dict[str, Tensor], avail: Tensor, counts: list[int]) -> dict[str, Tensor]:
    """x with unobserved rows zeroed; InputError for Inf in observed entries (one host sync). NaN there is a gap."""
    B = avail.shape[0]
    clean, finite = {}, {}
    for i, name in enumerate(names):
        if name not in x:
            if counts[i]:
                raise InputError(f"modality {name!r} is marked observed in the availability mask but is missing "
                                 f"from the inputs")
            continue
        t, rows = x[name], avail[:, i]
        if counts[i] < B:  # missing entries are never read: zero them
            t = torch.where(rows.view(B, *[1] * (t.dim() - 1)), t, torch.zeros((), dtype=t.dtype, device=t.device))
        if torch.is_floating_point(t):
            finite[name] = ~t.isinf().any()
        clean[name] = t
    if finite:
        for name, ok in zip(finite, torch.stack(list(finite.values())).tolist()):  # one host sync
            if not ok:
                bad = _rows(clean[name]).isinf().any(1).nonzero().flatten()[:10].tolist()
                raise InputError(f"modality {name!r}: Inf in observed sample(s) {bad} (NaN marks an entry as not "
                                 f"observed; Inf is not allowed)")
    return clean
