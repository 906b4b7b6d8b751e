"""Peak memory of one training step above the resting state (weights, Adam state, batch), in MiB.

On CUDA: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`. On the CPU: the peak RSS (`VmHWM`, reset
through `/proc/self/clear_refs`) minus the RSS before the step, with glibc made to serve blocks of 128 KiB and more
with mmap (returned to the OS on free) and freed memory trimmed before the step; Linux/glibc only, approximate.
Since this changes the allocator, `run.py` measures each model in a fresh subprocess:

    python bench/stepmem.py '{"preset": "mopoe", "M": 8, "batch": 256}'    # prints {"peak_mib": ...}
"""
from __future__ import annotations

import ctypes
import gc
import json
import re
import sys
from pathlib import Path

import torch


def _status_kb(field_name: str) -> int:
    return int(re.search(rf"{field_name}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


class CPUPeak:
    """Peak resident memory of a call above the RSS before it, from /proc; None where that is unavailable."""

    def __init__(self):
        self.libc = None
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD: fixed, no dynamic growth
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM
            self.libc = libc
        except (OSError, AttributeError):
            pass

    def measure(self, fn) -> float | None:
        """MiB above the resting RSS at the peak of fn()."""
        if self.libc is None:
            return None
        gc.collect()
        self.libc.malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
        base = _status_kb("VmRSS")
        fn()
        return (_status_kb("VmHWM") - base) / 1024.0


def step_peak_mib(step, device, cpu_peak: CPUPeak | None) -> float | None:
    """Peak memory of one call of `step` above the resting state, in MiB."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    return cpu_peak.measure(step) if cpu_peak is not None else None


def preset_peak(spec: dict) -> float | None:
    """The median peak of 3 steps (after 2 warm-up steps) of a preset in the MLP regime: spec keys preset, M,
    batch, dim (32), latent (16), device ("cpu")."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from presets_step_time import build_preset, mlp_modalities, synthetic_batch

    torch.set_num_threads(1)
    device = torch.device(spec.get("device", "cpu"))
    cpu_peak = CPUPeak() if device.type == "cpu" else None
    M, dim = spec["M"], spec.get("dim", 32)
    model = build_preset(spec["preset"], lambda priv: mlp_modalities(M, dim, spec.get("latent", 16), priv),
                         spec.get("latent", 16)).to(device)
    x, avail = synthetic_batch(M, spec["batch"], dim)
    x, avail = {k: v.to(device) for k, v in x.items()}, avail.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        model(x, avail).loss.backward()
        opt.step()

    for _ in range(2):
        step()
    peaks = sorted(step_peak_mib(step, device, cpu_peak) or 0.0 for _ in range(3))
    return peaks[1] if cpu_peak is not None or device.type == "cuda" else None


if __name__ == "__main__":
    print(json.dumps({"peak_mib": preset_peak(json.loads(sys.argv[1]))}))
