"""Training-step time of every preset relative to `independent`, on PolyDigits images or on synthetic vectors.

    python bench/presets_step_time.py [--device cpu|cuda] [--batch-size 128] [--steps 10] [--rounds 3]
                                      [--modalities 5] [--net conv|mlp] [--json out.json]

A step is forward + backward + Adam update with the preset's defaults (`mmvae.models`). Presets are timed in
interleaved rounds and each keeps its fastest round, so a busy machine inflates the numbers less.

A preset that decodes more rows than `independent` (the MoE-style stratified mixture decodes every modality from
every expert; DMVAE from the joint and every unimodal posterior; MVAE from the joint and the own one; K samples
multiply them) is also compared with `independent` decoding the same rows: each decoder's rows per step are counted
by forward hooks, and for a ratio r > 1 the baseline is `independent` trained with IWAE(K=r) (DReG(K=r) for a DReG
preset), which runs the same encoders once and each decoder on r x B rows.
`bench/run.py` calls `preset_times` from here.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmvae import Modality  # noqa: E402
from mmvae.models import PRESETS  # noqa: E402
from mmvae.models.presets import default_modalities  # noqa: E402
from mmvae.networks import MLPDecoder, MLPEncoder  # noqa: E402

PRIVATE = {"mmvaeplus": 8, "dmvae": 8}  # the presets' default private sizes (the rows-matched baseline gets them too)
ELBO_ROWS = ("independent", "mvae", "mopoe", "moe", "mmvm", "mmvm_paper", "dmvae", "avg")  # "moe": mmvae's ELBO
K_SAMPLE_ROWS = ("mmvae", "mmvaeplus")


def mlp_modalities(M: int, dim: int = 32, latent: int = 16, private: int = 0, seed: int = 0) -> dict:
    """M vector modalities [dim] with MLP 2 x 256 encoders/decoders and a Gaussian likelihood, seeded."""
    torch.manual_seed(seed)
    d = latent + private
    return {f"m{i}": Modality(MLPEncoder((dim,), 2 * d), MLPDecoder(d, (dim,)), "gaussian", shape=(dim,))
            for i in range(M)}


def synthetic_batch(M: int, B: int, dim: int = 32, seed: int = 1) -> tuple[dict[str, Tensor], Tensor]:
    """A batch of M correlated vector modalities [B, dim] (one shared 8-d factor), all observed."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, 8, generator=g)
    x = {f"m{i}": h @ torch.randn(8, dim, generator=g) / 8 ** 0.5 + 0.1 * torch.randn(B, dim, generator=g)
         for i in range(M)}
    return x, torch.ones(B, M, dtype=torch.bool)


def build_preset(name: str, modalities, latent: int = 16, **overrides):
    """A preset on the given modalities (factory(private) -> dict); "moe" is mmvae's aggregator with the ELBO."""
    priv = PRIVATE.get(name, 0)
    mods = modalities(priv)
    if name == "moe":
        return PRESETS["mmvae"](mods, shared_dim=latent, objective="elbo", **overrides)
    if priv:
        overrides = {"private_dim": priv, **overrides}
    return PRESETS[name](mods, shared_dim=latent, **overrides)


def decoder_rows(model, x, avail) -> int:
    """Rows through all decoders in one training forward pass (forward hooks)."""
    rows = [0]
    hook = lambda m, args, out: rows.__setitem__(0, rows[0] + args[0].shape[0])  # noqa: E731
    handles = [m.decoder.register_forward_hook(hook) for m in model.modalities.values()]
    try:
        model(x, avail)
    finally:
        for h in handles:
            h.remove()
    return rows[0]


def matched_baseline(model, rows: int, base_rows: int, modalities, latent: int = 16):
    """`independent` decoding the same rows as `model`: IWAE/DReG with K = rows / base_rows (None if r <= 1)."""
    r = rows / base_rows
    if r <= 1.0 + 1e-9:
        return None, 1.0
    estimator = "dreg" if model.objective.name == "dreg" else "iwae"
    priv = max(model.private_dims.values())
    over = {"private_dim": priv} if priv else {}
    return PRESETS["independent"](modalities(priv), shared_dim=latent, objective={"name": estimator, "K": round(r)},
                                  **over), r


