"""Issue 15, part 7: the effect of torch's intra-op threads on a small training when other processes load the CPUs.

    python bench/threads.py [--hogs N] [--epochs E]

Starts N busy processes (default: the usable CPUs, so the machine is fully loaded), then trains the same small
MoPoE on PolyDigits (600 tuples, E epochs, batch 128) once with 1 thread and once with torch's default count (the
usable CPUs), in fresh processes, interleaved, and prints their times and the ratio. Both runs give the same loss
(the CPU sums differ only in order). `mmvae` picks its count with `devices.pick_threads` (`--threads N` wins).
"""
import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import sys, time, torch
sys.path.insert(0, {root!r})
torch.set_num_threads({threads})
from mmvae import Trainer
from mmvae.datasets import PolyDigits
from mmvae.models import build
train = PolyDigits("train", n_tuples=600)
torch.manual_seed(0)
model = build("mopoe", train)
start = time.time()
Trainer(model, max_epochs={epochs}, batch_size=128, progress=False, device="cpu", threads={threads}).fit(train)
print(time.time() - start)
"""


def spin(stop) -> None:
    """Burn one CPU until `stop` is set."""
    x = 0
    while not stop.is_set():
        x += 1


def timed(threads: int, epochs: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT), threads=threads, epochs=epochs)],
                         env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from mmvae.devices import usable_cpus

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hogs", type=int, default=None)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    cpus = usable_cpus()
    hogs = cpus if args.hogs is None else args.hogs
    load = os.getloadavg()[0]  # other work already running
    stop = mp.Event()
    procs = [mp.Process(target=spin, args=(stop,), daemon=True) for _ in range(hogs)]
    for q in procs:
        q.start()
    try:
        times = {1: [], cpus: []}
        for _ in range(args.rounds):
            for t in times:
                times[t].append(timed(t, args.epochs))
    finally:
        stop.set()
    best = {t: min(v) for t, v in times.items()}
    row = {"usable_cpus": cpus, "busy_processes": hogs, "load_before": load, "epochs": args.epochs, "seconds": times,
           "ratio_default_over_one": best[cpus] / best[1]}
    print(json.dumps(row))
    print(f"under load ({hogs} busy processes started here, load average {load:.1f} before, {cpus} CPUs): "
          f"1 thread {best[1]:.1f} s, {cpus} threads {best[cpus]:.1f} s: {best[cpus] / best[1]:.1f}x")


if __name__ == "__main__":
    main()
