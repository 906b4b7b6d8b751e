"""Where tensors live: the one rule for "auto" devices and the one way to ask a module for its device."""
from __future__ import annotations

import math
import os
from pathlib import Path

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


_CHOSEN = {"threads": None}  # the thread count a caller set through `use_threads(n)`, which auto then keeps


def usable_cpus() -> int:
    """The CPUs this process may use: its affinity mask (`taskset`, a scheduler's allocation), further limited by a
    cgroup CPU quota (a container's `--cpus`), which torch's own count ignores; cpu_count where neither is known."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        n = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return n


def busy_cpus() -> float:
    """The machine's 1-minute load average (runnable processes, this one included), 0 where unknown."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def pick_threads(requested: int | None = None) -> tuple[int, str]:
    """torch's intra-op CPU threads and why: `requested` when given; else a count already chosen (OMP_NUM_THREADS,
    an earlier `use_threads(n)`); else torch's own count capped at the CPUs this process may use. Not by the load:
    CPU sums split by thread, so the count must not change a run's numbers from one minute to the next."""
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise ValueError(f"threads must be an integer >= 1, got {requested!r}")
        return requested, "requested"
    if _CHOSEN["threads"] is not None:
        return _CHOSEN["threads"], "requested"
    if os.environ.get("OMP_NUM_THREADS", "").strip():
        return torch.get_num_threads(), "OMP_NUM_THREADS"
    cpus = usable_cpus()
    if torch.get_num_threads() <= cpus:
        return torch.get_num_threads(), f"torch's default ({cpus} usable CPUs)"
    return cpus, f"the {cpus} CPUs this process may use (torch would take {torch.get_num_threads()})"


def use_threads(requested: int | None = None) -> tuple[int, str]:
    """Set torch's intra-op threads by `pick_threads` and return (count, why); a requested count sticks for the
    process (a later automatic pick keeps it)."""
    n, why = pick_threads(requested)
    if requested is not None:
        _CHOSEN["threads"] = n
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
    return n, why


def oversubscribed(threads: int) -> str | None:
    """A one-line warning when `threads` plus the other work running (the load average) exceed the usable CPUs:
    threads then wait on each other (a small training on 2 busy cores: 252 s with 2 threads, 7.6 s with 1)."""
    cpus, load = usable_cpus(), busy_cpus()
    if threads > 1 and load + threads > cpus + 0.5:
        return (f"{threads} torch threads on {cpus} CPUs with a load average of {load:.1f}: if other jobs share "
                f"these CPUs, --threads 1 (or OMP_NUM_THREADS=1) is likely much faster")
    return None