def time_steps(model, batch, steps: int, device: torch.device, warm: bool = True) -> float:
    """Seconds per training step, averaged over `steps` steps (after one warm-up step when `warm`)."""
    x, avail = batch
    opt = model.__dict__.setdefault("_bench_opt", torch.optim.Adam(model.parameters(), lr=1e-3))

    def step():
        opt.zero_grad(set_to_none=True)
        model(x, avail).loss.backward()
        opt.step()

    if warm:
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / max(steps, 1)


def interleaved_best(models: dict, batch, rounds: int, steps: int, device) -> dict[str, float]:
    """Each model's fastest round (seconds per step), rounds interleaved across models, one warm-up step each."""
    for model in models.values():
        time_steps(model, batch, 0, device)
    best = dict.fromkeys(models, float("inf"))
    for _ in range(rounds):
        for name, model in models.items():
            best[name] = min(best[name], time_steps(model, batch, steps, device, warm=False))
    return best


def preset_times(names, modalities, batch, rounds: int, steps: int, device, latent: int = 16) -> dict:
    """Step times of the presets `names` and of `independent` decoding the same rows.

    modalities: factory(private_dim) -> fresh modalities. -> {name: {"ms", "rows", "r", "ms_matched",
    "vs_independent", "vs_matched"}}"""
    x, avail = batch
    models, info = {}, {}
    base = build_preset("independent", modalities, latent).to(device)
    base_rows = decoder_rows(base, x, avail)
    models["independent"] = base
    for name in names:
        if name == "independent":
            continue
        model = build_preset(name, modalities, latent).to(device)
        rows = decoder_rows(model, x, avail)
        matched, r = matched_baseline(model, rows, base_rows, modalities, latent)
        models[name] = model
        info[name] = {"rows": rows, "r": r}
        if matched is not None:
            models[f"{name}~matched"] = matched.to(device)
    best = interleaved_best(models, batch, rounds, steps, device)
    out = {"independent": {"ms": 1e3 * best["independent"], "rows": base_rows, "r": 1.0, "ms_matched": None,
                           "vs_independent": 1.0, "vs_matched": 1.0}}
    for name, d in info.items():
        t, tm = best[name], best.get(f"{name}~matched", best["independent"])
        out[name] = {**d, "ms": 1e3 * t, "ms_matched": 1e3 * tm if d["r"] > 1 else None,
                     "vs_independent": t / best["independent"], "vs_matched": t / tm}
    return out


def markdown_table(times: dict, title: str) -> str:
    """| preset | ms | rows/decoder x B | ms independent (same rows) | / independent | / same rows |"""
    lines = [title, "| preset | ms / step | decoded rows (x independent) | independent, same rows (ms) | "
             "/ independent | / independent, same rows |", "|---|---:|---:|---:|---:|---:|"]
    for name, d in times.items():
        m = f"{d['ms_matched']:.1f}" if d["ms_matched"] is not None else "="
        lines.append(f"| {name} | {d['ms']:.1f} | {d['r']:.0f} | {m} | {d['vs_independent']:.2f} | "
                     f"{d['vs_matched']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--modalities", type=int, default=5)
    p.add_argument("--net", choices=("conv", "mlp"), default="conv", help="PolyDigits convnets or 32-d MLP vectors")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    M, B = args.modalities, args.batch_size
    if args.net == "mlp":
        modalities = lambda priv: mlp_modalities(M, private=priv)  # noqa: E731
        x, avail = synthetic_batch(M, B)
        what = "synthetic 32-d, MLP 2x256"
    else:
        from mmvae.datasets import PolyDigits

        data = PolyDigits("train", num_modalities=M, n_tuples=B)
        modalities = lambda priv: default_modalities(data)  # noqa: E731
        x, avail, _ = next(data.batches(B))
        what = "PolyDigits"
    batch = ({k: v.to(device) for k, v in x.items()}, avail.to(device))
    times = preset_times([*ELBO_ROWS, *K_SAMPLE_ROWS], modalities, batch, args.rounds, args.steps, device)
    print(markdown_table(times, f"{what}, {M} modalities, batch {B}, device {device}, torch {torch.__version__}, "
                                f"{torch.get_num_threads()} threads"))
    result = {"device": str(device), "net": args.net, "batch_size": B, "modalities": M, "presets": times}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
