"""Training-step time of every preset on PolyDigits, relative to `independent`.

    python bench/presets_step_time.py [--device cpu|cuda] [--batch-size 128] [--steps 10] [--rounds 3]
                                      [--modalities 5] [--json out.json]

A step is forward + backward + Adam update with the preset's defaults (`mmvae.models.build`). Presets are timed in
interleaved rounds and each keeps its fastest round, so a busy machine inflates the numbers less.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmvae.datasets import PolyDigits  # noqa: E402
from mmvae.models import PRESETS, build  # noqa: E402


def time_steps(model, batch, steps: int, device: torch.device) -> float:
    """Seconds per training step, averaged over `steps` steps after one warm-up step."""
    x, avail = batch
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        model(x, avail).loss.backward()
        opt.step()

    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / steps


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--modalities", type=int, default=5)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    data = PolyDigits("train", num_modalities=args.modalities, n_tuples=args.batch_size)
    x, avail, _ = next(data.batches(args.batch_size))
    batch = ({k: v.to(device) for k, v in x.items()}, avail.to(device))
    models = {name: build(name, data).to(device) for name in PRESETS}
    best = {name: float("inf") for name in PRESETS}
    for _ in range(args.rounds):
        for name, model in models.items():
            best[name] = min(best[name], time_steps(model, batch, args.steps, device))
    base = best["independent"]
    print(f"PolyDigits, {args.modalities} modalities, batch {args.batch_size}, device {device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| preset | ms / step | relative to independent |\n|---|---:|---:|")
    for name, t in best.items():
        print(f"| {name} | {1e3 * t:.1f} | {t / base:.2f} |")
    result = {"device": str(device), "batch_size": args.batch_size, "modalities": args.modalities,
              "ms_per_step": {k: 1e3 * v for k, v in best.items()}, "ratio": {k: v / base for k, v in best.items()}}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
