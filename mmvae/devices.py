"""Where tensors live: the one rule for "auto" devices and the one way to ask a module for its device."""
from __future__ import annotations

import os

import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> cuda when available, else cpu; a plain "cuda" -> cuda:LOCAL_RANK (0 outside torchrun)."""
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def module_device(module) -> torch.device:
    """The device of a module's first parameter or buffer; CPU for objects that hold none (stubs, callables)."""
    for get in ("parameters", "buffers"):
        tensors = getattr(module, get, None)
        if tensors is not None:
            first = next(iter(tensors()), None)
            if first is not None:
                return first.device
    return torch.device("cpu")
