"""The ready-made convnets' inference path (channels-last, sub-pixel last layer) against their layers run in order
(NCHW), in one run.

    python bench/convnets.py [--threads 1] [--rounds 5] [--json out.json]

For each image shape, `ConvDecoder` and `ConvEncoder` are timed both ways on the same parameters without
gradients, interleaved in rounds (fastest round kept), on 2000 rows (an evaluation chunk) and 200 rows. Prints the
time per row and the ratio inference path / NCHW (below 1 = faster). Training (with gradients) runs the plain
layers, so it has nothing to compare.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmvae.networks import ConvDecoder, ConvEncoder  # noqa: E402

CASES = (("decoder", 2000), ("decoder", 200), ("encoder", 2000), ("encoder", 200))


def _seconds(fn, reps: int) -> float:
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def _job(net, inp):
    def forward():
        with torch.no_grad():
            net(inp)
    return forward


def compare(shape, latent: int = 32, rounds: int = 5, reps: int = 3) -> list[dict]:
    """Per case: microseconds per row channels-last and NCHW, and their ratio."""
    torch.manual_seed(0)
    nets = {"decoder": ConvDecoder(latent, shape), "encoder": ConvEncoder(shape, 2 * latent)}
    rows = []
    for kind, B in CASES:
        net = nets[kind]
        inp = torch.randn(B, latent) if kind == "decoder" else torch.rand(B, *shape)
        jobs = {"channels_last": _job(net, inp), "nchw": _job(net.net, inp)}
        best = dict.fromkeys(jobs, float("inf"))
        for fn in jobs.values():
            fn()  # warm-up
        for _ in range(rounds):
            for name, fn in jobs.items():
                best[name] = min(best[name], _seconds(fn, reps))
        rows.append({"shape": list(shape), "network": kind, "rows": B,
                     "us_per_row": {k: 1e6 * v / B for k, v in best.items()},
                     "ratio": best["channels_last"] / best["nchw"]})
    return rows


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = []
    print(f"torch {torch.__version__}, {args.threads} thread(s)")
    print("| image | network | rows | us/row inference path | us/row NCHW | ratio |\n|---|---|---:|---:|---:|---:|")
    for shape in ((3, 16, 16), (3, 28, 28)):
        for r in compare(shape, rounds=args.rounds):
            out.append(r)
            u = r["us_per_row"]
            print(f"| {'x'.join(map(str, shape))} | {r['network']} | {r['rows']} | "
                  f"{u['channels_last']:.1f} | {u['nchw']:.1f} | {r['ratio']:.2f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"torch": torch.__version__, "threads": args.threads, "rows": out}, indent=1))
    return out


if __name__ == "__main__":
    main()
