"""Process coordination for the trainer: torchrun setup, reductions across ranks, and a graceful stop on signals.

With `WORLD_SIZE` > 1 (as set by `torchrun --nproc_per_node N`), `setup` joins the process group (NCCL on CUDA,
Gloo on CPU) and picks the device `LOCAL_RANK`. With one process every helper here is a cheap no-op.
"""
from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    """Where this process stands: its rank, the number of processes, and whether `setup` opened the group."""

    rank: int = 0
    world: int = 1
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and shows progress."""
        return self.rank == 0


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" -> cuda when available, else cpu; with several processes, plain "cuda" -> cuda:LOCAL_RANK."""
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def setup(device: str | torch.device) -> tuple[Dist, torch.device]:
    """Join the torchrun process group when `WORLD_SIZE` > 1; the rank info and this process's device."""
    device = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world <= 1:
        return Dist(), device
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        owns = True
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), owns_group=owns), device


def teardown(d: Dist) -> None:
    """Leave the process group if `setup` opened it."""
    if d.owns_group and dist.is_initialized():
        dist.barrier()  # no rank tears the group down while another still talks to it (gloo aborts otherwise)
        dist.destroy_process_group()


def all_sum(values: list[float], d: Dist, device: torch.device) -> list[float]:
    """Element-wise sums over ranks (float64)."""
    if d.world == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def any_rank(flags: list[bool], d: Dist, device: torch.device) -> list[bool]:
    """For each flag: is it set on some rank? (One collective for all flags.)"""
    if d.world == 1:
        return list(flags)
    t = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def gather_objects(obj, d: Dist) -> list:
    """`obj` from every rank, in rank order (on every rank)."""
    if d.world == 1:
        return [obj]
    out = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


class StopRequest:
    """While active (a context manager), SIGINT and SIGTERM only set `requested`; the trainer stops at the end of
    the current step. A second SIGINT raises KeyboardInterrupt at once. Previous handlers return on exit.

    Outside the main thread signals cannot be caught; then the handlers are simply not installed.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested: str | None = None
        self._previous: dict = {}

    def __call__(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = name

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
