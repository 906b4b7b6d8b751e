"""Process coordination for the trainer: torchrun setup, reductions and RNG states across ranks, and a graceful
stop on signals.

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

from .devices import resolve_device


@dataclass
class Ranks:
    """Where this process stands among the torchrun processes: its rank, their number (`world`), and whether
    `setup` opened the process group."""

    rank: int = 0
    world: int = 1
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and shows progress."""
        return self.rank == 0


def setup(device: str | torch.device) -> tuple[Ranks, torch.device]:
    """Join the torchrun process group when `WORLD_SIZE` > 1; this process's ranks and device."""
    device = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world <= 1:
        return Ranks(), device
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        owns = True
    return Ranks(rank=dist.get_rank(), world=dist.get_world_size(), owns_group=owns), device


def teardown(ranks: Ranks) -> None:
    """Leave the process group if `setup` opened it."""
    if ranks.owns_group and dist.is_initialized():
        dist.barrier()  # no rank tears the group down while another still talks to it (gloo aborts otherwise)
        dist.destroy_process_group()


def all_sum(values: list[float], ranks: Ranks, device: torch.device) -> list[float]:
    """Element-wise sums over ranks: out[i] = sum_r values_r[i] (float64)."""
    if ranks.world == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)  # [len(values)]
    dist.all_reduce(t)
    return t.tolist()


def any_rank(flags: list[bool], ranks: Ranks, device: torch.device) -> list[bool]:
    """For each flag: is it set on some rank? (One collective for all flags.)"""
    if ranks.world == 1:
        return list(flags)
    t = torch.tensor([float(f) for f in flags], device=device)  # [len(flags)]
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def gather_objects(obj, ranks: Ranks) -> list:
    """`obj` from every rank, in rank order (on every rank)."""
    if ranks.world == 1:
        return [obj]
    out = [None] * ranks.world
    dist.all_gather_object(out, obj)
    return out


def gather_rng_states(ranks: Ranks) -> dict:
    """Every rank's RNG states (a collective): {"torch": [state per rank], "cuda": [[state per device] per rank]}."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    states = gather_objects((torch.get_rng_state(), cuda), ranks)
    return {"torch": [s[0] for s in states], "cuda": [list(s[1]) for s in states]}


def restore_rng_states(rng: dict, ranks: Ranks) -> bool:
    """Set this rank's RNG states from `gather_rng_states`' dict; False (nothing set) when it holds another number
    of ranks. CUDA states are set only where the device count matches."""
    if len(rng.get("torch", [])) != ranks.world:
        return False
    torch.set_rng_state(rng["torch"][ranks.rank])
    cuda = rng.get("cuda", [[]] * ranks.world)[ranks.rank]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    return True


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
        """The signal handler: remember the signal's name; a second SIGINT raises KeyboardInterrupt."""
        name = signal.Signals(signum).name
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = name

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
